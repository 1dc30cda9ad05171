"""Semantic-segmentation metrics from one confusion matrix over a whole evaluation set.

The matrix has detectron2's ``SemSegEvaluator`` layout, so a saved ``confusion_matrix.npy`` can be
compared with detectron2's ``_conf_matrix`` directly: shape (T + 1, T + 1), int64,
``matrix[p, g]`` = number of pixels predicted as class p whose ground truth is class g; the extra
last column collects pixels whose ground truth is the ignore label (the predictions there are kept
for completeness but never enter a metric), and the last row stays zero because a prediction is
always one of the T classes.

Two mIoU formulas are in use for the same matrix and they differ when a class is predicted
somewhere but absent from the whole ground truth (PC-459 moves by about 4 points):

- ``mIoU`` (detectron2 main, our default): the mean IoU over classes present in the ground truth.
- ``mIoU_v0.6`` (detectron2 v0.6 and mmsegmentation): the same sum of IoUs divided by the number of
  classes present in the ground truth *or* the prediction, i.e. a predicted-but-absent class counts
  as IoU 0.

fwIoU, mACC and pACC are the same in both versions. All numbers are percentages.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from escnet.errors import EscnetError


class LabelRangeError(EscnetError, ValueError):
    """A label or prediction value outside [0, T) that is not the ignore label."""


class ConfusionMatrix:
    """Accumulates the (T + 1, T + 1) int64 confusion matrix (layout: module docstring).

    Args:
        num_classes: T, the number of evaluated classes.
        ignore_label: ground-truth value that marks unlabelled pixels (255, 65535, or T for PC-459).
    """

    def __init__(self, num_classes: int, ignore_label: int):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.matrix = torch.zeros(num_classes + 1, num_classes + 1, dtype=torch.int64)

    def update(self, pred, gt, source: str = "image") -> None:
        """Add one image.

        Args:
            pred: (H, W) integer predictions in [0, T) (numpy array or tensor).
            gt: (H, W) integer ground truth in [0, T) or ``ignore_label``.
            source: what to name in an error message (e.g. the label file).
        """
        pred_t = torch.as_tensor(np.asarray(pred) if not torch.is_tensor(pred) else pred)
        gt_t = torch.as_tensor(np.asarray(gt) if not torch.is_tensor(gt) else gt)
        for what, values in (("predictions", pred_t), ("labels", gt_t)):
            # a float or bool map is a mistake (probabilities, a mask): truncating 0.5 to 0 would hide it
            if values.dtype == torch.bool or values.is_floating_point() or values.is_complex():
                raise LabelRangeError(f"{source}: {what} must be integer class ids, got dtype {values.dtype}")
        pred_t, gt_t = pred_t.to(torch.int64), gt_t.to(torch.int64)
        if pred_t.shape != gt_t.shape:
            raise ValueError(
                f"{source}: prediction shape {tuple(pred_t.shape)} differs from label shape {tuple(gt_t.shape)}"
            )
        t = self.num_classes
        ignored = gt_t == self.ignore_label
        bad_gt = ~ignored & ((gt_t < 0) | (gt_t >= t))
        if bool(bad_gt.any()):
            values = torch.unique(gt_t[bad_gt])[:10].tolist()
            raise LabelRangeError(
                f"{source}: label values {values} are outside the class range 0..{t - 1} "
                f"and are not the ignore label {self.ignore_label}"
            )
        if pred_t.numel() and (int(pred_t.min()) < 0 or int(pred_t.max()) >= t):
            raise LabelRangeError(
                f"{source}: predicted class ids must be in 0..{t - 1}, got {int(pred_t.min())}..{int(pred_t.max())}"
            )
        gt_t = torch.where(ignored, torch.full_like(gt_t, t), gt_t)
        counts = torch.bincount(((t + 1) * pred_t + gt_t).reshape(-1), minlength=(t + 1) ** 2)
        self.matrix += counts.reshape(t + 1, t + 1)

    def all_reduce(self) -> None:
        """Sum the matrix over all processes of the default torch.distributed group (no-op otherwise)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            backend = torch.distributed.get_backend()
            device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
            buf = self.matrix.to(device)
            torch.distributed.all_reduce(buf, op=torch.distributed.ReduceOp.SUM)
            self.matrix = buf.cpu()

    def numpy(self) -> np.ndarray:
        return self.matrix.numpy().copy()


