"""The commands' one error and exit policy.

A command that cannot go on calls `fail(problem)` (or lets an EscnetError / OSError / ValueError
escape); `escnet.cli.main` is the one place that turns it into a message and a status:

- 0: done.
- 1 (EXIT_FAILED): an error, printed as one line ``escnet: error: ...``; with ``--debug`` (or
  ESCNET_DEBUG=1) the traceback instead, the cause's included. Also a run in which some inputs
  failed (after its summary).
- 2: argparse's status for a command line it cannot parse (unknown option, missing argument).
- 130 (EXIT_INTERRUPTED): Ctrl+C.

Torch-free: the commands import this module when the parser is built.
"""
from __future__ import annotations

import sys
from typing import NoReturn

from escnet.errors import CommandError, one_line

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def fail(problem) -> NoReturn:
    """End the command: raise CommandError with `problem` (a message, or an exception written as one
    line and kept as the cause, so --debug shows where it came from)."""
    if isinstance(problem, BaseException):
        raise CommandError(one_line(problem)) from problem
    raise CommandError(str(problem))


def report_error(command: str, problem) -> None:
    """Print ``escnet COMMAND: error: PROBLEM`` on stderr for a failure the command survives (one of
    several datasets or images); the command then ends with EXIT_FAILED after its summary."""
    text = one_line(problem) if isinstance(problem, BaseException) else str(problem)
    print(f"escnet {command}: error: {text}", file=sys.stderr)


def model_errors() -> tuple[type[BaseException], ...]:
    """The errors that mean "this model cannot be used" (a missing or malformed checkpoint, weights
    that do not fit, a value the model refuses)."""
    from escnet.weights.common import WeightsError

    return FileNotFoundError, WeightsError, ValueError, OSError


def load_segmenter(model, *, notice: bool = True, **options):
    """`Segmenter.from_pretrained(model, **options)` for a command; a model that cannot be used ends
    the command with ``cannot use model: ...`` (CommandError, status 1).
    notice: print the model's notice (e.g. "demonstration only") on stderr."""
    from escnet.inference.segmenter import Segmenter, model_notice

    try:
        segmenter = Segmenter.from_pretrained(model, **options)
    except model_errors() as exc:
        raise CommandError(f"cannot use model: {one_line(exc)}") from exc
    if notice and model_notice(segmenter):
        print(model_notice(segmenter), file=sys.stderr)
    return segmenter
