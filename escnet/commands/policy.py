"""The commands' one error and exit policy.

Exit statuses (escnet.cli.main applies the first and last to whatever a command raises):

- 0: done.
- 1 (EXIT_FAILED): an error, one line ``escnet: error: ...`` (an exception a command raises) or
  ``escnet COMMAND: error: ...`` (one it reports itself); also a run in which some inputs failed.
- 2 (EXIT_CANNOT_START): the command refused to start: a vocabulary, model, device or option value
  it cannot use, or an optional dependency that is missing (also argparse's status for a bad
  command line). The commands that return it today (segment, export, demo, models, push,
  benchmark, pretrain-sam) keep it: their tests pin it.
- 130 (EXIT_INTERRUPTED): Ctrl+C.

Torch-free: the commands import this module when the parser is built.
"""
from __future__ import annotations

import sys

from escnet.errors import one_line

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CANNOT_START = 2
EXIT_INTERRUPTED = 130


def fail(command: str, problem, code: int = EXIT_FAILED) -> int:
    """Print ``escnet COMMAND: error: PROBLEM`` (an exception as one line) on stderr; return `code`."""
    text = one_line(problem) if isinstance(problem, BaseException) else str(problem)
    print(f"escnet {command}: error: {text}", file=sys.stderr)
    return code


class CommandFailed(Exception):
    """A command that has reported its error (`fail`) and ends with `code`."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def model_errors() -> tuple[type[BaseException], ...]:
    """The errors that mean "this model cannot be used" (a missing or malformed checkpoint, weights
    that do not fit, a value the model refuses)."""
    from escnet.weights.common import WeightsError

    return FileNotFoundError, WeightsError, ValueError, OSError


def load_segmenter(command: str, model, *, code: int = EXIT_CANNOT_START, notice: bool = True, **options):
    """`Segmenter.from_pretrained(model, **options)` for a command; a model that cannot be used is
    reported as ``escnet COMMAND: error: cannot use model: ...`` and raises CommandFailed(code).
    notice: print the model's notice (e.g. "demonstration only") on stderr."""
    from escnet.inference.segmenter import Segmenter, model_notice

    try:
        segmenter = Segmenter.from_pretrained(model, **options)
    except model_errors() as exc:
        fail(command, f"cannot use model: {one_line(exc)}")
        raise CommandFailed(code) from None
    if notice and model_notice(segmenter):
        print(model_notice(segmenter), file=sys.stderr)
    return segmenter
