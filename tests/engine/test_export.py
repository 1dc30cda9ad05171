import pytest
import torch

from escnet.inference.export import ESCNET_LIMITATION, ExportError, check_onnx, export_onnx
from escnet.models.factory import create_model

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")


@pytest.fixture(scope="module")
def catseg():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = create_model("catseg", "tiny").eval()
    text = torch.nn.functional.normalize(torch.randn(5, model.cfg.clip.embed_dim), dim=-1)
    return model, text


@pytest.fixture(scope="module")
def exported(catseg, tmp_path_factory):
    """Both forms exported once (each export takes tens of seconds)."""
    model, text = catseg
    folder = tmp_path_factory.mktemp("onnx")
    return {text_input: export_onnx(model, text, folder / f"catseg_{text_input}.onnx", text_input=text_input)
            for text_input in (False, True)}


@pytest.mark.parametrize("text_input", [False, True])
def test_catseg_onnx_matches_pytorch(catseg, exported, text_input):
    model, text = catseg
    for views, seed in ((1, 0), (5, 1)):  # the batch axis is dynamic: one view, a sliding window's five
        assert check_onnx(exported[text_input], model, text, text_input=text_input, views=views, seed=seed) < 1e-4


def test_text_input_takes_other_features_of_the_same_size(catseg, exported):
    import onnxruntime

    model, text = catseg
    other = torch.nn.functional.normalize(torch.randn_like(text), dim=-1)
    images = torch.rand(2, 3, model.cfg.crop_size, model.cfg.crop_size) * 255
    session = onnxruntime.InferenceSession(str(exported[True]), providers=["CPUExecutionProvider"])
    out = session.run(["probs"], {"images": images.numpy(), "text": other.numpy()})[0]
    with torch.no_grad():
        reference = model(images, other).sigmoid()
    assert abs(out - reference.numpy()).max() < 1e-4
    assert check_onnx(exported[False], model, other) > 1e-3  # the baked-in form really holds the first vocabulary


def test_escnet_export_says_why_not_and_what_can(tmp_path):
    model = create_model("escnet", "tiny")
    with pytest.raises(ExportError, match="pseudo prompt generator.*Closest exportable form"):
        export_onnx(model, torch.randn(3, model.cfg.clip.embed_dim), tmp_path / "escnet.onnx")
    assert "aten.sort.stable" in ESCNET_LIMITATION and not (tmp_path / "escnet.onnx").exists()


def test_cli_export_prints_only_its_result(tmp_path):
    """Issue 24 item 13: `escnet export` printed ~15 lines of exporter warnings, "training mode" among them."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from escnet.lifecycle import save_pretrained

    torch.manual_seed(0)
    save_pretrained(create_model("catseg", "tiny"), tmp_path / "model")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "escnet", "export", "--model", str(tmp_path / "model"),
                           "--classes", "cat, dog", "--out", str(tmp_path / "m.onnx")],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"wrote {tmp_path / 'm.onnx'}"), lines
