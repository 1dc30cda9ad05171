"""Atomic file writes: the one helper every writer in escnet uses (models, checkpoints, datasets).

A file is written under a temporary name beside its destination and renamed into place, so a
reader (or a crash) sees either the old file or the complete new one, never a partial file.

The temporary file lives in a private folder (mode 0700, an unpredictable name created exclusively
by ``tempfile.mkdtemp``) inside the destination folder: nobody else can plant a file or a symlink
where the writer will open it, and the final ``os.replace`` renames onto the destination name
without following a symlink found there. Temporary names carry TMP_TAG, so a later run can delete
what an interrupted one left.

Disk full: whatever a writer raises when the disk fills (an OSError with ENOSPC / EDQUOT, safetensors'
"No space left on device (os error 28)", torch.save's "[enforce fail at inline_container.cc] ... unexpected
pos"), the helper raises `DiskFullError` naming the destination, which the command line prints as
"no space left on device: <path>".
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
import threading
from pathlib import Path
from collections.abc import Callable, Mapping

from escnet.errors import shown_path

TMP_TAG = ".escnet-tmp-"
_FULL_ERRNOS = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
_FULL_TEXT = ("no space left on device", "os error 28", "disk quota exceeded", "os error 122")


class DiskFullError(OSError):
    """The disk (or quota) filled while writing `filename`; errno ENOSPC."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(errno.ENOSPC, "no space left on device", os.fspath(path))


def _disk_full(exc: BaseException, folder: Path) -> bool:
    """Whether a writer's exception means the disk filled: by errno, by message, or (torch.save's
    RuntimeError names neither) by the folder's file system having no space left."""
    if isinstance(exc, DiskFullError):
        return False
    if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
        return True
    if any(text in str(exc).lower() for text in _FULL_TEXT):
        return True
    if isinstance(exc, RuntimeError):
        try:
            return shutil.disk_usage(folder).free < 2**20
        except OSError:
            return False
    return False


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


_lock = threading.Lock()


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
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``.

    durable: also flush the file and the folder to disk (checkpoints), so that a power loss after
    the return cannot lose the file. mode: permissions for the file, less the process umask
    (some writers, e.g. safetensors, create their files 0600). On any error the temporary file is
    removed and the previous ``path`` (if any) is untouched. Returns ``path``."""
    path = Path(path)
    atomic_write_all({path: write}, durable=durable, mode=mode)
    return path


def atomic_write_all(writes: Mapping[str | os.PathLike, Callable[[Path], None]], durable: bool = False,
                     mode: int | None = None) -> None:
    """``atomic_write`` for several files of one folder: every file is written before any is renamed
    into place, so an error leaves none of them changed."""
    paths = [Path(p) for p in writes]
    folders = {p.parent.resolve() for p in paths}
    if len(folders) > 1:
        raise ValueError(f"atomic_write_all: files in more than one folder: {sorted(map(str, folders))}")
    if len({p.name for p in paths}) != len(paths):
        raise ValueError("atomic_write_all: a file name is given twice")
    try:
        private = Path(tempfile.mkdtemp(prefix=f".{paths[0].name}{TMP_TAG}", dir=paths[0].parent))
    except OSError as exc:
        if _disk_full(exc, paths[0].parent):
            raise DiskFullError(paths[0]) from exc
        raise
    try:
        for path, write in zip(paths, writes.values()):
            tmp = private / path.name
            try:
                write(tmp)
            except Exception as exc:
                if _disk_full(exc, private):
                    raise DiskFullError(path) from exc
                raise
            if mode is not None:  # e.g. 0o666: safetensors creates its files 0600
                os.chmod(tmp, mode & ~_umask())
            if durable:
                fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        for path in paths:
            os.replace(private / path.name, path)
    except OSError as exc:
        if _disk_full(exc, private):
            raise DiskFullError(paths[0]) from exc
        raise
    finally:
        remove_tmp(private)
    if durable:
        fsync_dir(paths[0].parent)


def check_out_folder(path: str | os.PathLike, what: str = "--out") -> None:
    """Refuse an output folder that cannot be made or written, before any work: the path (or the nearest
    existing part of it) is a file, or the folder is not writable. Raises NotADirectoryError / PermissionError
    with a message naming the path."""
    path = Path(path)
    existing = next((p for p in (path, *path.parents) if p.exists() or p.is_symlink()), Path("."))
    shown = shown_path(path)
    if not existing.is_dir():
        where = "" if existing == path else f" ({existing} is a file)"
        raise NotADirectoryError(f"{what} {shown}: not a folder{where}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} {shown}: {existing} is not writable")


SECRET_NAME = ".escnet-secret"


def local_secret(folder: str | os.PathLike) -> bytes | None:
    """This user's random 32-byte secret for sealing cache files in `folder` (``.escnet-secret``, mode 0600,
    created exclusively on first use). A cache file sealed with it (an HMAC) was written by escnet for this
    user; a file planted or copied there fails the check. None when the secret cannot be made or is not a
    private regular file of this user (the cache is then not trusted)."""
    import secrets
    import stat

    path = Path(folder) / SECRET_NAME
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            private = stat.S_ISREG(info.st_mode) and not info.st_mode & 0o077
            if not private or (hasattr(os, "getuid") and info.st_uid != os.getuid()):
                return None
            secret = f.read(64)
    except OSError:
        return None
    return secret if len(secret) == 32 else None


def remove_tmp(path: str | os.PathLike) -> None:
    """Delete a temporary file or private temporary folder (a symlink itself, never what it points to)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale_tmp(folder: str | os.PathLike) -> int:
    """Delete the temporary files and folders an interrupted run left in ``folder``; returns how many."""
    folder = Path(folder)
    n = 0
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name.startswith(".") and TMP_TAG in p.name:
                remove_tmp(p)
                n += 1
    return n
