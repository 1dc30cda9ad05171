"""The package's error base class and how the command line prints an error.

Every error a user can cause (a bad file, value, dataset or model) derives from ``EscnetError``;
``escnet.cli.main`` prints any error as one line and exits non-zero, with the traceback only under
``--debug`` or ``ESCNET_DEBUG=1``.
"""
from __future__ import annotations

import errno
import re

# C0 / C1 control characters (ESC starts terminal escape sequences), except tab; DEL
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-_])")


class EscnetError(Exception):
    """An error a user can cause; its message names the problem (the CLI prints it as one line)."""


class CommandError(EscnetError):
    """A command's error with its context ("cannot use model: ..."), raised ``from`` the cause: escnet.cli.main
    prints it as one line with exit status 1, and ``--debug`` shows the traceback of the cause too."""


class DemonstrationModelWarning(UserWarning):
    """Issued when ``Segmenter.from_pretrained()`` is given no model and falls back to the bundled demonstration
    model, which knows only escnet's synthetic scenes (the CLI and the demo print their own notice instead)."""


def sanitize(text: str) -> str:
    """`text` safe to print to a terminal: escape sequences and other control characters removed (newlines kept)."""
    lines = _ANSI.sub("", str(text)).split("\n")
    return "\n".join(_CONTROL.sub("", line) for line in lines)


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def shown_path(path) -> str:
    """A file name as escnet prints it: control characters (ESC, BEL, newline, ...) written as escapes
    (\\x1b, \\n), so a name can neither drive the terminal nor fake a line, and the file can still be found."""
    return _UNPRINTABLE.sub(lambda m: _ESCAPES.get(m.group(), f"\\x{ord(m.group()):02x}"), str(path))


def one_line(exc: BaseException) -> str:
    """The message of `exc` on one sanitized line (multi-line messages joined with '; ')."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        where = f": {exc.filename}" if exc.filename else ""
        text = f"no space left on device{where}"
    elif isinstance(exc, (EscnetError, OSError, ImportError, ValueError)) and str(exc):
        text = str(exc)  # these messages say what is wrong; a KeyError's or RuntimeError's needs its type
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    parts = [p.strip() for p in sanitize(text).split("\n") if p.strip()]
    return "; ".join(parts)
