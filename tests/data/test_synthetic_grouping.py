import numpy as np
import pytest

from escnet.data.synthetic import HUES
from escnet.data.synthetic_grouping import MIN_PART, prepare_synthetic_grouping, scene, vocabulary
from escnet.data.train_dataset import resolve_dataset
from escnet.data.transforms import rgb_to_hsv

_HUE_NAMES = list(HUES)
_HUE_REF = rgb_to_hsv(np.array([HUES[h] for h in _HUE_NAMES], np.uint8)[None])[0, :, 0].astype(int)


def _nearest_hue(pixels: np.ndarray) -> np.ndarray:
    """(P, 3) uint8 RGB -> (P,) index into HUES of the nearest reference hue (circular, OpenCV units)."""
    h = rgb_to_hsv(pixels[None])[0, :, 0].astype(int)
    gap = np.abs(h[:, None] - _HUE_REF[None])
    return np.minimum(gap, 180 - gap).argmin(1)


def test_vocabulary_is_hue_pairs_with_unseen_new_combinations():
    vocab = vocabulary()
    assert vocab.seen[0] == "background" and len(vocab.seen) == 13 and len(vocab.unseen) == 3
    assert len(set(vocab.all)) == 16
    seen_words = {w for name in vocab.seen[1:] for w in name.split()}
    assert seen_words == set(HUES)
    for name in vocab.unseen:
        assert all(w in seen_words for w in name.split())
    # every hue is in several seen classes: a pixel's hue alone cannot name its class
    for hue in HUES:
        assert sum(hue in name.split() for name in vocab.seen[1:]) >= 3


def test_scenes_are_deterministic_and_respect_the_split():
    a, b = scene("train", 5), scene("train", 5)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert np.array_equal(a.instances, b.instances) and a.classes == b.classes
    assert not np.array_equal(a.image, scene("train", 6).image)
    assert a.image.shape == (128, 128, 3) and a.image.dtype == np.uint8 and a.label.dtype == np.uint8
    n_seen = len(vocabulary().seen)
    train_ids = set().union(*(np.unique(scene("train", i).label).tolist() for i in range(30)))
    assert train_ids and max(train_ids) < n_seen
    val_ids = set().union(*(np.unique(scene("val", i).label).tolist() for i in range(30)))
    assert set(range(n_seen, n_seen + 3)) <= val_ids
    with pytest.raises(ValueError, match="unknown split 'test'"):
        scene("test", 0)


def test_labels_are_exact_and_colours_do_not_decide_the_class():
    """Each object is labelled whole with its class; a two-coloured object shows exactly the two hues
    of its name, each on >= MIN_PART of it; clutter (background) shows one hue; the same hue
    occurs in the background clutter and in several classes."""
    vocab = vocabulary()
    hue_classes: dict[int, set[int]] = {i: set() for i in range(len(HUES))}
    for i in range(15):
        s = scene("val", i, size=96)
        assert np.array_equal(s.label == 0, (s.instances == 0) | np.isin(s.instances, [k + 1 for k, c in enumerate(s.classes) if c == 0]))
        for k, cls in enumerate(s.classes, start=1):
            obj = s.instances == k
            assert obj.sum() > 50 and (s.label[obj] == cls).all()
            hues = _nearest_hue(s.image[obj])
            counts = np.bincount(hues, minlength=len(HUES)) / obj.sum()
            if cls == 0:
                assert counts.max() > 0.97
                hue_classes[int(counts.argmax())].add(0)
            else:
                want = [_HUE_NAMES.index(w) for w in vocab.all[cls].split()]
                assert counts[want].sum() > 0.97, (vocab.all[cls], counts)
                assert counts[want].min() >= MIN_PART - 0.03, (vocab.all[cls], counts)
                for h in want:
                    hue_classes[h].add(cls)
    assert sum(len(c) >= 3 and 0 in c for c in hue_classes.values()) >= 4


def test_prepare_writes_detectron2_layout(tmp_path):
    summary = prepare_synthetic_grouping(tmp_path, workers=1, num_train=4, num_val=3, size=64)
    assert summary["train_images"] == {"written": 4} and summary["val_images"] == {"written": 3}
    base = tmp_path / "synthetic-grouping"
    assert (base / "classes.txt").read_text().splitlines() == list(vocabulary().all)
    train = resolve_dataset("synthetic-grouping", tmp_path, "train")
    val = resolve_dataset("synthetic-grouping", tmp_path, "val")
    assert train.dataset.class_names == list(vocabulary().seen) and len(train.dataset) == 4
    assert val.groups["unseen"] == [13, 14, 15] and val.groups["seen"] == list(range(1, 13))
    image, label = val.dataset[0]
    assert image.shape == (64, 64, 3) and np.array_equal(label, scene("val", 0, size=64).label)


def _colour_bins(image: np.ndarray) -> np.ndarray:
    """(S, S, 3) uint8 -> (S, S): index of the nearest hue, or len(HUES) for unsaturated (grey) pixels."""
    hsv = rgb_to_hsv(image).astype(int)
    gap = np.abs(hsv[..., 0, None] - _HUE_REF)
    return np.where(hsv[..., 1] < 60, len(_HUE_REF), np.minimum(gap, 180 - gap).argmin(-1))


def best_colour_classifier_miou(num_scenes: int = 30, size: int = 64, sweeps: int = 3) -> float:
    """Object-class mIoU (%) of the best map pixel colour -> class, fitted on the very validation
    scenes it is scored on (coordinate ascent over the 7 colour bins): an upper bound for any
    classifier that sees only a pixel's colour."""
    names = vocabulary().all
    joint = np.zeros((len(_HUE_REF) + 1, len(names)))  # (colour bin, true class) pixel counts
    for i in range(num_scenes):
        s = scene("val", i, size)
        np.add.at(joint, (_colour_bins(s.image).ravel(), s.label.ravel()), 1)

    def object_miou(mapping):
        conf = np.zeros((len(names), len(names)))  # (true, predicted)
        for b, c in enumerate(mapping):
            conf[:, c] += joint[b]
        iou = np.diag(conf) / np.maximum(conf.sum(0) + conf.sum(1) - np.diag(conf), 1)
        return iou[1:].mean()

    mapping = [0] * len(joint)
    for _ in range(sweeps):
        for b in range(len(mapping)):
            mapping[b] = max(range(len(names)), key=lambda c: object_miou(mapping[:b] + [c] + mapping[b + 1:]))
    return 100 * object_miou(mapping)


def test_pixel_colour_does_not_decide_the_class():
    """In training scenes every hue is partly background (clutter) and no class holds half of its
    object pixels; on validation scenes the best colour -> class map scores a small fraction of
    what grouping the object (reading both of its hues) gets, which is 100 %."""
    joint = np.zeros((len(_HUE_REF) + 1, 16))
    for i in range(80):
        s = scene("train", i, 48)
        np.add.at(joint, (_colour_bins(s.image).ravel(), s.label.ravel()), 1)
    hue_rows = joint[:-1]
    assert (hue_rows[:, 0] / hue_rows.sum(1) > 0.1).all()
    objects = hue_rows[:, 1:] / hue_rows[:, 1:].sum(1, keepdims=True)
    assert objects.max() < 0.5, objects.max(1)
    assert best_colour_classifier_miou() < 15
