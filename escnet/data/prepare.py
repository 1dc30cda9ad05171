"""`escnet prepare`: official raw downloads -> detectron2-style benchmark layouts.

Each benchmark's converter (``prepare_ade.py``, ``prepare_coco.py``, ``prepare_pascal.py``) reads
the raw download in its real folder names and formats under ``$DETECTRON2_DATASETS`` (default
``./datasets``) and writes the label files that `escnet.data.datasets` reads, with the label
conversions of the standard open-vocabulary benchmarks (CAT-Seg's ``datasets/prepare_*.py``,
MaskFormer's ``prepare_ade20k_full_sem_seg.py``).

Safety of re-runs: every output file is written under a temporary name and renamed into place, so
a file that exists under its final name is complete; an interrupted run leaves only temporary
files, which the next run deletes. Files that exist are skipped (``--force`` rewrites them), and a
marker ``.escnet-prepared.json`` is written into an output folder last, after all its files; a
folder with a marker is skipped as a whole. While a folder is being written it holds
``.escnet-preparing.json``; train and evaluate refuse a folder that has it (an interrupted run),
naming the folder. Worker processes end with the command: they exit if their parent dies.
"""
from __future__ import annotations

import importlib
import json
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image, UnidentifiedImageError

from escnet.data.datasets import PREPARING, datasets_root
from escnet.fileio import atomic_write, remove_stale_tmp  # noqa: F401 - re-exported for the prepare_* modules
from escnet.progress import progress

MARKER = ".escnet-prepared.json"
MARKER_VERSION = 1

# name -> (module, function); each function takes (root: Path, workers: int, force: bool) -> dict
CONVERTERS = {
    "coco-stuff": ("escnet.data.prepare_coco", "prepare_coco_stuff"),
    "ade150": ("escnet.data.prepare_ade", "prepare_ade150"),
    "ade847": ("escnet.data.prepare_ade", "prepare_ade847"),
    "pc59": ("escnet.data.prepare_pascal", "prepare_pc59"),
    "pc459": ("escnet.data.prepare_pascal", "prepare_pc459"),
    "voc": ("escnet.data.prepare_pascal", "prepare_voc"),
    "synthetic": ("escnet.data.synthetic", "prepare_synthetic"),
    "synthetic-grouping": ("escnet.data.synthetic_grouping", "prepare_synthetic_grouping"),
}
# what `escnet prepare all` converts: every official download (the synthetic sets are generated on request)
DOWNLOADS = [name for name in CONVERTERS if not name.startswith("synthetic")]


class PrepareError(RuntimeError):
    """A raw download that cannot be converted; the message names the file or folder."""


# ---------------------------------------------------------------------------------------------
# atomic output, markers, progress


def save_array(arr: np.ndarray, path: Path, fmt: str, **params) -> None:
    """Save an image array atomically; ``fmt`` is a PIL format ("PNG", "TIFF", "JPEG")."""
    atomic_write(path, lambda tmp: Image.fromarray(arr).save(tmp, format=fmt, **params))


