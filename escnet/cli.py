"""`escnet` command line: a thin shell; each sub-command lives beside the code it drives.

Every module listed in `_COMMANDS` defines ``add_command(subparsers)``, which registers its parser
and sets ``func`` to a callable taking the parsed namespace and returning an exit code.
"""
from __future__ import annotations

import argparse
import importlib
import sys

_COMMANDS = [
    "escnet.data.prepare",
    "escnet.engine.evaluate",
    "escnet.engine.train",
    "escnet.engine.pretrain_sam",
    "escnet.engine.segment",
    "escnet.engine.info",
    "escnet.engine.benchmark",
    "escnet.engine.convert",
    "escnet.engine.catalog",
    "escnet.engine.export",
    "escnet.demo",
]


def build_parser() -> argparse.ArgumentParser:
    from escnet import __version__

    parser = argparse.ArgumentParser(prog="escnet", description="ESC-Net / CAT-Seg open-vocabulary semantic segmentation")
    parser.add_argument("--version", action="version", version=f"escnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMANDS:
        importlib.import_module(name).add_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
