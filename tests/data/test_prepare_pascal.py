"""PASCAL-Context 59 / 459 and VOC 2012 (20 / 20b) from miniatures of their raw downloads."""
import json

import numpy as np
import pytest
from PIL import Image

from escnet.cli import main
from escnet.data import prepare as P
from escnet.data.datasets import get_dataset
from escnet.data.vocab import benchmark_vocabulary
from escnet.data.prepare_pascal import PC59_CATEGORY_IDS, rle_decode

# COCO RLE strings produced by pycocotools.mask.encode for the masks built below.
RLE_FIXTURE_SMALL = "6183K00000006MM"       # 7 x 9


def _fixture_small():
    a = np.zeros((7, 9), np.uint8)
    a[1:5, 2:7] = 1
    a[6, 0] = 1
    a[0, 8] = 1
    return a


RLE_FIXTURE_BIG = "[6R1600000000UO4:LF4:LF4:LF4:LF4:LF4:LF4:LF4:LF4:LF4:LF4:LF4:LF4:LF4:LF4:LF4:LF4:LF4:LF4:LF4:LF4:LF4:LF4:LF4:LF4:LF4:LF4:LF4:LF4:LF4:La000000000U6"


def _fixture_big():
    a = np.zeros((40, 50), np.uint8)
    a[3:37, 5:45] = 1
    a[10:20, 10:40] = 0
    return a


def test_rle_decode_matches_pycocotools_fixtures():
    np.testing.assert_array_equal(rle_decode({"size": [7, 9], "counts": RLE_FIXTURE_SMALL}), _fixture_small())
    np.testing.assert_array_equal(rle_decode({"size": [40, 50], "counts": RLE_FIXTURE_BIG}), _fixture_big())
    # Uncompressed form: run lengths as a list, column-major, starting with zeros.
    np.testing.assert_array_equal(rle_decode({"size": [2, 3], "counts": [1, 2, 3]}), [[0, 1, 0], [1, 0, 0]])
    with pytest.raises(P.PrepareError, match="cover"):
        rle_decode({"size": [2, 3], "counts": [1, 2]}, "anno 7")


def test_rle_decode_against_pycocotools_on_random_masks():
    mask_util = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (13, 11), (64, 80)]:
        m = (rng.random(shape) > 0.7).astype(np.uint8)
        rle = mask_util.encode(np.asfortranarray(m))
        np.testing.assert_array_equal(rle_decode({"size": rle["size"], "counts": rle["counts"].decode()}), m)


def _voc2010(root):
    base = root / "VOCdevkit" / "VOC2010"
    (base / "JPEGImages").mkdir(parents=True)
    for stem in ("2008_000002", "2008_000003", "2008_000004"):
        Image.fromarray(np.zeros((7, 9, 3), np.uint8)).save(base / "JPEGImages" / f"{stem}.jpg")
    return base


def _merged_json(base):
    data = {
        "images": [
            {"image_id": 1, "file_name": "2008_000002.jpg", "height": 7, "width": 9, "phase": "val"},
            {"image_id": 2, "file_name": "2008_000003.jpg", "height": 7, "width": 9, "phase": "train"},
            {"image_id": 3, "file_name": "2008_000004.jpg", "height": 7, "width": 9, "phase": "val"},
        ],
        "annos_segmentation": [
            {"image_id": 1, "category_id": 2, "segmentation": {"size": [7, 9], "counts": RLE_FIXTURE_SMALL}},
            # accordion (1) is not one of the 59: ignored
            {"image_id": 1, "category_id": 1, "segmentation": {"size": [7, 9], "counts": [7 * 8, 7]}},
            # wood (458), painted later over part of the aeroplane
            {"image_id": 1, "category_id": 458, "segmentation": {"size": [7, 9], "counts": [7 * 3 + 1, 3, 38]}},
            {"image_id": 2, "category_id": 2, "segmentation": {"size": [7, 9], "counts": [0, 63]}},
        ],
        "categories": [],
    }
    (base / "trainval_merged.json").write_text(json.dumps(data))


def test_pc59_from_trainval_merged_json(tmp_path):
    base = _voc2010(tmp_path)
    _merged_json(base)
    assert main(["prepare", "pc59", "--root", str(tmp_path), "--workers", "1"]) == 0
    out = base / "annotations_detectron2" / "pc59_val"
    assert sorted(p.name for p in out.glob("*.png")) == ["2008_000002.png", "2008_000004.png"]

    expected = np.full((7, 9), 255, np.uint8)
    expected[_fixture_small() == 1] = 0                   # aeroplane
    expected[:, 8] = 255                                  # accordion column: not a PC-59 class
    wood = np.zeros(63, bool)
    wood[22:25] = True
    expected[wood.reshape(9, 7).T] = 58                   # wood, painted last
    got = np.array(Image.open(out / "2008_000002.png"))
    np.testing.assert_array_equal(got, expected)
    assert (np.array(Image.open(out / "2008_000004.png")) == 255).all()   # val image without annotations

    ds = get_dataset("pc59", tmp_path)
    assert len(ds) == 2 and ds.num_classes == 59 and ds.class_names[0] == "aeroplane" and ds.class_names[58] == "wood"


