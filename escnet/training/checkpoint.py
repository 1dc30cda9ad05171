"""Training checkpoints: atomic writes, keep-last-N, and everything an exact resume needs.

A checkpoint ``<dir>/checkpoint_<step:08d>.pt`` holds the model, optimiser and scheduler states,
the step (which fixes the data position, see escnet.data.train_dataset), the RNG states of torch
(CPU and CUDA), numpy and Python, and the training config. It is written to a temporary file in
the same folder, flushed to disk and renamed into place, so a crash mid-save leaves the previous
checkpoints untouched and at worst a temporary file that the next run removes; only then are
checkpoints beyond the newest `keep_last` deleted. Everything is stored as tensors and plain
Python values, so resuming reads the file with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np
import torch

from escnet.errors import EscnetError
from escnet.fileio import atomic_write, remove_tmp

PATTERN = re.compile(r"^checkpoint_(\d{8})\.pt$")
_TMP_PREFIX = ".checkpoint_"


class CheckpointError(EscnetError, RuntimeError):
    """A checkpoint that cannot be found or used; the message names the file."""


def checkpoint_path(directory: str | os.PathLike, step: int) -> Path:
    return Path(directory) / f"checkpoint_{step:08d}.pt"


def list_checkpoints(directory: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of the complete checkpoints in `directory`, oldest first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := PATTERN.match(p.name)) and p.is_file()]
    return sorted(found)


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def remove_stale_temporaries(directory: str | os.PathLike) -> int:
    """Delete temporary files of interrupted saves; returns how many."""
    d = Path(directory)
    stale = [p for p in d.iterdir() if p.name.startswith(_TMP_PREFIX)] if d.is_dir() else []
    for p in stale:
        remove_tmp(p)
    return len(stale)


def rng_state() -> dict:
    """RNG states of Python, numpy and torch (CPU, and every CUDA device when present)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, words, gauss_next = random.getstate()
    state = {
        "python": {"version": version, "state": torch.tensor(words, dtype=torch.int64), "gauss_next": gauss_next},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` returned."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(w) for w in py["state"].tolist()), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: str | os.PathLike, step: int, state: dict, keep_last: int = 3) -> Path:
    """Write `state` (plus the RNG states) as checkpoint `step` atomically, then prune to `keep_last`."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(d, step)
    payload = {**state, "step": step, "rng": rng_state()}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(payload, f)

    atomic_write(final, write, durable=True)
    for _, old in list_checkpoints(d)[:-keep_last] if keep_last > 0 else []:
        old.unlink(missing_ok=True)
    return final


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint (weights only: no code runs); errors name the file."""
    p = Path(path)
    if p.is_dir():
        found = latest_checkpoint(p)
        if found is None:
            raise CheckpointError(f"no checkpoint_*.pt in {p}")
        p = found
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} not found")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised naming the file
        raise CheckpointError(f"checkpoint {p} cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {p} holds a {type(state).__name__}, not a training checkpoint")
    missing = [k for k in ("step", "model", "optimizer", "scheduler", "rng", "config") if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {p} lacks {', '.join(missing)}")
    step = state["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"checkpoint {p}: step must be an integer >= 0, got {step!r:.40}")
    bad = [k for k in ("model", "optimizer", "scheduler", "rng", "config") if not isinstance(state[k], dict)]
    if bad:
        raise CheckpointError(f"checkpoint {p}: {', '.join(bad)} must be tables, got "
                              f"{', '.join(type(state[k]).__name__ for k in bad)}")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state["model"].items()):
        raise CheckpointError(f"checkpoint {p}: model must map parameter names to tensors")
    state["path"] = str(p)
    return state
