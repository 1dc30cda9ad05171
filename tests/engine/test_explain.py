"""`escnet explain` and escnet.inference.explain: Fig. 3 (pseudo prompts per class and ESC block) and
Fig. 6 (per-block class maps) of the bundled model on its bundled example, CAT-Seg's Fig. 6, bad input."""
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from escnet.cli import main
from escnet.inference import explain as ex_mod

EXAMPLES = Path(__file__).resolve().parents[2] / "escnet" / "assets" / "examples"
IMAGE, VOCAB = EXAMPLES / "synthetic_scene.png", EXAMPLES / "synthetic_scene.txt"


@pytest.fixture(scope="module")
def bundled():
    from escnet.inference.segmenter import Segmenter

    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Segmenter.from_pretrained(None, device="cpu", text_cache=False)


def _grid_size(rows: int, cols: int, side: int) -> tuple[int, int]:
    """(width, height) of a figure of rows x cols panels of `side` pixels (explain._grid's layout)."""
    pad, title = ex_mod._PAD, ex_mod._TITLE
    return pad + cols * (side + pad), title + pad + rows * (2 * title + side + pad) + pad


def test_explain_command_writes_fig3_per_class_fig6_and_the_statistics(tmp_path, capsys):
    out = tmp_path / "explain"
    assert main(["explain", str(IMAGE), "--classes", str(VOCAB), "--out", str(out), "--device", "cpu",
                 "--draw", "light yellow, dark blue"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["explain.json", "fig3_05_light_yellow.png", "fig3_08_dark_blue.png",
                                                      "fig6.png"]
    assert "wrote 3 figure(s) and explain.json for 2 class(es)" in capsys.readouterr().err
    stats = json.loads((out / "explain.json").read_text())
    blocks, grid = stats["ppg"], stats["grid"]
    assert len(blocks) == 2 and grid == [12, 12] and stats["drawn"] == ["light yellow", "dark blue"]
    side = 12 * 12  # 12 cells of 12 pixels
    with Image.open(out / "fig3_05_light_yellow.png") as fig3, Image.open(out / "fig6.png") as fig6:
        assert fig3.size == _grid_size(rows=2, cols=7, side=side)  # one row per ESC block: view + (a)-(f)
        assert fig6.size == _grid_size(rows=2, cols=1 + 4, side=side)  # view, C0, block 1, block 2, prediction
    for block in blocks:
        per_class = block["per_class"]
        assert len(per_class) == 13 and block["maps"] == 13
        assert block["foreground_pixels"] == pytest.approx(np.mean([c["foreground_pixels"] for c in per_class]))
        assert block["valid_regions"] == pytest.approx(np.mean([c["valid_regions"] for c in per_class]))
        for c in per_class:
            assert len(c["points_view_px"]) == len(c["region_pixels"]) == c["valid_regions"] <= 3
            assert sum(c["region_pixels"]) <= c["foreground_pixels"]
            assert all(0 <= v < stats["view_size"] for xy in c["points_view_px"] for v in xy)


def test_explain_arrays_are_the_models_records_and_the_panels_draw_them(bundled):
    ex = ex_mod.explain(bundled, IMAGE, VOCAB, draw=["light yellow"])
    assert ex.stages == ["C0 correlation", "after ESC block 1", "after ESC block 2", "prediction"]
    assert [a.shape for a in ex.activations] == [(13, 12, 12)] * 3 + [(13, 48, 48)]
    # block 1 reads C0; the bundled model's block 2 reads the stem-inverse readout of block 1's embedding
    assert bundled.model.cfg.ppg_source == "stem_inverse"
    np.testing.assert_allclose(ex.activations[0], ex.ppg[0]["source"], atol=1e-6)
    np.testing.assert_allclose(ex.activations[1], ex.ppg[1]["source"], atol=1e-5)
    # the prediction is the Segmenter's single-view probabilities for the same view
    assert ex.activations[-1].min() >= 0 and ex.activations[-1].max() <= 1
    t = ex.classes.index("light yellow")
    fig = np.asarray(ex.figures[f"fig3_{t:02d}_light_yellow"].convert("L"))
    side, pad, title = 144, ex_mod._PAD, ex_mod._TITLE
    for b, rec in enumerate(ex.ppg):  # panel (c): white cells where the binary mask is
        y, x = title + pad + b * (2 * title + side + pad) + 2 * title, pad + 3 * (side + pad)
        panel = fig[y:y + side, x:x + side]
        cells = panel[6::12, 6::12] > 128  # cell centres
        np.testing.assert_array_equal(cells, rec["foreground"][t])
        assert rec["foreground"][t].any()
    # the default draws the classes the prediction shows, largest first
    shown = ex_mod.explain(bundled, IMAGE, VOCAB, figures=False)
    share = shown.statistics["predicted_share"]
    assert [shown.classes[i] for i in shown.drawn] == sorted((n for n in share if share[n] > 0), key=lambda n: -share[n])
    assert not shown.figures


def test_catseg_gets_fig6_per_aggregator_layer_and_a_note(tmp_path):
    from escnet.inference.segmenter import Segmenter
    from escnet.models import factory

    torch.manual_seed(0)
    model = factory.create_model("catseg", "tiny")
    ex = ex_mod.explain(Segmenter(model, device="cpu", text_cache=False), IMAGE, "red, blue, grey", draw=["red", "blue"])
    layers = len(model.transformer.layers)
    assert ex.stages == ["C0 correlation"] + [f"after aggregator layer {i + 1}" for i in range(layers)] + ["prediction"]
    assert list(ex.figures) == ["fig6"] and ex.ppg == [] and ex.statistics["ppg"] == []
    assert ex.notes == ["Fig. 3 not drawn: this CAT-Seg model has no pseudo prompts; "
                        "Fig. 6 shows the map after each aggregator layer"]
    g = ex.activations[0].shape[-1]
    side = g * -(-144 // g)
    assert ex.figures["fig6"].size == _grid_size(rows=2, cols=1 + len(ex.stages), side=side)
    # the readout of a layer's output on the stem's direction: for the stem's own output it gives
    # back the correlation at the centre tap's share (exactly C0 where the kernel is a centre tap)
    conv = model.transformer.conv1
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, 0, conv.kernel_size[0] // 2, conv.kernel_size[1] // 2] = torch.randn(conv.out_channels)
        c0 = torch.randn(1, 3, 5, 5)
        e = conv(c0.reshape(3, 1, 5, 5)).reshape(1, 3, -1, 5, 5)  # (B, T, C, h, w)
    torch.testing.assert_close(ex_mod.stem_readout(e, conv, 2), c0)


@pytest.mark.parametrize("argv, message", [
    (["/nonexistent.png", "--classes", "a, b"], "/nonexistent.png: no such image file"),
    ([str(IMAGE), "--classes", ",,"], "empty vocabulary"),
    ([str(IMAGE), "--classes", "a, b", "--draw", "c"], "--draw: 'c' not in the vocabulary"),
])
def test_bad_input_is_one_line(argv, message, tmp_path, capsys):
    assert main(["explain", *argv, "--out", str(tmp_path / "o"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("escnet: error: ") and message in err[-1] and len(err) == 1, err
    assert not (tmp_path / "o").exists()


def test_a_file_that_is_no_image_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a picture")
    assert main(["explain", str(bad), "--classes", "a, b", "--out", str(tmp_path / "o"), "--device", "cpu"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"escnet: error: {bad}: not an image file (format not recognised)"