def is_prepared(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def mark_prepared(folder: Path, info: dict) -> None:
    """Record that ``folder`` is complete: the marker, then the in-progress marker removed."""
    payload = json.dumps({"escnet_prepare_version": MARKER_VERSION, **info}, indent=1)
    atomic_write(folder / MARKER, lambda tmp: tmp.write_text(payload))
    (folder / PREPARING).unlink(missing_ok=True)


def start_output(folder: Path, force: bool) -> bool:
    """Create ``folder`` and clean it of temporaries; False if a marker says it is complete.
    When it returns True, ``folder`` is marked in progress until `mark_prepared`."""
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(folder)
    if force:
        (folder / MARKER).unlink(missing_ok=True)
    elif is_prepared(folder):
        return False
    atomic_write(folder / PREPARING, lambda tmp: tmp.write_text(json.dumps({"pid": os.getpid()})), durable=True)
    return True


def _end_with_parent(parent: int) -> None:
    """Worker initialiser: on Linux the kernel sends SIGTERM when the parent dies."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


def _guarded(fn: Callable, parent: int, job):
    """Run one job, unless the parent is gone (the portable check, where PR_SET_PDEATHSIG is missing)."""
    if os.getppid() != parent:
        os._exit(1)
    return fn(job)


def run_jobs(fn: Callable, jobs: list, workers: int, desc: str) -> list:
    """``[fn(job) for job in jobs]`` with progress (a bar on a terminal, periodic lines in a log),
    in ``workers`` processes if > 1."""
    if workers <= 1 or len(jobs) < 2:
        return [fn(job) for job in progress(jobs, desc=desc, unit="files")]
    parent = os.getpid()
    with ProcessPoolExecutor(max_workers=workers, initializer=_end_with_parent, initargs=(parent,)) as pool:
        try:
            chunks = max(1, min(64, len(jobs) // (4 * workers)))
            return list(progress(pool.map(partial(_guarded, fn, parent), jobs, chunksize=chunks), desc=desc,
                                 unit="files", total=len(jobs)))
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def summarize(results: Iterable[str]) -> dict:
    counts: dict[str, int] = {}
    for r in results:
        counts[r] = counts.get(r, 0) + 1
    return counts


# ---------------------------------------------------------------------------------------------
# reading raw files with clear errors


def open_array(path: Path, what: str = "file") -> np.ndarray:
    """``np.array(Image.open(path))`` or a `PrepareError` naming the file."""
    try:
        with Image.open(path) as im:
            return np.array(im)
    except FileNotFoundError:
        raise PrepareError(f"{what} {path} not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise PrepareError(f"cannot read {what} {path}: {exc}") from None


def require_dir(path: Path, hint: str) -> Path:
    if not path.is_dir():
        raise PrepareError(f"folder {path} not found; {hint}")
    return path


def require_file(path: Path, hint: str) -> Path:
    if not path.is_file():
        raise PrepareError(f"file {path} not found; {hint}")
    return path


# ---------------------------------------------------------------------------------------------
# OpenCV-compatible resizing (MaskFormer resizes ADE-847 with cv2; we do not depend on OpenCV)


def nearest_indices(src: int, dst: int) -> np.ndarray:
    """Source index of each output index under cv2.INTER_NEAREST: floor(x / (dst / src)), clamped.

    OpenCV computes the inverse scale as ``1. / (dst / src)`` in double precision and floors
    ``x * that``; doing the same arithmetic keeps the chosen rows/columns identical at the
    boundaries where ``x * src / dst`` is an integer.
    """
    inv = 1.0 / (dst / src)
    return np.minimum(np.floor(np.arange(dst, dtype=np.float64) * inv).astype(np.int64), src - 1)


def resize_nearest(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, ...) -> (height, width, ...) exactly as cv2.resize(..., INTER_NEAREST)."""
    return arr[nearest_indices(arr.shape[0], height)][:, nearest_indices(arr.shape[1], width)]


def _linear_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    inv = 1.0 / (dst / src)
    pos = ((np.arange(dst, dtype=np.float64) + 0.5) * inv - 0.5).astype(np.float32)
    i0 = np.floor(pos).astype(np.int64)
    frac = (pos - i0).astype(np.float64)
    low = i0 < 0
    frac[low], i0[low] = 0.0, 0
    high = i0 >= src - 1
    frac[high], i0[high] = 0.0, src - 1
    return i0, np.minimum(i0 + 1, src - 1), frac


def resize_bilinear_uint8(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W[, C]) uint8 -> (height, width[, C]) with cv2.INTER_LINEAR's sampling grid
    (half-pixel centres, edge clamping, no antialiasing). OpenCV rounds 11-bit fixed-point
    weights, so a pixel may differ from cv2's by 1 grey level; labels never go through this."""
    y0, y1, fy = _linear_taps(img.shape[0], height)
    x0, x1, fx = _linear_taps(img.shape[1], width)
    f = img.astype(np.float64)
    fy = fy.reshape((-1,) + (1,) * (img.ndim - 1))
    fx = fx.reshape((-1,) + (1,) * (img.ndim - 2))
    rows = f[y0] * (1.0 - fy) + f[y1] * fy
    out = rows[:, x0] * (1.0 - fx) + rows[:, x1] * fx
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def short_side_size(height: int, width: int, max_size: int = 512) -> tuple[int, int] | None:
    """MaskFormer's ADE-847 rule: if the short side exceeds ``max_size``, scale it to ``max_size``
    (long side ``round(long / short * max_size)``, Python rounding); else None (keep the size)."""
    if width >= height > max_size:
        return max_size, round(width / float(height) * max_size)
    if height >= width > max_size:
        return round(height / float(width) * max_size), max_size
    return None


# ---------------------------------------------------------------------------------------------
# CLI


def prepare(name: str, root: str | os.PathLike | None = None, workers: int = 1, force: bool = False,
            num_val: int | None = None) -> dict:
    """Prepare one benchmark (a key of `CONVERTERS`); returns a summary dict. num_val: scenes in the
    val split of a generated benchmark (None: its default); scene i is the same for every num_val,
    so a larger split extends the default one."""
    if name not in CONVERTERS:
        raise PrepareError(f"unknown benchmark {name!r}; choose from {', '.join(CONVERTERS)}")
    module, func = CONVERTERS[name]
    sizes = {}
    if num_val is not None:
        if not name.startswith("synthetic"):
            raise PrepareError(f"--num-val is for the generated benchmarks (synthetic, synthetic-grouping), not {name}")
        if num_val < 1:
            raise PrepareError(f"--num-val must be >= 1, got {num_val}")
        sizes["num_val"] = num_val
    return getattr(importlib.import_module(module), func)(datasets_root(root), max(1, workers), force, **sizes)
