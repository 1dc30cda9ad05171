"""Atomic file writes: the one helper every writer in escnet uses (models, checkpoints, datasets).

A file is written under a temporary name beside its destination and renamed into place, so a
reader (or a crash) sees either the old file or the complete new one, never a partial file.
Temporary names carry TMP_TAG, so a later run can delete what an interrupted one left.
"""
from __future__ import annotations

import itertools
import os
import threading
from pathlib import Path
from typing import Callable

TMP_TAG = ".escnet-tmp-"
_counter = itertools.count()
_lock = threading.Lock()


def _tmp_name(path: Path) -> Path:
    with _lock:
        n = next(_counter)
    return path.with_name(f".{path.name}{TMP_TAG}{os.getpid()}-{n}")


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable where the platform allows it (a no-op elsewhere)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    try:  # Linux: read it without changing it (changing it races with other threads)
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], durable: bool = False,
                 mode: int | None = None) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, then rename it to ``path``.

    durable: also flush the file and the folder to disk (checkpoints), so that a power loss after
    the return cannot lose the file. mode: permissions for the file, less the process umask
    (some writers, e.g. safetensors, create their files 0600). On any error the temporary file is
    removed and the previous ``path`` (if any) is untouched. Returns ``path``."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        write(tmp)
        if mode is not None:
            os.chmod(tmp, mode & ~_umask())
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        fsync_dir(path.parent)
    return path


def remove_stale_tmp(folder: str | os.PathLike) -> int:
    """Delete the temporary files an interrupted run left in ``folder``; returns how many."""
    folder = Path(folder)
    n = 0
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name.startswith(".") and TMP_TAG in p.name:
                p.unlink(missing_ok=True)
                n += 1
    return n
