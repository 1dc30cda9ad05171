"""COCO-Stuff from a miniature of stuffthingmaps_trainval2017 + COCO images."""
import numpy as np
from PIL import Image

from escnet.cli import main
from escnet.data.datasets import get_dataset
from escnet.data.vocab import benchmark_vocabulary
from escnet.data.prepare_coco import COCO_STUFF_MAP_VALUES, coco_stuff_label

# (stuffthingmaps value, train id) pairs read off CAT-Seg's COCO_CATEGORIES table (id -> trainId).
CATSEG_TABLE_SAMPLES = [(0, 0), (10, 10), (12, 11), (24, 23), (26, 24), (30, 26), (43, 39), (45, 40),
                        (64, 59), (66, 60), (69, 61), (71, 62), (81, 72), (83, 73), (89, 79), (91, 80),
                        (92, 81), (150, 139), (181, 170)]


def test_lookup_table_matches_catseg():
    assert len(COCO_STUFF_MAP_VALUES) == 171
    for value, train_id in CATSEG_TABLE_SAMPLES:
        assert coco_stuff_label(np.array([[value]], np.uint8))[0, 0] == train_id
    unused = [11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90, 182, 200, 255]
    assert (coco_stuff_label(np.array([unused], np.uint8)) == 255).all()


def test_coco_stuff_both_splits(tmp_path):
    base = tmp_path / "coco-stuff"
    raw_val = np.array([[0, 11, 12, 90, 91], [181, 255, 200, 89, 0]], np.uint8)
    raw_train = np.full((3, 4), 150, np.uint8)
    for split, raws in (("val2017", {"000000000139": raw_val, "000000000285": raw_val[::-1]}),
                        ("train2017", {"000000000009": raw_train})):
        (base / "images" / split).mkdir(parents=True)
        (base / "annotations" / split).mkdir(parents=True)
        for stem, raw in raws.items():
            Image.fromarray(np.zeros(raw.shape + (3,), np.uint8)).save(base / "images" / split / f"{stem}.jpg")
            Image.fromarray(raw).save(base / "annotations" / split / f"{stem}.png")

    assert main(["prepare", "coco-stuff", "--root", str(tmp_path), "--workers", "1"]) == 0
    out = base / "annotations_detectron2"
    got = np.array(Image.open(out / "val2017" / "000000000139.png"))
    np.testing.assert_array_equal(got, [[0, 255, 11, 255, 80], [170, 255, 255, 79, 0]])
    assert (np.array(Image.open(out / "train2017" / "000000000009.png")) == 139).all()
    assert len(list((out / "val2017").glob("*.png"))) == 2 and len(list((out / "train2017").glob("*.png"))) == 1

    val, train = get_dataset("coco-stuff", tmp_path), get_dataset("coco171", tmp_path, split="train")
    assert (len(val), len(train)) == (2, 1)
    assert val.num_classes == 171 and val.class_names == benchmark_vocabulary("coco171")
    assert val.class_names[80] == "banner" and val.class_names[170] == "wood"
