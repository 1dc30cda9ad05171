"""CPU threads for the long commands (`--threads` on segment, evaluate, demo, export).

PyTorch's default is one thread per physical core of the machine, even when the process may use
far fewer (a container's CPU quota, a `taskset` mask, a machine shared with other jobs): then
the threads fight for the same cores and a run can be several times slower than with one thread.
The default here is the CPUs this process may actually use: OMP_NUM_THREADS when set, else the
smaller of the CPU affinity mask and the cgroup CPU quota.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

import torch

THREADS_HELP = ("CPU threads for PyTorch (default: OMP_NUM_THREADS if set, else the CPUs this process "
                "may use: its affinity mask and cgroup quota, not the machine's core count)")


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> Optional[float]:
    """CPUs allowed by the cgroup v2 (cpu.max) or v1 (cfs quota / period) limit, None if unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def default_threads() -> int:
    """The thread count `set_threads(None)` uses (module docstring)."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        available = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        available = min(available, max(1, math.ceil(quota)))
    return max(1, available)


def set_threads(threads: Optional[int]) -> int:
    """Set PyTorch's intra-op thread count (None: `default_threads()`); returns it."""
    if threads is None:
        threads = default_threads()
    if threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)
    return threads
