"""The bundled default model (the tiny ESC-Net trained on the synthetic benchmark) does what the
README says: on the bundled example scene it finds the seen-class objects and the background."""
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from escnet import Segmenter
from escnet.cli import main
from escnet.data.synthetic import scene, vocabulary
from escnet.inference.segmenter import model_notice, resolve_model_path

EXAMPLE_INDEX = 4  # escnet/assets/examples/synthetic_scene.png = scene("example", 4)


@pytest.fixture(scope="module")
def example():
    from importlib import resources

    folder = resources.files("escnet") / "assets" / "examples"
    image, labels = scene("example", EXAMPLE_INDEX)
    shipped = np.asarray(Image.open(str(folder / "synthetic_scene.png")).convert("RGB"))
    assert np.array_equal(shipped, image), "the bundled example is no longer scene('example', 4)"
    assert [n for n in (folder / "synthetic_scene.txt").read_text().splitlines() if n] == list(vocabulary().all)
    return str(folder / "synthetic_scene.png"), labels


def test_default_is_the_trained_synthetic_model_and_says_so():
    path = resolve_model_path(None)
    assert path.name == "escnet-synthetic-tiny"
    seg = Segmenter.from_pretrained()
    assert seg.model.cfg.arch == "escnet"
    assert "knows nothing about real photos" in seg.description
    assert model_notice(seg).startswith("note: model escnet-synthetic-tiny: demonstration model")
    image = np.zeros((8, 8, 3), np.uint8)
    assert seg.segment(image, "sky", protocol="single").info["model_description"] == seg.description


@pytest.mark.parametrize("protocol", ["single", "sliding"])
def test_default_segments_the_seen_objects_of_the_example(example, protocol):
    torch.set_num_threads(1)
    image, gt = example
    names = list(vocabulary().all)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = Segmenter.from_pretrained(protocol=protocol)
    labels = seg.segment(image, names).labels
    seen = set(range(len(vocabulary().seen)))
    present = [k for k in np.unique(gt) if k in seen]
    assert 0 in present and len(present) >= 3  # background and at least two seen objects
    for k in present:
        recall = (labels[gt == k] == k).mean()
        assert recall > 0.9, (names[k], recall)
        precision = (gt[labels == k] == k).mean()
        assert precision > 0.8, (names[k], precision)


def test_readme_main_command_runs_offline(example, tmp_path):
    image, _ = example
    classes = image.replace(".png", ".txt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["segment", image, "--classes", classes, "--out", str(tmp_path), "--device", "cpu"]) == 0
    result = json.loads((tmp_path / "synthetic_scene.json").read_text())
    assert (tmp_path / "synthetic_scene_overlay.png").is_file() and (tmp_path / "synthetic_scene_labels.png").is_file()
    assert "escnet-synthetic-tiny" in json.dumps(result)
