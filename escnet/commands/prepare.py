"""`escnet prepare`: official raw downloads -> detectron2-style benchmark layouts (the converters and
what they write: escnet/data/prepare.py, whose docstring is this command's --help)."""
from __future__ import annotations

import argparse
import json
import os

from escnet.commands.policy import EXIT_FAILED, report_error
from escnet.data import prepare as library


def _run(args: argparse.Namespace) -> int:
    names = library.DOWNLOADS if args.dataset == "all" else [args.dataset]
    failed = 0
    for name in names:
        try:
            summary = library.prepare(name, args.root, args.workers, args.force, args.num_val)
        except library.PrepareError as exc:
            # With "all", one missing download should not stop the others.
            report_error(f"prepare {name}", exc)
            failed += 1
            continue
        print(f"escnet prepare {name}: {json.dumps(summary)}")
    return EXIT_FAILED if failed else 0


def add_command(subparsers) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="convert a benchmark's raw download into the layout `escnet evaluate` reads",
        description=library.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dataset", choices=[*library.CONVERTERS, "all"],
                   help="benchmark to prepare ('voc' makes VOC-20 and VOC-20b)")
    p.add_argument("--root", default=None, help="datasets folder (default: $DETECTRON2_DATASETS or ./datasets)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="worker processes")
    p.add_argument("--force", action="store_true", help="rewrite outputs that already exist")
    p.add_argument("--num-val", type=int, default=None,
                   help="generated benchmarks: scenes in the val split (default 300; the first 300 are always the same)")
    p.set_defaults(func=_run)