def test_pc59_ids_name_the_pc59_classes_in_the_459_list():
    pc459, pc59 = benchmark_vocabulary("pc459"), benchmark_vocabulary("pc59")
    names = [pc459[i - 1] for i in PC59_CATEGORY_IDS]
    # PASCAL-Context 59 calls the 459-list's "table" "diningtable"; every other name is the same.
    assert [n if n != "table" else "diningtable" for n in names] == pc59


def test_pc459_from_mat_files(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    base = _voc2010(tmp_path)
    (base / "trainval").mkdir()
    labelmap = np.arange(1, 64, dtype=np.uint16).reshape(7, 9)
    labelmap[0, 0], labelmap[6, 8] = 459, 1
    scipy_io.savemat(base / "trainval" / "2008_000002.mat", {"LabelMap": labelmap})
    scipy_io.savemat(base / "trainval" / "2008_000003.mat", {"LabelMap": labelmap})   # train: not listed
    (base / "pascalcontext_val.txt").write_text("2008_000002\n2008_000004\n")         # 000004 has no .mat
    (base / "labels.txt").write_text("".join(f"{i + 1}: {n}\n" for i, n in enumerate(benchmark_vocabulary("pc459"))))

    summary = P.prepare("pc459", tmp_path, workers=1)
    assert summary["labels"] == 1 and summary["val_ids_without_mat"] == 1 and "labels_txt_mismatches" not in summary
    out = base / "annotations_detectron2" / "pc459_val"
    assert [p.name for p in out.glob("*.tif")] == ["2008_000002.tif"]
    got = np.array(Image.open(out / "2008_000002.tif"))
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, labelmap.astype(np.int64) - 1)
    assert got.max() == 458 and not (got == 459).any()          # every pixel labelled

    ds = get_dataset("pc459", tmp_path)
    assert len(ds) == 1 and ds.num_classes == 459 and ds.ignore_label == 459
    assert ds.class_names[0] == "accordion" and ds.class_names[458] == "wool"


def test_pc459_val_list_from_json_and_bad_labelmap(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    base = _voc2010(tmp_path)
    _merged_json(base)
    (base / "trainval").mkdir()
    scipy_io.savemat(base / "trainval" / "2008_000004.mat", {"LabelMap": np.ones((7, 9), np.uint16)})
    assert P.prepare("pc459", tmp_path, workers=1)["labels"] == 1
    scipy_io.savemat(base / "trainval" / "2008_000002.mat", {"LabelMap": np.zeros((7, 9), np.uint16)})
    with pytest.raises(P.PrepareError, match="2008_000002.mat.*1..459"):
        P.prepare("pc459", tmp_path, workers=1, force=True)


def _voc2012(root, aug=True):
    base = root / "VOCdevkit" / "VOC2012"
    (base / "ImageSets" / "Segmentation").mkdir(parents=True)
    (base / "JPEGImages").mkdir()
    src = base / ("SegmentationClassAug" if aug else "SegmentationClass")
    src.mkdir()
    raws = {
        "2007_000033": np.array([[0, 1, 20, 255], [15, 15, 0, 0]], np.uint8),
        "2007_000042": np.array([[0, 0, 255, 0], [0, 0, 0, 0]], np.uint8),   # background only
        "2007_000061": np.array([[7, 7, 7, 7], [21, 100, 255, 3]], np.uint8),
    }
    for stem, raw in raws.items():
        Image.fromarray(np.zeros((2, 4, 3), np.uint8)).save(base / "JPEGImages" / f"{stem}.jpg")
        img = Image.fromarray(raw)
        if not aug:  # the original SegmentationClass PNGs are palette images
            img = img.convert("P")
            img.putpalette([0, 0, 0] * 256)
        img.save(src / f"{stem}.png")
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(raws) + "\n")
    return base, raws


@pytest.mark.parametrize("aug", [True, False])
def test_voc20_and_voc20b(tmp_path, aug):
    base, raws = _voc2012(tmp_path, aug)
    assert main(["prepare", "voc", "--root", str(tmp_path), "--workers", "1"]) == 0
    v20, v20b = base / "annotations_detectron2" / "val", base / "annotations_detectron2_bg" / "val"
    assert sorted(p.name for p in v20.glob("*.png")) == ["2007_000033.png", "2007_000061.png"]
    assert len(list(v20b.glob("*.png"))) == 3
    np.testing.assert_array_equal(np.array(Image.open(v20 / "2007_000033.png")), [[255, 0, 19, 255], [14, 14, 255, 255]])
    np.testing.assert_array_equal(np.array(Image.open(v20b / "2007_000033.png")), [[20, 0, 19, 255], [14, 14, 20, 20]])
    np.testing.assert_array_equal(np.array(Image.open(v20 / "2007_000061.png")), [[6, 6, 6, 6], [255, 255, 255, 2]])
    assert (np.array(Image.open(v20b / "2007_000042.png")) == [[20, 20, 255, 20], [20] * 4]).all()

    voc20, voc20b = get_dataset("voc20", tmp_path), get_dataset("voc20b", tmp_path)
    assert (len(voc20), len(voc20b)) == (2, 3)
    assert voc20.num_classes == 20 and voc20.class_names == benchmark_vocabulary("voc20")
    assert voc20b.num_classes == 21 and voc20b.class_names[-1] == "background" and voc20b.background_index == 20
    assert len(voc20b.prompt_classes) == 59 and voc20b.prompt_classes[:20] == benchmark_vocabulary("voc20")

    assert P.prepare("voc", tmp_path)["status"] == "already prepared"
