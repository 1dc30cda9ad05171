import json

import numpy as np
import pytest

from escnet.inference.segmenter import SegmentationResult
from escnet.inference.outputs import (
    class_masks, coco_json, parse_formats, pipeline_output, rle_decode, rle_encode, save_outputs,
)

# pycocotools 2.0.x on numpy 2 warns inside its own decode
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def _masks():
    rng = np.random.default_rng(0)
    yield np.zeros((5, 7), bool)
    yield np.ones((5, 7), bool)
    yield rng.random((31, 17)) > 0.5
    big = np.zeros((300, 200), bool)
    big[40:250, 10:190] = True  # long runs: differences over several 5-bit groups, some negative
    big[100:120, 50:60] = False
    yield big
    yield rng.random((1, 1)) > 0.5


@pytest.mark.parametrize("mask", list(_masks()))
def test_rle_round_trips_through_pycocotools(mask):
    cocomask = pytest.importorskip("pycocotools.mask")
    rle = rle_encode(mask)
    reference = cocomask.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert rle["counts"] == reference["counts"].decode("ascii")
    decoded = cocomask.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")})
    np.testing.assert_array_equal(decoded, mask.astype(np.uint8))
    assert int(cocomask.area({"size": rle["size"], "counts": rle["counts"].encode("ascii")})) == mask.sum()


@pytest.mark.parametrize("mask", list(_masks()))
def test_rle_decode_inverts_encode(mask):
    np.testing.assert_array_equal(rle_decode(rle_encode(mask)), mask.astype(np.uint8))


def _result():
    labels = np.zeros((6, 8), np.int32)
    labels[:, 4:] = 2
    labels[0, 0] = 3
    return SegmentationResult(labels=labels, classes=["sky", "cat", "building, edifice", "dog"],
                              image=np.zeros((6, 8, 3), np.uint8), scores=np.array([0.9, 0.0, 0.7, 0.55], np.float32),
                              info={"model": "stub"})


def test_class_masks_and_pipeline_list_cover_the_classes_present():
    result = _result()
    masks = class_masks(result)
    assert [m["label"] for m in masks] == ["sky", "building", "dog"]
    assert [m["score"] for m in masks] == pytest.approx([0.9, 0.7, 0.55])
    assert sum(m["mask"].sum() for m in masks) == result.labels.size
    listing = pipeline_output(result)
    assert [item["label"] for item in listing] == ["sky", "building", "dog"]
    assert listing[1]["mask"].mode == "L" and np.array_equal(np.asarray(listing[1]["mask"]) == 255, result.labels == 2)


def test_coco_json_loads_in_pycocotools(tmp_path):
    coco_module = pytest.importorskip("pycocotools.coco")
    path = tmp_path / "x.json"
    path.write_text(json.dumps(coco_json(_result(), file_name="x.png")))
    coco = coco_module.COCO(str(path))
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert [a["category_id"] for a in anns] == [1, 3, 4]
    assert coco.loadCats(3)[0]["name"] == "building"
    np.testing.assert_array_equal(coco.annToMask(anns[1]), (_result().labels == 2).astype(np.uint8))
    assert anns[1]["bbox"] == [4, 0, 4, 6] and anns[2]["area"] == 1


def test_save_outputs_writes_each_format(tmp_path):
    written = save_outputs(_result(), tmp_path, "img", parse_formats("masks,coco"))
    names = sorted(p.name for p in written)
    assert names == ["img_coco.json", "img_mask_0.png", "img_mask_2.png", "img_mask_3.png", "img_masks.json"]
    listing = json.loads((tmp_path / "img_masks.json").read_text())
    assert listing[1] == {"id": 2, "label": "building", "entry": "building, edifice", "score": pytest.approx(0.7),
                          "mask": "img_mask_2.png"}
    assert sorted(p.name for p in tmp_path.iterdir()) == names  # no temporary files left


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="unknown output format jpeg; choose from png, masks, coco"):
        parse_formats("png,jpeg")
