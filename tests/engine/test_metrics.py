import numpy as np
import pytest
import torch

from escnet.evaluation.metrics import ConfusionMatrix, LabelRangeError, compute_metrics, format_table


def _accumulate(pairs, num_classes, ignore):
    cm = ConfusionMatrix(num_classes, ignore)
    for pred, gt in pairs:
        cm.update(pred, gt)
    return cm.numpy()


def test_hand_computed_matrix_and_both_miou_formulas():
    # 3 classes, ignore 255. Class 1 is predicted but never in the ground truth.
    gt = np.array([[0, 0, 2, 255],
                   [0, 2, 2, 255]])
    pred = np.array([[0, 1, 2, 1],
                     [1, 2, 0, 0]])
    m = _accumulate([(pred, gt)], 3, 255)
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[0, 0] = 1          # gt 0 -> 0
    expected[1, 0] = 2          # gt 0 -> 1 (twice)
    expected[2, 2] = 2          # gt 2 -> 2
    expected[0, 2] = 1          # gt 2 -> 0
    expected[1, 3] = 1          # ignored pixels keep their prediction in the last column
    expected[0, 3] = 1
    np.testing.assert_array_equal(m, expected)

    r = compute_metrics(m, ["a", "b", "c"])
    iou0 = 1 / (3 + 2 - 1)      # tp 1, gt 3, pred 2
    iou2 = 2 / (3 + 2 - 2)      # tp 2, gt 3, pred 2
    assert r["mIoU"] == pytest.approx(100 * (iou0 + iou2) / 2)
    assert r["mIoU_v0.6"] == pytest.approx(100 * (iou0 + iou2) / 3)
    assert r["fwIoU"] == pytest.approx(100 * (iou0 * 3 / 6 + iou2 * 3 / 6))
    assert r["mACC"] == pytest.approx(100 * (1 / 3 + 2 / 3) / 2)
    assert r["pACC"] == pytest.approx(100 * 3 / 6)
    assert r["per_class"][1]["IoU"] is None and r["per_class"][1]["pred_pixels"] == 2
    assert r["classes_in_gt"] == 2 and r["classes_predicted_not_in_gt"] == 1
    assert "b" in format_table(r)


def test_all_ignore_image_adds_nothing_to_the_metrics():
    gt_ok = np.array([[0, 1]])
    pred_ok = np.array([[0, 1]])
    all_ignore = np.full((3, 3), 255)
    m1 = _accumulate([(pred_ok, gt_ok)], 2, 255)
    m2 = _accumulate([(pred_ok, gt_ok), (np.ones((3, 3), dtype=np.int64), all_ignore)], 2, 255)
    np.testing.assert_array_equal(m1[:2, :2], m2[:2, :2])
    assert m2[1, 2] == 9
    assert compute_metrics(m1) == compute_metrics(m2)
    only_ignore = compute_metrics(_accumulate([(np.zeros((2, 2), dtype=np.int64), np.full((2, 2), 255))], 2, 255))
    assert only_ignore["mIoU"] is None and only_ignore["pACC"] is None and only_ignore["labelled_pixels"] == 0


def test_uint16_labels_with_65535_ignore():
    t = 847
    gt = np.array([[846, 65535, 300], [300, 0, 65535]], dtype=np.uint16)
    pred = np.array([[846, 5, 300], [0, 0, 846]], dtype=np.int64)
    m = _accumulate([(pred, gt)], t, 65535)
    assert m.shape == (848, 848)
    assert m[846, 846] == 1 and m[300, 300] == 1 and m[0, 300] == 1 and m[0, 0] == 1
    assert m[5, 847] == 1 and m[846, 847] == 1
    r = compute_metrics(m)
    assert r["classes_in_gt"] == 3
    assert r["mIoU"] == pytest.approx(100 * (1 / 2 + 1 / 2 + 1) / 3)


def test_pc459_style_ignore_equal_to_num_classes():
    gt = np.array([[0, 1, 2]])
    m = _accumulate([(np.array([[0, 1, 1]]), gt)], 3, 3)
    assert m[1, 2] == 1 and m[:, 3].sum() == 0


def test_out_of_range_values_name_the_source():
    cm = ConfusionMatrix(3, 255)
    with pytest.raises(LabelRangeError, match=r"lab\.png.*\[3, 7\]"):
        cm.update(np.zeros((1, 3), dtype=np.int64), np.array([[3, 7, 255]]), source="lab.png")
    with pytest.raises(LabelRangeError, match="predicted class ids"):
        cm.update(np.array([[3]]), np.array([[0]]), source="x")
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((2, 2), dtype=np.int64), np.zeros((2, 3), dtype=np.int64), source="x")


def _reference_per_class(pairs, t, ignore):
    """Independent per-class count, no confusion matrix."""
    tp = np.zeros(t)
    gt_n = np.zeros(t)
    pr_n = np.zeros(t)
    for pred, gt in pairs:
        valid = gt != ignore
        for c in range(t):
            tp[c] += np.sum((pred == c) & (gt == c) & valid)
            gt_n[c] += np.sum((gt == c) & valid)
            pr_n[c] += np.sum((pred == c) & valid)
    return tp, gt_n, pr_n


def test_random_data_against_a_per_class_reference_and_torchmetrics():
    torchmetrics = pytest.importorskip("torchmetrics")
    rng = np.random.default_rng(0)
    t, ignore = 12, 255
    pairs = []
    for _ in range(4):
        gt = rng.integers(0, 9, size=(17, 23))          # classes 9..11 never in the ground truth
        gt[rng.random(gt.shape) < 0.1] = ignore
        pred = rng.integers(0, 11, size=gt.shape)       # class 11 never predicted either
        pairs.append((pred, gt))
    r = compute_metrics(_accumulate(pairs, t, ignore))

    tp, gt_n, pr_n = _reference_per_class(pairs, t, ignore)
    present = gt_n > 0
    iou = tp[present] / (gt_n + pr_n - tp)[present]
    assert r["mIoU"] == pytest.approx(100 * iou.mean())
    assert r["classes_predicted_not_in_gt"] == 2      # classes 9 and 10

    metric = torchmetrics.classification.MulticlassJaccardIndex(num_classes=t, average="macro", ignore_index=ignore)
    for pred, gt in pairs:
        metric.update(torch.from_numpy(pred), torch.from_numpy(gt))
    assert r["mIoU_v0.6"] == pytest.approx(100 * metric.compute().item(), abs=1e-4)
    assert r["mIoU_v0.6"] < r["mIoU"]


def test_all_reduce_is_a_no_op_without_a_process_group():
    cm = ConfusionMatrix(2, 255)
    cm.update(np.array([[0, 1]]), np.array([[0, 0]]))
    before = cm.numpy()
    cm.all_reduce()
    np.testing.assert_array_equal(cm.numpy(), before)


def test_non_integer_predictions_are_refused():
    cm = ConfusionMatrix(3, ignore_label=255)
    gt = np.array([[0, 1]])
    with pytest.raises(LabelRangeError, match="integer class ids.*float"):
        cm.update(np.array([[0.5, 1.0]]), gt, source="p.png")
    with pytest.raises(LabelRangeError, match="bool"):
        cm.update(np.array([[True, False]]), gt)
    assert int(cm.matrix.sum()) == 0
    cm.update(np.array([[0, 1]], np.uint8), gt)
    assert int(cm.matrix.sum()) == 2
