"""`escnet evaluate`: mIoU of a model on a benchmark or a user folder (what is computed and how:
escnet/evaluation/evaluate.py, whose docstring is this command's --help)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from escnet.commands.arguments import add_inference_options, add_runtime_options, segmenter_options
from escnet.commands.policy import fail, load_segmenter, model_errors
from escnet.data.datasets import GENERATED, DatasetError
from escnet.data.vocab import VocabularyError, known_benchmarks
from escnet.evaluation import evaluate as library
from escnet.evaluation.evaluate import CLASS_MODE_NOTES, RESIZE_NOTES, EvaluationError, evaluate, load_dataset
from escnet.inference.options import TEXT_CACHE_HELP, TOP_K
from escnet.runtime import set_threads, setup_runtime


def _run(args: argparse.Namespace) -> int:
    # imported here, not at the top: they load torch, which building the parser (`escnet --help`) must not
    from escnet.evaluation.metrics import format_table
    from escnet.inference.ppg_metrics import format_ppg

    rt = setup_runtime(args.device)
    rank = rt.rank
    try:
        dataset, groups = load_dataset(args.dataset, args.root, args.split, args.classes, args.ignore_label)
        set_threads(args.threads)
        segmenter = load_segmenter(args.model, notice=rank == 0, device=rt.device,
                                   **segmenter_options(args))
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
    except (DatasetError, VocabularyError, EvaluationError, *model_errors()[:2]) as exc:
        fail(exc)
    finally:
        rt.close()
    if rank == 0:
        print(format_table(results))
        for name, value in results.get("groups", {}).items():
            print(f"{name}: {'-' if value is None else f'{value:.2f}'}")
        for line in format_ppg(results.get("ppg", [])):  # ESC-Net: what its pseudo prompt generator did
            print(line)
        print(f"images: {results['num_images']}  results: {Path(output) / 'results.json'}  "
              f"matrix: {Path(output) / 'confusion_matrix.npy'}")
    return 0


def add_command(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="mIoU (both formulas), fwIoU, mACC, pACC of a model on a benchmark or folder",
        description=library.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True,
                   help="model folder in escnet's format (config.json + model.safetensors) or a CAT-Seg .pth checkpoint")
    p.add_argument("--dataset", required=True,
                   help=f"{known_benchmarks()}, {', '.join(GENERATED)} (seen / unseen mIoU too), "
                        "or a folder with images/, labels/, classes.txt")
    add_inference_options(p, text_cache=False)
    p.add_argument("--split", default="val", help="benchmark split (coco-stuff also has 'train')")
    p.add_argument("--root", default=None, help="datasets folder (default: $DETECTRON2_DATASETS or ./datasets)")
    p.add_argument("--classes", default=None, help="class file of a custom dataset (default: <folder>/classes.txt)")
    p.add_argument("--ignore-label", type=int, default=255, help="ignore value of a custom dataset's labels")
    p.add_argument("--output", default=None,
                   help="folder for results.json and confusion_matrix.npy (default: eval/<--dataset's last path "
                        "part>, e.g. eval/ade150, eval/synthetic)")
    add_runtime_options(p)
    p.add_argument("--no-text-cache", action="store_true", help=TEXT_CACHE_HELP)
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.set_defaults(func=_run)
