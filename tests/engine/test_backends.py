"""The Segmenter's backends (escnet.inference.backends): torch.compile gives eager fp32's labels on
the bundled model, from Python and from `escnet segment --backend compile`."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import escnet
from escnet.cli import main
from escnet.inference.backends import CACHE_ENV, compile_cache_dir
from escnet.inference.segmenter import Segmenter

EXAMPLES = Path(escnet.__file__).parent / "assets" / "examples"
SCENE, CLASSES = EXAMPLES / "synthetic_scene.png", str(EXAMPLES / "synthetic_scene.txt")


def test_unknown_backend_is_one_clear_error():
    with pytest.raises(ValueError, match="unknown backend 'onnx'; choose one of eager, compile"):
        Segmenter.from_pretrained(device="cpu", backend="onnx")


def test_compile_cache_defaults_to_escnets_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("ESCNET_CACHE", str(tmp_path / "escnet-cache"))
    monkeypatch.setenv(CACHE_ENV, "placeholder")  # restored after the test
    monkeypatch.delenv(CACHE_ENV)
    assert compile_cache_dir() == tmp_path / "escnet-cache" / "inductor"
    assert (tmp_path / "escnet-cache" / "inductor").is_dir()
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert compile_cache_dir() == tmp_path / "mine"  # the user's setting wins


def test_compiled_labels_equal_eager_fp32_on_the_bundled_model(monkeypatch, tmp_path, capsys, restore_threads):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "inductor"))
    torch.set_num_threads(1)
    eager = Segmenter.from_pretrained(device="cpu", protocol="single").segment(SCENE, CLASSES)
    assert eager.info["backend"] == "eager" and len(np.unique(eager.labels)) > 3

    compiled = Segmenter.from_pretrained(device="cpu", protocol="single", backend="compile")
    assert "first_call_s" not in compiled.backend_info
    result = compiled.segment(SCENE, CLASSES)
    np.testing.assert_array_equal(result.labels, eager.labels)
    np.testing.assert_allclose(result.scores, eager.scores, atol=1e-4)
    info = compiled.backend_info
    assert info["backend"] == "compile" and info["first_call_s"] > 0 and info["cache_dir"] == str(tmp_path / "inductor")
    assert any((tmp_path / "inductor").iterdir())  # inductor wrote its cache there

    out = tmp_path / "out"
    assert main(["segment", str(SCENE), "--classes", CLASSES, "--out", str(out), "--protocol", "single",
                 "--device", "cpu", "--threads", "1", "--backend", "compile"]) == 0
    assert "compile: first model call" in capsys.readouterr().err
    with Image.open(out / "synthetic_scene_labels.png") as labels:
        np.testing.assert_array_equal(np.asarray(labels), eager.labels)
    assert json.loads((out / "synthetic_scene.json").read_text())["info"]["backend"] == "compile"
