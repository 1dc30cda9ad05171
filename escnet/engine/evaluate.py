"""`escnet evaluate`: mIoU of a model on a benchmark or a user folder, the paper's Table 1 protocol.

One confusion matrix is accumulated over the whole set (escnet.engine.metrics) and every number is
computed from it: mIoU under both formulas in use (detectron2 main: the default; detectron2 v0.6 /
mmseg), fwIoU, mACC, pACC and a per-class table. ``results.json`` and ``confusion_matrix.npy`` are
written so the numbers can be recomputed (`escnet.engine.metrics.compute_metrics`).

Images go through CAT-Seg's official evaluation protocol (escnet/engine/protocol.py) unless
``--resize antialias`` is given; results.json records the protocol, the resize mode and the class
mode. For more than 256 classes ``--class-mode top256`` (CAT-Seg's truncation) is the mode that
reproduces CAT-Seg's published ADE-847 / PC-459 numbers; the default ``exact`` scores every class.

Under ``torchrun`` each process takes every world-size-th image (rank::world), the matrices are
summed with all_reduce (gloo on CPU, nccl on CUDA) and rank 0 writes the outputs; the numbers are
identical to a single-process run because the matrix is a sum of per-image counts.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from escnet.data.datasets import GENERATED, DatasetError, SegDataset, get_dataset, load_custom_dataset
from escnet.data.vocab import VocabularyError, known_benchmarks
from escnet.engine.options import CLASS_MODES, PROTOCOLS, RESIZE_MODES, TEXT_CACHE_HELP, TOP_K
from escnet.errors import EscnetError, one_line
from escnet.fileio import atomic_write_all
from escnet.progress import progress as progress_of
from escnet.runtime import DEVICES, THREADS_HELP, set_threads, setup_runtime

# results.json says which large-vocabulary mode ran and what it reproduces
CLASS_MODE_NOTES = {
    "exact": "every class scored (exact all-class inference); CAT-Seg's published ADE-847 / PC-459 "
             "numbers used top256 instead",
    "top256": "CAT-Seg's truncation: per view only the 256 classes with the highest CLIP score are "
              "aggregated, the rest get logit -100; reproduces CAT-Seg's published ADE-847 / PC-459 numbers",
}
RESIZE_NOTES = {
    "official": "CAT-Seg's official evaluation protocol (escnet/engine/protocol.py)",
    "antialias": "CAT-Seg's protocol with antialiased model-side image downscales (not the official numbers)",
}

MATRIX_LAYOUT = (
    "(T+1, T+1) int64; [p, g] = pixels predicted as class p with ground truth g; "
    "last column = pixels whose ground truth is the ignore label (not used by any metric)"
)


class EvaluationError(EscnetError, RuntimeError):
    """A prediction that cannot be scored (wrong shape or class range); names the image."""


def _rank_world() -> tuple[int, int]:
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def evaluate(
    segmenter,
    dataset: SegDataset,
    output_dir: str | os.PathLike | None = None,
    *,
    limit: int | None = None,
    progress: bool = True,
    meta: dict | None = None,
    groups: dict[str, list[int]] | None = None,
) -> dict:
    """Run ``segmenter`` over ``dataset`` and score it.

    Args:
        segmenter: anything with ``segment(image (H, W, 3) uint8, classes: list[str])`` returning
            an object with ``labels`` (H, W) integer class indices into ``classes`` (or that array).
        dataset: a `SegDataset` (benchmark or custom folder).
        output_dir: where rank 0 writes ``results.json`` and ``confusion_matrix.npy`` (None: nowhere).
        limit: score only the first ``limit`` images (quick checks; recorded in the results).
        progress: show a progress bar on rank 0.
        meta: extra fields for results.json (model path, protocol, ...).

    Returns the results dict (the same on every rank): `compute_metrics` fields plus run info.
    """
    from escnet.engine.metrics import ConfusionMatrix, LabelRangeError, compute_metrics

    rank, world = _rank_world()
    n = len(dataset) if limit is None else min(limit, len(dataset))
    indices = range(rank, n, world)
    classes = dataset.prompt_classes
    cm = ConfusionMatrix(dataset.num_classes, dataset.ignore_label)
    # A bar on a terminal, plain lines in a log; other ranks stay quiet.
    bar = progress_of(indices, desc=f"evaluate {Path(dataset.name).name}", unit="img",
                      disable=(not progress) or rank != 0)
    start = time.perf_counter()
    for i in bar:
        image_path, label_path = dataset.items[i]
        image, gt = dataset[i]
        result = segmenter.segment(image, classes)
        pred = np.asarray(getattr(result, "labels", result))
        if pred.shape != gt.shape:
            raise EvaluationError(
                f"prediction for {image_path} has shape {pred.shape}, its label {label_path} has {gt.shape}"
            )
        if not np.issubdtype(pred.dtype, np.integer):
            raise EvaluationError(f"prediction for {image_path} has dtype {pred.dtype}; expected integer class indices")
        if pred.size and (pred.min() < 0 or pred.max() >= len(classes)):
            raise EvaluationError(
                f"prediction for {image_path} has class ids {pred.min()}..{pred.max()}, outside 0..{len(classes) - 1}"
            )
        if dataset.background_index is not None:
            # VOC-20b: every class past the 20 VOC classes stands for the background.
            pred = np.minimum(pred, dataset.background_index)
        try:
            cm.update(pred, gt, source=str(label_path))
        except LabelRangeError as exc:
            raise DatasetError(str(exc)) from None
    seconds = time.perf_counter() - start
    cm.all_reduce()
    matrix = cm.numpy()
    results = {
        "dataset": dataset.name,
        "num_images": n,
        "limit": limit,
        "world_size": world,
        **(meta or {}),
        **compute_metrics(matrix, dataset.class_names),
        "confusion_matrix_layout": MATRIX_LAYOUT,
        "seconds_rank0": round(seconds, 3),
    }
    if groups:
        results["groups"] = group_metrics(results["per_class"], groups)
    if output_dir is not None and rank == 0:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        text = json.dumps(results, indent=1)
        atomic_write_all({out / "confusion_matrix.npy": lambda tmp: np.save(tmp, matrix),  # tmp ends in .npy
                          out / "results.json": lambda tmp: tmp.write_text(text)})
    return results


def group_metrics(per_class: list[dict], groups: dict[str, list[int]]) -> dict:
    """Mean IoU (percent) per class group, e.g. {"seen": ids, "unseen": ids} ->
    {"seen_mIoU": ..., "unseen_mIoU": ..., "hIoU": harmonic mean of the two}; a group none of whose
    classes occurs in the ground truth gets None."""
    out: dict = {}
    for name, ids in groups.items():
        values = [per_class[i]["IoU"] for i in ids if per_class[i]["IoU"] is not None]
        out[f"{name}_mIoU"] = float(np.mean(values)) if values else None
    seen, unseen = out.get("seen_mIoU"), out.get("unseen_mIoU")
    if seen and unseen:
        out["hIoU"] = 2 * seen * unseen / (seen + unseen)
    return out


# ---------------------------------------------------------------------------------------------
# CLI


def load_dataset(spec: str, root: str | None = None, split: str = "val", classes: str | None = None,
                 ignore_label: int = 255) -> tuple[SegDataset, dict[str, list[int]] | None]:
    """A benchmark name (escnet.data.vocab.BENCHMARKS), "synthetic" / "synthetic-grouping" (escnet's
    generated benchmarks, with their seen / unseen class groups) or a custom dataset folder -> (dataset, class groups or None)."""
    if Path(spec).is_dir():
        return load_custom_dataset(spec, class_file=classes, ignore_label=ignore_label), None
    from escnet.data.train_dataset import resolve_dataset

    if spec in GENERATED:
        info = resolve_dataset(spec, root, split)
        return info.dataset, info.groups
    return get_dataset(spec, root, split), None


def _run(args: argparse.Namespace) -> int:
    # imported here, not at the top: they load torch, which building the parser (`escnet --help`) must not
    from escnet.engine.inference import Segmenter, model_notice
    from escnet.engine.metrics import format_table
    from escnet.weights.common import WeightsError

    rt = setup_runtime(args.device)
    rank = rt.rank
    try:
        dataset, groups = load_dataset(args.dataset, args.root, args.split, args.classes, args.ignore_label)
        set_threads(args.threads)
        segmenter = Segmenter.from_pretrained(args.model, device=rt.device, protocol=args.protocol,
                                              class_mode=args.class_mode, resize=args.resize,
                                              text_cache=False if args.no_text_cache else None)
        if rank == 0 and model_notice(segmenter):
            print(model_notice(segmenter), file=sys.stderr)
        output = args.output or str(Path("eval") / (Path(args.dataset).name or "dataset"))
        truncated = args.class_mode == "top256" and len(dataset.prompt_classes) > TOP_K
        meta = {"model": str(args.model), "protocol": args.protocol, "resize": args.resize,
                "resize_note": RESIZE_NOTES[args.resize], "class_mode": args.class_mode,
                "class_mode_note": CLASS_MODE_NOTES[args.class_mode], "classes_truncated": truncated,
                "split": args.split}
        if rank == 0 and args.class_mode == "exact" and len(dataset.prompt_classes) > TOP_K \
                and hasattr(segmenter.model.cfg, "class_truncation"):
            print(f"escnet evaluate: note: {len(dataset.prompt_classes)} classes scored exactly; CAT-Seg's published "
                  f"numbers for this many classes use --class-mode top256", file=sys.stderr)
        results = evaluate(segmenter, dataset, output, limit=args.limit, meta=meta, groups=groups)
    except (DatasetError, VocabularyError, EvaluationError, FileNotFoundError, WeightsError) as exc:
        print(f"escnet evaluate: error: {one_line(exc)}", file=sys.stderr)
        return 1
    finally:
        rt.close()
    if rank == 0:
        print(format_table(results))
        for name, value in results.get("groups", {}).items():
            print(f"{name}: {'-' if value is None else f'{value:.2f}'}")
        print(f"images: {results['num_images']}  results: {Path(output) / 'results.json'}  "
              f"matrix: {Path(output) / 'confusion_matrix.npy'}")
    return 0


def add_command(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="mIoU (both formulas), fwIoU, mACC, pACC of a model on a benchmark or folder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True,
                   help="model folder in escnet's format (config.json + model.safetensors) or a CAT-Seg .pth checkpoint")
    p.add_argument("--dataset", required=True,
                   help=f"{known_benchmarks()}, {', '.join(GENERATED)} (seen / unseen mIoU too), "
                        "or a folder with images/, labels/, classes.txt")
    p.add_argument("--protocol", choices=PROTOCOLS, default="sliding",
                   help="sliding: CAT-Seg's 640 resize, 384 crops + global view (paper); single: one 384 view")
    p.add_argument("--resize", choices=RESIZE_MODES, default="official",
                   help="official: CAT-Seg's evaluation protocol exactly (default); antialias: antialiased "
                        "model-side image downscales")
    p.add_argument("--class-mode", choices=CLASS_MODES, default="exact",
                   help="exact: score every class (bounded memory); top256: CAT-Seg's truncation for "
                        "large vocabularies, the mode that reproduces its published ADE-847 / PC-459 "
                        "numbers; needs a CAT-Seg model")
    p.add_argument("--split", default="val", help="benchmark split (coco-stuff also has 'train')")
    p.add_argument("--root", default=None, help="datasets folder (default: $DETECTRON2_DATASETS or ./datasets)")
    p.add_argument("--classes", default=None, help="class file of a custom dataset (default: <folder>/classes.txt)")
    p.add_argument("--ignore-label", type=int, default=255, help="ignore value of a custom dataset's labels")
    p.add_argument("--output", default=None,
                   help="folder for results.json and confusion_matrix.npy (default: eval/<--dataset's last path "
                        "part>, e.g. eval/ade150, eval/synthetic)")
    p.add_argument("--device", choices=DEVICES, default="auto", help="default: cuda if available, else mps, else cpu")
    p.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    p.add_argument("--no-text-cache", action="store_true", help=TEXT_CACHE_HELP)
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.set_defaults(func=_run)
