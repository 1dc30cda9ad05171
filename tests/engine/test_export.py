from pathlib import Path

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


def test_escnet_export_failure_says_why_and_what_can(tmp_path, monkeypatch):
    """If the exporter fails on an ESC-Net (e.g. PPG options with data-dependent shapes), the error says why."""
    def fails(*args, **kwargs):
        raise RuntimeError("No ONNX function found for <OpOverload(op='aten.sort', overload='stable')>\nmore")

    monkeypatch.setattr(torch.onnx, "export", fails)
    model = create_model("escnet", "tiny")
    with pytest.raises(ExportError, match="aten.sort.*pseudo prompt generator.*Closest exportable form") as info:
        export_onnx(model, torch.randn(3, model.cfg.clip.embed_dim), tmp_path / "escnet.onnx")
    assert "\n" not in str(info.value) and not (tmp_path / "escnet.onnx").exists()
    assert "pseudo prompt generator" in ESCNET_LIMITATION
    catseg = create_model("catseg", "tiny")
    with pytest.raises(ExportError) as info:
        export_onnx(catseg, torch.randn(3, catseg.cfg.clip.embed_dim), tmp_path / "catseg.onnx")
    assert "pseudo prompt" not in str(info.value)


def _ort_against_pytorch(path, model, text, views=3, seed=0, images=None):
    """(max |ORT - PyTorch| of the probabilities, whether the per-pixel labels are equal), on `images`
    (N, 3, c, c) float 0..255, or else on `views` random ones."""
    import onnxruntime

    crop = model.cfg.crop_size
    if images is None:
        images = torch.rand(views, 3, crop, crop, generator=torch.Generator().manual_seed(seed)) * 255
    with torch.no_grad():
        reference = model.eval()(images, text.float()).sigmoid()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    output = torch.from_numpy(session.run(["probs"], {"images": images.numpy()})[0])
    return float((output - reference).abs().max()), bool(torch.equal(output.argmax(1), reference.argmax(1)))


@pytest.mark.parametrize("arch", [
    "catseg",
    "escnet",
])
def test_tiny_models_export_and_match_onnx_runtime(arch, catseg, exported, tmp_path):
    """Tiny ESC-Net and CAT-Seg: ONNX Runtime's probabilities within 1e-4 of PyTorch's, labels equal,
    for a batch of another size than the export's example."""
    if arch == "catseg":
        model, text = catseg
        path = exported[False]
    else:
        torch.manual_seed(0)
        model = create_model("escnet", "tiny").eval()
        text = torch.nn.functional.normalize(torch.randn(5, model.cfg.clip.embed_dim), dim=-1)
        path = export_onnx(model, text, tmp_path / "escnet.onnx")
    for views, seed in ((1, 2), (3, 3)):
        error, labels_equal = _ort_against_pytorch(path, model, text, views=views, seed=seed)
        assert error < 1e-4 and labels_equal


def test_export_command_prints_only_its_result(tmp_path):
    """`escnet export` as a user runs it (a fresh process, Python's default warning filters): eval
    mode, and the exporter's notes a user cannot act on filtered, so it prints its one result line."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from escnet import lifecycle

    torch.manual_seed(0)
    model_dir = lifecycle.save_pretrained(create_model("catseg", "tiny"), tmp_path / "catseg")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONWARNINGS", None)
    proc = subprocess.run([sys.executable, "-m", "escnet", "export", "--model", str(model_dir), "--classes",
                           "cat; dog; sky", "--out", str(tmp_path / "c.onnx"), "--threads", "1"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"wrote {tmp_path / 'c.onnx'} (3 classes"), lines


def test_bundled_escnet_exports_and_onnx_runtime_gives_its_labels(tmp_path):
    """The bundled (trained) ESC-Net: exported with its example vocabulary, ONNX Runtime's
    probabilities are within 1e-4 of PyTorch's and the per-pixel labels are equal, on the bundled
    example scene (a real input, resized to the crop) and on random views."""
    import numpy as np
    from PIL import Image

    import escnet
    from escnet.data.vocab import parse_vocabulary
    from escnet.inference.segmenter import Segmenter

    examples = Path(escnet.__file__).parent / "assets" / "examples"
    segmenter = Segmenter.from_pretrained(device="cpu", protocol="single")
    model = segmenter.model.eval()
    assert model.cfg.arch == "escnet"
    text = segmenter.text_features(parse_vocabulary(str(examples / "synthetic_scene.txt")))
    path = export_onnx(model, text, tmp_path / "bundled.onnx")
    crop = model.cfg.crop_size
    with Image.open(examples / "synthetic_scene.png") as image:
        scene = torch.from_numpy(np.asarray(image.convert("RGB").resize((crop, crop), Image.BILINEAR)).copy())
    views = torch.cat([scene.permute(2, 0, 1)[None].float(),
                       torch.rand(2, 3, crop, crop, generator=torch.Generator().manual_seed(1)) * 255])
    error, labels_equal = _ort_against_pytorch(path, model, text, images=views)
    assert error < 1e-4 and labels_equal
    with torch.no_grad():  # the scene is segmented into several classes
        assert len(torch.unique(model(views[:1], text.float()).argmax(1))) > 3
