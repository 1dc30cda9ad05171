"""PPG statistics per ESC block in `escnet evaluate` and training's evaluation (issue 25 item 6):
the meter's numbers against PPG's own records of the same views, chunked == unchunked, CAT-Seg none."""
import json
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from escnet.cli import main
from escnet.inference.ppg_metrics import STAT_KEYS, view_windows, window_truth


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from escnet.evaluation.evaluate import load_dataset
    from escnet.data.synthetic import prepare_synthetic

    root = tmp_path_factory.mktemp("datasets")
    prepare_synthetic(root, workers=1, num_train=1, num_val=3, size=96)
    return root, load_dataset("synthetic", str(root), "val")[0]


def _bundled(**options):
    from escnet.inference.segmenter import Segmenter

    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Segmenter.from_pretrained(None, device="cpu", text_cache=False, **options)


def test_window_truth_marks_the_cells_a_class_covers_for_more_than_half():
    labels = np.zeros((8, 8), np.int64)
    labels[:4, :4] = 1
    labels[6:, 6:] = 255  # ignored: no class
    t = window_truth(labels, 3, (0, 1, 0, 1), (2, 2), 255)
    np.testing.assert_array_equal(t[1], [[True, False], [False, False]])
    np.testing.assert_array_equal(t[0], [[False, True], [True, True]])  # 12 of 16 pixels: more than half
    # the top-left quarter seen by a whole view: every cell is class 1
    assert window_truth(labels, 3, (0, 0.5, 0, 0.5), (2, 2), 255)[1].all()
    # a window past the image (the single view's padding) holds no class there
    padded = window_truth(labels, 3, (0, 2, 0, 2), (2, 2), 255)
    assert not padded[:, 1, :].any() and not padded[:, :, 1].any() and not padded[1].any()
    assert len(view_windows("sliding", 96, 96, 96)) == 5 and view_windows("sliding", 96, 96, 96)[-1] == (0, 1, 0, 1)


def _reference(segmenter, dataset) -> list[dict]:
    """The same statistics from ESCNet.forward(return_ppg=True) on each image's single view, by
    escnet.models.ppg_stats.ppg_statistics (truth: window_truth of the view's window, as object ids)."""
    from escnet.inference.protocol import mapper_resize, single_views
    from escnet.models.ppg import PseudoPrompts
    from escnet.models.ppg_stats import ppg_statistics

    model, classes = segmenter.model, dataset.prompt_classes
    text = segmenter.text_features(classes)
    records, truths = [[] for _ in model.sam], []
    with torch.no_grad():
        for i in range(len(dataset)):
            rgb, gt = dataset[i]
            view, _ = single_views(model, mapper_resize(rgb, model.cfg.crop_size))
            _, recs = model(view, text, upsample=False, return_ppg=True)
            for b, r in enumerate(recs):
                records[b].append(r)
            (window,) = view_windows("single", *gt.shape, model.cfg.crop_size)
            truths.append(torch.from_numpy(window_truth(gt, len(classes), window, recs[0].foreground.shape[-2:],
                                                         dataset.ignore_label)).long()[None])
    truth = torch.cat(truths)
    return [ppg_statistics(PseudoPrompts.cat(r, 0), truth) for r in records]


def test_evaluate_reports_ppg_statistics_per_block_equal_to_the_records(synthetic):
    from escnet.evaluation.evaluate import evaluate

    _, dataset = synthetic
    segmenter = _bundled(protocol="single")
    res = evaluate(segmenter, dataset, None, progress=False)
    blocks, ref = res["ppg"], _reference(segmenter, dataset)
    assert [b["block"] for b in blocks] == [1, 2]
    t = len(dataset.prompt_classes)
    for b, r in zip(blocks, ref):
        assert b["maps"] == b["maps_with_truth"] == 3 * t
        assert b["maps_present"] == r["maps_present"] > 0
        for key, ref_key in (("foreground_pixels", "foreground_pixels"), ("valid_regions", "valid_regions"),
                             ("pixels_per_region", "pixels_per_region"), ("iou", "iou"), ("points_inside", "points_inside")):
            assert b[key] == pytest.approx(r[ref_key], abs=1e-4), key
    # the bundled model runs the old rule (docs/ppg.md): a few cells per map, fewer in block 2
    assert 1 <= blocks[0]["foreground_pixels"] < 6 and blocks[1]["foreground_pixels"] < blocks[0]["foreground_pixels"]
    # class chunks (a tiny memory budget) give the same numbers: the records are put back in class order
    from escnet.inference.segmenter import class_chunk_for_budget

    assert class_chunk_for_budget(t, segmenter.model.cfg.crop_size, 1, 0.05) == 1  # one class per pass
    chunked = _bundled(protocol="single", memory_budget_mb=0.05)
    assert evaluate(chunked, dataset, None, progress=False)["ppg"] == blocks
    # the hooks are gone afterwards: a forward outside an evaluation records nothing
    assert all(not blk.ppg._forward_hooks for blk in segmenter.model.sam)


def test_sliding_protocol_counts_five_views_and_catseg_has_no_ppg(synthetic):
    from escnet.evaluation.evaluate import evaluate
    from escnet.inference.segmenter import Segmenter
    from escnet.models import factory

    _, dataset = synthetic
    blocks = evaluate(_bundled(protocol="sliding"), dataset, None, progress=False, limit=1)["ppg"]
    t = len(dataset.prompt_classes)
    for b in blocks:
        assert b["maps"] == b["maps_with_truth"] == 5 * t and 0 <= b["iou"] <= 1 and 0 <= b["points_inside"] <= 1
    torch.manual_seed(0)
    cat = Segmenter(factory.create_model("catseg", "tiny"), device="cpu", protocol="single", text_cache=False)
    assert "ppg" not in evaluate(cat, dataset, None, progress=False, limit=1)


def test_evaluate_cli_prints_and_writes_the_ppg_section(synthetic, tmp_path, capsys):
    root, _ = synthetic
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["evaluate", "--model", "default", "--dataset", "synthetic", "--root", str(root), "--protocol",
                     "single", "--device", "cpu", "--output", str(tmp_path / "eval"), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    res = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert [b["block"] for b in res["ppg"]] == [1, 2]
    for b in res["ppg"]:
        line = next(ln for ln in out.splitlines() if ln.startswith(f"PPG block {b['block']}: "))
        assert f"{b['foreground_pixels']:.1f} foreground px/map" in line and f"IoU {b['iou']:.3f}" in line


def test_training_evaluation_records_ppg_keys(synthetic):
    from escnet.training.loop import evaluate_model

    _, dataset = synthetic
    segmenter = _bundled()
    split = SimpleNamespace(dataset=dataset, groups=None)
    cfg = SimpleNamespace(eval_protocol="single", eval_limit=2)
    metrics = evaluate_model(segmenter.model, split, cfg, torch.device("cpu"))
    keys = {f"ppg_block{b}_{k}" for b in (1, 2) for k in STAT_KEYS}
    assert keys <= set(metrics) and all(isinstance(metrics[k], float) for k in keys)
    assert segmenter.model.training  # evaluate_model hands the model back in training mode