def _pct(x: float) -> float | None:
    """Percentage, or None where the value is undefined (JSON has no NaN)."""
    return None if x is None or math.isnan(x) else 100.0 * float(x)


def compute_metrics(matrix: np.ndarray, class_names: list[str] | None = None) -> dict:
    """All metrics of a (T + 1, T + 1) confusion matrix in the layout of this module.

    Returns a JSON-ready dict: ``mIoU`` (detectron2 main), ``mIoU_v0.6`` (detectron2 v0.6 /
    mmseg), ``fwIoU``, ``mACC``, ``pACC`` and ``per_class`` (one entry per class with IoU, ACC,
    ground-truth and predicted pixel counts; IoU/ACC are None for a class absent from the ground
    truth, as detectron2 reports NaN there). Undefined aggregates (no labelled pixel) are None.
    """
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 2:
        raise ValueError(f"confusion matrix must be (T + 1, T + 1) with T >= 1, got shape {matrix.shape}")
    t = matrix.shape[0] - 1
    if class_names is not None and len(class_names) != t:
        raise ValueError(f"{len(class_names)} class names for a matrix of {t} classes")
    m = matrix[:t, :t].astype(np.float64)
    tp = np.diagonal(m)
    pos_gt = m.sum(axis=0)
    pos_pred = m.sum(axis=1)
    union = pos_gt + pos_pred - tp
    in_gt = pos_gt > 0
    in_gt_or_pred = (pos_gt + pos_pred) > 0

    acc = np.full(t, np.nan)
    iou = np.full(t, np.nan)
    acc[in_gt] = tp[in_gt] / pos_gt[in_gt]
    iou[in_gt] = tp[in_gt] / union[in_gt]
    total_gt = pos_gt.sum()

    with np.errstate(invalid="ignore", divide="ignore"):
        miou_main = iou[in_gt].sum() / in_gt.sum() if in_gt.any() else np.nan
        miou_v06 = iou[in_gt].sum() / in_gt_or_pred.sum() if in_gt_or_pred.any() and in_gt.any() else np.nan
        macc = acc[in_gt].sum() / in_gt.sum() if in_gt.any() else np.nan
        fwiou = (iou[in_gt] * pos_gt[in_gt] / total_gt).sum() if total_gt > 0 else np.nan
        pacc = tp.sum() / total_gt if total_gt > 0 else np.nan

    names = class_names if class_names is not None else [str(i) for i in range(t)]
    per_class = [
        {
            "class": names[i],
            "IoU": _pct(iou[i]),
            "ACC": _pct(acc[i]),
            "gt_pixels": int(matrix[:t, i].sum()),
            "pred_pixels": int(matrix[i, :t].sum()),
        }
        for i in range(t)
    ]
    return {
        "mIoU": _pct(miou_main),
        "mIoU_v0.6": _pct(miou_v06),
        "fwIoU": _pct(fwiou),
        "mACC": _pct(macc),
        "pACC": _pct(pacc),
        "num_classes": t,
        "classes_in_gt": int(in_gt.sum()),
        "classes_predicted_not_in_gt": int((in_gt_or_pred & ~in_gt).sum()),
        "labelled_pixels": int(total_gt),
        "per_class": per_class,
    }


def format_table(metrics: dict) -> str:
    """Human-readable per-class IoU/ACC table followed by the aggregate numbers."""

    def cell(v):
        return "   n/a" if v is None else f"{v:6.2f}"

    rows = metrics["per_class"]
    width = max(12, max(len(r["class"]) for r in rows))
    width = min(width, 40)
    lines = [f"{'class':<{width}}    IoU    ACC"]
    for r in rows:
        name = r["class"] if len(r["class"]) <= width else r["class"][: width - 1] + "~"
        lines.append(f"{name:<{width}} {cell(r['IoU'])} {cell(r['ACC'])}")
    lines.append("")
    for key in ("mIoU", "mIoU_v0.6", "fwIoU", "mACC", "pACC"):
        lines.append(f"{key:<10} {cell(metrics[key])}")
    lines.append(
        f"(mIoU: detectron2 main, over the {metrics['classes_in_gt']} classes present in the ground truth; "
        f"mIoU_v0.6: detectron2 v0.6 / mmseg, also counting {metrics['classes_predicted_not_in_gt']} "
        "predicted-but-absent classes as 0)"
    )
    return "\n".join(lines)
