"""End-to-end tests of `escnet segment` with a small random ESC-Net and real photos that ship
with scikit-image (test-only data)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from escnet.cli import main

skimage_data = pytest.importorskip("skimage.data")
PHOTOS = {"astronaut": skimage_data.astronaut, "chelsea": skimage_data.chelsea, "coffee": skimage_data.coffee}
CLASSES = "person, cat, cup, sky, wall"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from escnet.models import factory
    from escnet import lifecycle
    torch.manual_seed(0)
    return lifecycle.save_pretrained(factory.create_model("escnet", "tiny"), tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for name, load in PHOTOS.items():
        Image.fromarray(load()).save(folder / f"{name}.{'jpg' if name == 'coffee' else 'png'}")
    return folder


def _outputs(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


def test_folder_of_photos_end_to_end(model_dir, photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["segment", str(photos), "--classes", CLASSES, "--model", str(model_dir), "--out", str(out),
                 "--device", "cpu"]) == 0
    assert "segmented 3 of 3 image(s)" in capsys.readouterr().err
    for name, load in PHOTOS.items():
        height, width = load().shape[:2]
        assert (out / f"{name}_overlay.png").is_file()
        with Image.open(out / f"{name}_overlay.png") as overlay:
            assert overlay.height >= height and overlay.width > width  # the legend sits to the right
        with Image.open(out / f"{name}_labels.png") as labels:
            assert labels.mode == "P" and labels.size == (width, height)
            assert np.asarray(labels).max() < 5
        data = json.loads((out / f"{name}.json").read_text())
        assert [c["name"] for c in data["classes"]] == ["person", "cat", "cup", "sky", "wall"]
        assert sum(c["fraction"] for c in data["classes"]) == pytest.approx(1.0, abs=1e-9)
        assert data["size"] == [height, width]
        assert data["info"]["protocol"] == "sliding" and data["info"]["class_mode"] == "exact"
        assert data["info"]["checkpoint"] == str(model_dir)


def test_mixed_modes_and_bad_files(model_dir, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    photo = skimage_data.chelsea()[::4, ::4]
    Image.fromarray(photo).convert("L").save(inputs / "grey.png")
    Image.fromarray(photo).convert("CMYK").save(inputs / "print.jpg")
    rgba = np.concatenate([photo, np.full(photo.shape[:2] + (1,), 128, np.uint8)], axis=-1)
    Image.fromarray(rgba, "RGBA").save(inputs / "clear.png")
    Image.fromarray((photo[..., 0].astype(np.uint16) * 257)).save(inputs / "deep.png")
    Image.fromarray(photo).save(inputs / "broken.jpg")
    data = (inputs / "broken.jpg").read_bytes()
    (inputs / "broken.jpg").write_bytes(data[: len(data) // 3])
    (inputs / "notes.png").write_text("not a picture")
    (inputs / "readme.txt").write_text("ignored: not an image extension")
    out = tmp_path / "out"

    code = main(["segment", str(inputs), str(tmp_path / "missing.png"), "--classes", "cat; grass, lawn",
                 "--model", str(model_dir), "--out", str(out), "--protocol", "single", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1
    assert "missing.png: no such file or folder" in err
    assert "broken.jpg: corrupt or truncated image" in err
    assert "notes.png: not an image file (format not recognised)" in err
    assert "segmented 4 of 6 image(s)" in err and "3 input(s) failed:" in err
    written = _outputs(out)
    assert not [name for name in written if name.startswith(("broken", "notes", "readme"))]
    for stem in ("grey", "print", "clear", "deep"):
        assert {f"{stem}.json", f"{stem}_labels.png", f"{stem}_overlay.png"} <= set(written)
    assert json.loads((out / "clear.json").read_text())["classes"][1]["entry"] == "grass, lawn"


def test_same_stem_gets_distinct_names(model_dir, tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        Image.new("RGB", (20, 10), "red").save(tmp_path / sub / "x.png")
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png"), "--classes", "red, blue",
                 "--model", str(model_dir), "--out", str(out), "--protocol", "single", "--device", "cpu"]) == 0
    assert {"x.json", "x_2.json"} <= set(_outputs(out))


def test_catseg_checkpoint(tmp_path, capsys):
    from escnet.models import factory
    from escnet import lifecycle
    torch.manual_seed(0)
    model_dir = lifecycle.save_pretrained(factory.create_model("catseg", "tiny"), tmp_path / "catseg")
    image = tmp_path / "coffee.png"
    Image.fromarray(skimage_data.coffee()[::8, ::8]).save(image)
    out = tmp_path / "out"
    assert main(["segment", str(image), "--classes", "cup, table, wall", "--model", str(model_dir), "--out", str(out),
                 "--protocol", "single", "--class-mode", "top256", "--device", "cpu"]) == 0
    info = json.loads((out / "coffee.json").read_text())["info"]
    assert info["model"] == "catseg" and info["class_mode"] == "top256" and info["truncated"] is False
    with Image.open(out / "coffee_labels.png") as labels:
        assert labels.size == (75, 50)


def test_vocabulary_files_and_benchmarks(model_dir, tmp_path):
    image = tmp_path / "cat.png"
    Image.fromarray(skimage_data.chelsea()[::8, ::8]).save(image)
    (tmp_path / "classes.json").write_text(json.dumps([["cat", "kitty"], "floor"]))
    for spec, first in ((str(tmp_path / "classes.json"), "cat"), ("voc20", "aeroplane")):
        out = tmp_path / f"out_{first}"
        assert main(["segment", str(image), "--classes", spec, "--model", str(model_dir), "--out", str(out),
                     "--protocol", "single", "--device", "cpu"]) == 0
        assert json.loads((out / "cat.json").read_text())["classes"][0]["name"] == first


@pytest.mark.parametrize("classes, message", [
    ("", "empty vocabulary"),
    ("cat, dog, cat", "duplicate class name 'cat' in the class string (classes 1 and 3)"),
    ("ade1000", "unknown benchmark vocabulary 'ade1000'"),
    ("missing.txt", "vocabulary file 'missing.txt' not found"),
])
def test_bad_vocabulary_stops_before_any_work(classes, message, photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["segment", str(photos), "--classes", classes, "--model", "unused", "--out", str(out)]) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_missing_model_path(photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["segment", str(photos), "--classes", "cat", "--model", str(tmp_path / "nope"), "--out", str(out)]) == 1
    assert f"cannot use model: model path '{tmp_path / 'nope'}' does not exist" in capsys.readouterr().err
    assert not out.exists()


def test_top256_works_for_escnet_too(model_dir, photos, tmp_path, capsys):
    """ESC-Net takes CAT-Seg's top-k truncation under the same class mode (docs/ppg.md)."""
    out = tmp_path / "out"
    assert main(["segment", str(photos / "coffee.jpg"), "--classes", "cat", "--model", str(model_dir), "--out", str(out),
                 "--protocol", "single", "--class-mode", "top256", "--device", "cpu"]) == 0
    info = json.loads((out / "coffee.json").read_text())["info"]
    assert info["model"] == "escnet" and info["class_mode"] == "top256" and info["truncated"] is False


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_cuda_without_gpu(photos, tmp_path, capsys):
    assert main(["segment", str(photos), "--classes", "cat", "--device", "cuda", "--out", str(tmp_path / "out")]) == 1
    assert "device 'cuda' requested but no CUDA GPU is available" in capsys.readouterr().err


