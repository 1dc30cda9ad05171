"""`escnet` command line: a thin shell; each sub-command is one module of escnet/commands/.

Every module in `COMMANDS` defines ``add_command(subparsers)``, which registers its parser and
sets ``func`` to a callable taking the parsed namespace and returning an exit code. Building the
parser (`escnet --help`, `escnet COMMAND --help`, `escnet --version`) does not load torch: a command
module imports what needs torch inside the function that runs the command, and where that code
needs torch at import (training, benchmarking, exporting) that code lives in its own room
(escnet/commands/train.py drives escnet/training/loop.py). The shared argument groups are
escnet/commands/arguments.py, the error and exit policy escnet/commands/policy.py.

An error ends the command with one line on stderr and exit status 1 (130 when interrupted); the
traceback is shown only with ``--debug`` (before or after the command name) or ``ESCNET_DEBUG=1``.
"""
from __future__ import annotations

import argparse
import os
import sys

from escnet.commands import (benchmark, convert, demo, evaluate, explain, export, info, models, prepare, pretrain_sam,
                             push, segment, train)
from escnet.commands.policy import EXIT_FAILED, EXIT_INTERRUPTED
from escnet.errors import one_line

COMMANDS = (prepare, evaluate, train, pretrain_sam, segment, explain, info, benchmark, convert, models, push, export,
            demo)


def build_parser() -> argparse.ArgumentParser:
    from escnet import __version__

    parser = argparse.ArgumentParser(prog="escnet", description="ESC-Net / CAT-Seg open-vocabulary semantic segmentation")
    parser.add_argument("--version", action="version", version=f"escnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_command(sub)
    debug_help = "show the traceback of an error (also ESCNET_DEBUG=1)"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    for command in sub.choices.values():
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    debug = args.debug or os.environ.get("ESCNET_DEBUG", "") not in ("", "0")
    import warnings

    from escnet.errors import DemonstrationModelWarning

    warnings.simplefilter("ignore", DemonstrationModelWarning)  # the commands print their own one-line notice
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print("escnet: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the one place errors become a message and an exit status
        if debug:
            raise
        print(f"escnet: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
