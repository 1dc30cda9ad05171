"""Progress of long loops: a tqdm bar on a terminal, plain periodic lines elsewhere.

A log file or a CI job gets a line every `every` seconds ("evaluate val: 120/500 img, 2.1 img/s,
about 3 min left") and one at the end, instead of either silence or a bar redrawn with carriage
returns.
"""
from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, Optional, TextIO, TypeVar

from tqdm import tqdm

T = TypeVar("T")
EVERY_SECONDS = 30.0


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _lines(items: Iterable[T], total: Optional[int], desc: str, unit: str, every: float, file: TextIO) -> Iterator[T]:
    start = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= every and (total is None or done < total):
            last = now
            rate = done / max(now - start, 1e-9)
            left = f", about {_duration((total - done) / rate)} left" if total else ""
            of = f"/{total}" if total is not None else ""
            print(f"{desc}: {done}{of} {unit}, {rate:.2f} {unit}/s{left}", file=file, flush=True)
    print(f"{desc}: {done} {unit} done in {_duration(time.monotonic() - start)}", file=file, flush=True)


def progress(items: Iterable[T], desc: str, unit: str = "it", total: Optional[int] = None, disable: bool = False,
             every: float = EVERY_SECONDS, file: Optional[TextIO] = None) -> Iterable[T]:
    """Iterate over items, reporting progress on file (default stderr): a tqdm bar when file is a
    terminal, otherwise a plain line every `every` seconds and a last line when done."""
    file = sys.stderr if file is None else file
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if disable:
        return items
    if file.isatty():
        return tqdm(items, desc=desc, unit=unit, total=total, file=file, dynamic_ncols=True)
    return _lines(items, total, desc, unit, every, file)


def note(message: str, file: Optional[TextIO] = None) -> None:
    """Print a line without breaking a tqdm bar that may be on screen."""
    tqdm.write(message, file=sys.stderr if file is None else file)
