import numpy as np
import pytest

from escnet.data.synthetic import (HUES, SHAPES, TONES, colour_of, polygon_mask, prepare_synthetic, scene, shape_mask,
                                   vocabulary, write_example)
from escnet.data.train_dataset import resolve_dataset
from escnet.data.transforms import rgb_to_hsv


def test_vocabulary_unseen_are_new_combinations_of_seen_words():
    vocab = vocabulary()
    assert vocab.seen[0] == "background" and len(vocab.seen) == 10 and len(vocab.unseen) == 3
    assert sorted(vocab.seen[1:] + vocab.unseen) == sorted(f"{t} {h}" for t in TONES for h in HUES)
    seen_words = {w for name in vocab.seen[1:] for w in name.split()}
    assert seen_words == set(TONES) | set(HUES)  # every word of an unseen name was seen in training


def test_shapes_have_sensible_areas():
    square = polygon_mask(np.array([[10, 10], [30, 10], [30, 30], [10, 30]], float), 40)
    assert square.sum() == 400
    areas = {s: shape_mask(s, 32, 32, 10, 0.3, 64).sum() for s in SHAPES}
    assert abs(areas["circle"] - np.pi * 100) < 15
    assert all(100 < a < 600 for a in areas.values()), areas
    with pytest.raises(ValueError, match="unknown shape 'blob'"):
        shape_mask("blob", 0, 0, 1, 0, 8)


def test_scenes_are_deterministic_and_respect_the_split():
    vocab = vocabulary()
    a_img, a_lab = scene("train", 3)
    b_img, b_lab = scene("train", 3)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    assert a_img.shape == (128, 128, 3) and a_img.dtype == np.uint8 and a_lab.dtype == np.uint8
    train_ids = set().union(*(np.unique(scene("train", i)[1]).tolist() for i in range(20)))
    assert train_ids == set(range(len(vocab.seen)))
    val_ids = set().union(*(np.unique(scene("val", i)[1]).tolist() for i in range(20)))
    assert set(range(len(vocab.seen), len(vocab.all))) <= val_ids


def test_labels_name_the_colour_of_their_pixels():
    """Every labelled region shows its class colour: the hue of the name, dark regions dark, light
    ones light, and the background much less saturated than any object."""
    vocab = vocabulary()
    for i in range(12):
        image, label = scene("val", i)
        hsv = rgb_to_hsv(image).astype(int)
        for k in np.unique(label)[1:]:
            name = vocab.all[k]
            expected = rgb_to_hsv(colour_of(name).astype(np.uint8)[None, None])[0, 0].astype(int)
            region = np.median(hsv[label == k], axis=0)
            hue_gap = min(abs(region[0] - expected[0]), 180 - abs(region[0] - expected[0]))
            assert hue_gap <= 6 and abs(region[2] - expected[2]) <= 40, (name, region, expected)
            assert region[1] >= 60
            assert (region[2] < 130) if name.startswith("dark") else (region[2] > 170)
        assert np.percentile(hsv[label == 0][:, 1], 95) < 50


def test_prepare_writes_detectron2_layout(tmp_path):
    summary = prepare_synthetic(tmp_path, workers=1, num_train=6, num_val=4, size=64)
    assert summary["train_images"] == {"written": 6} and summary["val_images"] == {"written": 4}
    base = tmp_path / "synthetic"
    assert sorted(p.name for p in (base / "images" / "train").iterdir())[0] == "000000.png"
    assert len(list((base / "annotations_detectron2" / "val").iterdir())) == 4
    assert (base / "classes.txt").read_text().splitlines() == list(vocabulary().all)
    assert prepare_synthetic(tmp_path, workers=1, num_train=6, num_val=4, size=64)["status"] == "already prepared"
    train = resolve_dataset("synthetic", tmp_path, "train")
    val = resolve_dataset("synthetic", tmp_path, "val")
    assert train.dataset.class_names == list(vocabulary().seen) and len(train.dataset) == 6
    assert val.dataset.num_classes == 13 and val.groups["unseen"] == [10, 11, 12]
    assert val.groups["seen"] == list(range(1, 10)) and val.groups["background"] == [0]
    image, label = val.dataset[0]
    assert image.shape == (64, 64, 3) and label.max() < 13


def test_missing_benchmark_names_the_prepare_command(tmp_path):
    from escnet.data.datasets import DatasetError

    with pytest.raises(DatasetError, match="escnet prepare synthetic"):
        resolve_dataset("synthetic", tmp_path, "train")


def test_example_scene(tmp_path):
    names = write_example(tmp_path / "scene.png", tmp_path / "scene.txt")
    assert (tmp_path / "scene.png").stat().st_size > 0
    assert (tmp_path / "scene.txt").read_text().splitlines() == names == list(vocabulary().all)


def test_prepare_synthetic_reports_progress_in_a_log(tmp_path, capsys):
    from escnet.data.synthetic import prepare_synthetic

    prepare_synthetic(tmp_path, workers=1, num_train=2, num_val=3, size=32)
    err = capsys.readouterr().err  # not a terminal: plain lines, no bar
    assert "synthetic train: 2 files done in" in err and "synthetic val: 3 files done in" in err
