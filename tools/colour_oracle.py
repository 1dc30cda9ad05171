"""What a classifier that sees one pixel's colour can do on a benchmark, measured.

Every pixel's RGB is quantised to `bins` levels per channel; each colour cell predicts the class
most of its pixels have. Two fits:
- `held-out` (2-fold over the scored images: cells counted on the even images predict the odd ones
  and vice versa): what a colour-only per-pixel classifier generalises to, with the unseen classes'
  colours seen in the other half, so it is favoured over any model trained without them;
- `in-sample` (counted on the very images scored): no classifier of the quantised colour scores a
  higher pixel accuracy on them. With fine bins it memorises individual objects' textured colours,
  so it is a bound, not a classifier.
Scores are the benchmark's mIoU, seen / unseen mIoU and hIoU under escnet's metrics.

On the colour benchmark (`synthetic`, classes named by colour) this bound is high: colour decides
the class. On `synthetic-grouping` (classes named by an object's pair of hues, every hue shared by
five classes and the background clutter) it is what a model that reads one pixel at a time cannot
exceed, so a model scoring clearly above it uses more than the pixel's colour.

    python tools/colour_oracle.py --dataset synthetic-grouping [--bins 8 16 32] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def colour_cells(image: np.ndarray, bins: int) -> np.ndarray:
    """image (H, W, 3) uint8 -> (H, W) colour cell index in [0, bins ** 3)."""
    q = (image.astype(np.int64) * bins) >> 8  # 0..bins-1 per channel
    return (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]


def oracle_confusion(pairs, num_classes: int, ignore_label: int, bins: int, fit: str = "held-out") -> np.ndarray:
    """pairs: (image (H, W, 3) uint8, label (H, W)) -> the (T + 1, T + 1) confusion matrix of
    escnet.evaluation.metrics (rows prediction, columns ground truth) of each colour cell's majority
    class, counted in-sample or on the other half of the images (`fit`, see the module docstring);
    a cell the other half never saw predicts the overall majority class."""
    if fit not in ("held-out", "in-sample"):
        raise ValueError(f"fit {fit!r}: choose held-out or in-sample")
    cells, labels, fold = [], [], []
    for i, (image, label) in enumerate(pairs):
        keep = label != ignore_label
        cells.append(colour_cells(image, bins)[keep])
        labels.append(label[keep].astype(np.int64))
        fold.append(np.full(int(keep.sum()), i % 2))
    cells, labels, fold = np.concatenate(cells), np.concatenate(labels), np.concatenate(fold)

    def majority(select: np.ndarray) -> np.ndarray:  # (cells,) the majority class of each colour cell
        counts = np.bincount(cells[select] * num_classes + labels[select], minlength=bins ** 3 * num_classes)
        counts = counts.reshape(bins ** 3, num_classes)
        best = counts.argmax(1)
        return np.where(counts.sum(1) > 0, best, counts.sum(0).argmax())

    if fit == "in-sample":
        pred = majority(np.ones_like(fold, dtype=bool))[cells]
    else:
        pred = np.where(fold == 0, majority(fold == 1)[cells], majority(fold == 0)[cells])
    matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    np.add.at(matrix, (pred, labels), 1)
    return matrix


def run(dataset: str, root: str | None, split: str, bins: list[int]) -> list[dict]:
    from escnet.evaluation.evaluate import group_metrics, load_dataset
    from escnet.evaluation.metrics import compute_metrics

    data, groups = load_dataset(dataset, root, split)
    pairs = [data[i] for i in range(len(data))]
    rows = []
    for fit in ("held-out", "in-sample"):
        for b in bins:
            matrix = oracle_confusion(pairs, data.num_classes, data.ignore_label, b, fit)
            metrics = compute_metrics(matrix, data.class_names)
            row = {"dataset": dataset, "split": split, "images": len(data), "fit": fit, "bins": b,
                   "mIoU": metrics["mIoU"], "pACC": metrics["pACC"]}
            if groups:
                row.update(group_metrics(metrics["per_class"], groups))
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="synthetic-grouping", help="a benchmark name or a dataset folder")
    p.add_argument("--root", default=None, help="datasets root (default $DETECTRON2_DATASETS or ./datasets)")
    p.add_argument("--split", default="val")
    p.add_argument("--bins", type=int, nargs="+", default=[8, 16, 32], help="quantisation levels per channel")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    args = p.parse_args(argv)
    if any(not 1 <= b <= 256 for b in args.bins):
        p.error(f"--bins {args.bins}: each must be 1..256")
    rows = run(args.dataset, args.root, args.split, args.bins)
    for row in rows:
        print(json.dumps(row))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
