"""The evaluator on the two benchmarks whose ignore label is not 255: ADE-847 (uint16 TIFF labels,
ignore 65535) and PC-459 (uint16 TIFF labels, ignore 459 = T). Every other fixture uses 255, so a
hard-coded 255 (or 'ignore = T') would pass them all.

The expected numbers are counted directly from the label and prediction arrays (per-class
intersections and unions over the non-ignored pixels), not through a confusion matrix.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from escnet.data.datasets import LAYOUTS, get_dataset
from escnet.evaluation.evaluate import evaluate


class TableSegmenter:
    """Returns a fixed prediction per image, looked up by the image's first pixel."""

    def __init__(self, table):
        self.table = table

    def segment(self, image, classes):
        return SimpleNamespace(labels=self.table[int(image[0, 0, 0])])


def _write(root, key, labels, preds):
    spec = LAYOUTS[key]
    base = root / spec.root
    image_dir, label_dir = (base / d for d in spec.splits["val"])
    image_dir.mkdir(parents=True)
    label_dir.mkdir(parents=True)
    table = {}
    for i, (lab, pred) in enumerate(zip(labels, preds)):
        marker = 40 * i  # survives JPEG: a flat image
        Image.fromarray(np.full((*lab.shape, 3), marker, np.uint8)).save(image_dir / f"im{i}{spec.image_ext}")
        Image.fromarray(lab.astype(np.uint16)).save(label_dir / f"im{i}{spec.label_ext}")
        table[marker] = pred
    return TableSegmenter(table)


def _direct_miou(labels, preds, ignore, t):
    """mIoU (%) over classes present in the ground truth, counted pixel by pixel."""
    gt = np.concatenate([x.ravel() for x in labels])
    pr = np.concatenate([x.ravel() for x in preds])
    keep = gt != ignore
    gt, pr = gt[keep], pr[keep]
    ious = []
    for c in np.unique(gt):
        inter = np.sum((gt == c) & (pr == c))
        union = np.sum((gt == c) | (pr == c))
        ious.append(inter / union)
    assert all(0 <= c < t for c in np.unique(gt))
    return 100 * float(np.mean(ious)), int(keep.sum()), 100 * float(np.mean(gt == pr))


@pytest.mark.parametrize("key, ignore, t", [("ade847", 65535, 847), ("pc459", 459, 459)])
def test_benchmark_ignore_label_is_ignored(tmp_path, key, ignore, t):
    assert LAYOUTS[key].ignore_label == ignore and LAYOUTS[key].label_dtype == "uint16"
    rng = np.random.default_rng(0)
    classes = np.array([0, 5, 300, t - 1])  # high ids too: a uint8 path would wrap them
    labels, preds = [], []
    for i in range(3):
        lab = classes[rng.integers(0, 4, (12, 10))]
        lab[rng.random(lab.shape) < 0.3] = ignore
        pred = np.where(rng.random(lab.shape) < 0.6, np.where(lab == ignore, classes[1], lab), classes[rng.integers(0, 4, lab.shape)])
        labels.append(lab)
        preds.append(pred.astype(np.int64))
    # the ignored pixels are predicted as a class absent from the ground truth: counting them would
    # add a false positive class and change every number
    preds[0][labels[0] == ignore] = 7
    segmenter = _write(tmp_path, key, labels, preds)

    dataset = get_dataset(key, root=tmp_path)
    assert dataset.ignore_label == ignore and dataset.num_classes == t
    results = evaluate(segmenter, dataset, progress=False)

    miou, labelled, pacc = _direct_miou(labels, preds, ignore, t)
    assert results["labelled_pixels"] == labelled < sum(x.size for x in labels)
    assert results["classes_in_gt"] == 4
    assert results["mIoU"] == pytest.approx(miou, abs=1e-9)
    assert results["pACC"] == pytest.approx(pacc, abs=1e-9)
    assert results["per_class"][7]["gt_pixels"] == 0 and results["per_class"][7]["pred_pixels"] == 0