def test_nothing_to_segment(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["segment", str(tmp_path / "empty"), "--classes", "cat", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "empty: folder contains no image files" in err and "no images to segment" in err


def test_batched_folder_with_every_format_matches_one_by_one(model_dir, photos, tmp_path, capsys):
    one, many = tmp_path / "one", tmp_path / "many"
    common = ["segment", str(photos), "--classes", CLASSES, "--model", str(model_dir), "--device", "cpu",
              "--protocol", "single", "--threads", "1"]
    assert main(common + ["--out", str(one)]) == 0
    assert main(common + ["--out", str(many), "--batch-size", "2", "--format", "png,masks,coco"]) == 0
    assert "segmented 3 of 3 image(s)" in capsys.readouterr().err
    for name in PHOTOS:
        labels = np.asarray(Image.open(many / f"{name}_labels.png"))
        # A random model's class probabilities often tie to 1e-7; its head's float sums differ
        # by ~2e-7 between batch sizes, which flips a handful of such pixels (of 262,144).
        assert (labels != np.asarray(Image.open(one / f"{name}_labels.png"))).mean() < 1e-4
        listing = json.loads((many / f"{name}_masks.json").read_text())
        assert {item["id"] for item in listing} == set(np.unique(labels).tolist())
        for item in listing:
            assert 0 <= item["score"] <= 1
            assert np.array_equal(np.asarray(Image.open(many / item["mask"])) == 255, labels == item["id"])
        coco = json.loads((many / f"{name}_coco.json").read_text())
        assert sum(a["area"] for a in coco["annotations"]) == labels.size


def test_bad_format_and_batch_size_are_refused(model_dir, photos, tmp_path, capsys):
    base = ["segment", str(photos), "--classes", CLASSES, "--model", str(model_dir), "--out", str(tmp_path / "o")]
    assert main(base + ["--format", "tiff"]) == 1
    assert "unknown output format tiff" in capsys.readouterr().err
    assert main(base + ["--batch-size", "0"]) == 1
    assert "--batch-size must be at least 1" in capsys.readouterr().err


def test_bundled_model_prints_one_plain_notice(tmp_path, capfd):
    from importlib import resources

    example = resources.files("escnet") / "assets" / "examples" / "synthetic_scene.png"
    assert main(["segment", str(example), "--classes", "dark red, background", "--out", str(tmp_path),
                 "--device", "cpu", "--protocol", "single"]) == 0
    err = capfd.readouterr().err
    assert err.count("note: model escnet-synthetic-tiny: demonstration model") == 1
    assert "Warning" not in err and "warnings.warn" not in err
    info = json.loads((tmp_path / "synthetic_scene.json").read_text())["info"]
    assert "knows nothing about real photos" in info["model_description"]
def test_output_names_are_unique_across_inputs(model_dir, tmp_path, capsys):
    from escnet.inference.folder import unique_names as _unique_names

    colours = {"d1/a.png": (255, 0, 0), "d1/a_2.png": (0, 255, 0), "d2/a.png": (0, 0, 255)}
    for rel, colour in colours.items():
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        Image.new("RGB", (24, 16), colour).save(tmp_path / rel)
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "d1"), str(tmp_path / "d2"), "--classes", CLASSES, "--model",
                 str(model_dir), "--out", str(out), "--device", "cpu", "--protocol", "single"]) == 0
    assert "segmented 3 of 3" in capsys.readouterr().err
    assert sorted(p.name for p in out.glob("*.json")) == ["a.json", "a_2.json", "a_3.json"]
    assert _unique_names([Path("x/A.png"), Path("y/a.png"), Path("z/a_2.png")]) == ["A", "a_2", "a_2_2"]


@pytest.mark.parametrize("flag, value, message", [
    ("--max-side", "0", "must be at least"), ("--max-side", "-1", "must be at least"), ("--max-side", "x", "integer"),
    ("--memory-budget", "nan", "finite number > 0"), ("--memory-budget", "inf", "finite number > 0"),
    ("--memory-budget", "0", "finite number > 0"), ("--memory-budget", "-5", "finite number > 0"),
])
def test_size_and_memory_values_are_checked(tmp_path, capsys, flag, value, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["segment", "x.png", "--classes", "cat", "--out", str(tmp_path), flag, value])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_segmenter_checks_the_same_values():
    from escnet.inference.segmenter import Segmenter

    for kwargs in ({"max_side": 0}, {"max_side": 2.5}, {"memory_budget_mb": float("nan")}, {"memory_budget_mb": -1}):
        with pytest.raises(ValueError):
            Segmenter(torch.nn.Linear(1, 1), device="cpu", **kwargs)
