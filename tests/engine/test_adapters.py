"""The ecosystem interfaces (escnet.inference.adapters): transformers-style post-processing, the
pipeline list, supervision Detections."""
import builtins
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import escnet

from escnet.inference.adapters import SUPERVISION_HINT, post_process_semantic_segmentation, to_detections
from escnet.inference.outputs import pipeline_output
from escnet.inference.segmenter import SegmentationResult


def _result(scores=True):
    labels = np.zeros((6, 8), np.int32)
    labels[1:4, 4:7] = 2
    labels[5, 0] = 3
    return SegmentationResult(labels=labels, classes=["sky", "cat", "building, edifice", "dog"],
                              image=np.zeros((6, 8, 3), np.uint8),
                              scores=np.array([0.9, 0.0, 0.7, 0.55], np.float32) if scores else None)


def test_post_process_resizes_probabilities_then_takes_the_argmax():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, 9) * 3
    sizes = [(14, 18), (5, 3)]
    labels = post_process_semantic_segmentation(logits, target_sizes=sizes)
    assert [tuple(x.shape) for x in labels] == sizes and labels[0].dtype == torch.long
    for i, size in enumerate(sizes):
        expected = F.interpolate(logits[i:i + 1].sigmoid(), size=size, mode="bilinear", align_corners=False).argmax(1)[0]
        assert torch.equal(labels[i], expected)
    # no target size: the argmax at the logits' resolution; dict, .logits and a size tensor are accepted
    assert torch.equal(post_process_semantic_segmentation({"logits": logits})[1], logits[1].argmax(0))
    by_tensor = post_process_semantic_segmentation(SimpleNamespace(logits=logits), torch.tensor(sizes))
    assert all(torch.equal(a, b) for a, b in zip(by_tensor, labels))


@pytest.mark.parametrize("outputs, sizes, message", [
    (torch.zeros(2, 3, 4), None, r"expected logits \(B, T, h, w\), got \(2, 3, 4\)"),
    ({"pred": torch.zeros(1, 2, 3, 3)}, None, "outputs has no 'logits'"),
    (torch.zeros(2, 3, 4, 4), [(8, 8)], "1 target size"),
    (torch.zeros(1, 3, 4, 4), [(0, 8)], r"target sizes must be \(H, W\) >= 1"),
])
def test_post_process_names_bad_input(outputs, sizes, message):
    with pytest.raises(ValueError, match=message):
        post_process_semantic_segmentation(outputs, sizes)


def test_post_process_of_the_model_logits_is_the_segmenters_answer(tmp_path):
    """On the bundled model: its native logits for the single view, post-processed to the image
    size, give the Segmenter's labels (the same last step)."""
    from escnet.data.images import load_image
    from escnet.inference.protocol import mapper_resize, merge_single, native_logits, single_views
    from escnet.inference.segmenter import Segmenter

    examples = Path(escnet.__file__).parent / "assets" / "examples"
    segmenter = Segmenter.from_pretrained(device="cpu", protocol="single", text_cache=False)
    classes = str(examples / "synthetic_scene.txt")
    image = load_image(examples / "synthetic_scene.png")
    result = segmenter.segment(image, classes)
    model = segmenter.model
    with torch.no_grad():
        view, size = single_views(model, mapper_resize(image, model.cfg.crop_size))
        logits = native_logits(model, view, segmenter.text_features(result.classes), None)
    labels = post_process_semantic_segmentation(merge_single(logits, size)[None], [image.shape[:2]])[0]
    np.testing.assert_array_equal(labels.numpy(), result.labels)
    assert len(np.unique(result.labels)) > 1


def test_pipeline_list_score_is_none_without_scores():
    assert [item["score"] for item in pipeline_output(_result())] == pytest.approx([0.9, 0.7, 0.55])
    assert [item["score"] for item in pipeline_output(_result(scores=False))] == [None, None, None]


@pytest.mark.filterwarnings("ignore:OpenCV")
def test_supervision_detections_from_a_result():
    sv = pytest.importorskip("supervision")
    detections = to_detections(_result())
    assert isinstance(detections, sv.Detections) and len(detections) == 3
    assert detections.class_id.tolist() == [0, 2, 3]
    assert detections.data["class_name"].tolist() == ["sky", "building", "dog"]
    np.testing.assert_allclose(detections.confidence, [0.9, 0.7, 0.55])
    np.testing.assert_array_equal(detections.mask[1], _result().labels == 2)
    assert detections.xyxy.tolist() == [[0, 0, 7, 5], [4, 1, 6, 3], [0, 5, 0, 5]]  # inclusive pixel corners
    assert to_detections(_result(scores=False)).confidence is None
    # supervision's own tools take it: areas from the masks
    assert detections.area.tolist() == [38, 9, 1]


def test_supervision_missing_gives_the_install_line(monkeypatch):
    real_import = builtins.__import__

    def no_supervision(name, *args, **kwargs):
        if name == "supervision" or name.startswith("supervision."):
            raise ImportError("No module named 'supervision'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_supervision)
    with pytest.raises(ImportError) as info:
        to_detections(_result())
    assert str(info.value) == SUPERVISION_HINT and "pip install 'escnet[supervision]'" in str(info.value)
