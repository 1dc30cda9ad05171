"""Where and how a process runs: the device (auto / cpu / cuda / mps), CPU threads, the torchrun
process group, and peak memory. The one home of these for every command.

Threads: PyTorch's default is one thread per core of the machine, even when the process may use
far fewer (a container's CPU quota, a `taskset` mask, a machine shared with other jobs): then the
threads fight for the same cores and a run can be several times slower than with one thread.
The default here is OMP_NUM_THREADS when set, else the physical cores this process may use
(hyper-threads of one core count once), bounded by the cgroup CPU quota.

torch is imported inside the functions: the command-line parsers read DEVICES and THREADS_HELP
without loading it (`escnet --help` stays light).
"""
from __future__ import annotations

import math
import os
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda", "mps")
THREADS_HELP = ("CPU threads for PyTorch (default: OMP_NUM_THREADS if set, else the physical cores this "
                "process may use: its affinity mask and cgroup quota, not the machine's core count)")


# ---------------------------------------------------------------------------------------------
# device


def _mps_available() -> bool:
    import torch

    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def resolve_device(device: Union[str, torch.device, None]) -> torch.device:
    """"auto" (or None) -> cuda if available, else Apple's mps if available, else cpu; a device
    that is not there ("cuda" without a GPU, "mps" off Apple silicon) is an error."""
    import torch

    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"unknown device {str(device)!r}; use {', '.join(DEVICES)}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is available; use --device cpu or auto")
    if device.type == "mps" and not _mps_available():
        raise ValueError("device 'mps' requested but Apple's Metal backend is not available; use --device cpu or auto")
    return device


# ---------------------------------------------------------------------------------------------
# threads


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


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads of one core count once)."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        try:
            cores.add(Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text().strip())
        except OSError:  # no sysfs topology (not Linux): every logical CPU counts
            return len(cpus)
    return len(cores)


def default_threads() -> int:
    """The thread count `set_threads(None)` uses (module docstring)."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    available = physical_cores()
    quota = _cgroup_quota()
    if quota is not None:
        available = min(available, max(1, math.ceil(quota)))
    return max(1, available)


def set_threads(threads: Optional[int]) -> int:
    """Set PyTorch's intra-op thread count (None: `default_threads()`), for this process and the
    processes it starts (OMP_NUM_THREADS / MKL_NUM_THREADS, read by a child's torch when it loads);
    returns it."""
    if threads is None:
        threads = default_threads()
    if threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    import torch

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    torch.set_num_threads(threads)
    return threads


# ---------------------------------------------------------------------------------------------
# torchrun


@dataclass
class Runtime:
    """This process's place in the run: rank, world size, its device, and whether it started the
    process group (and so must end it: `close`)."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    initialized_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        if self.initialized_here:
            import torch

            torch.distributed.destroy_process_group()
            self.initialized_here = False


def setup_runtime(device: Union[str, torch.device, None] = "auto") -> Runtime:
    """Pick the device (resolve_device; cuda:LOCAL_RANK on GPUs) and join torchrun's process group
    when WORLD_SIZE > 1 (nccl on CUDA, gloo otherwise)."""
    import torch
    import torch.distributed as dist

    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        return Runtime(dev, dist.get_rank(), dist.get_world_size(), initialized_here=True)
    if dist.is_initialized():
        return Runtime(dev, dist.get_rank(), dist.get_world_size())
    return Runtime(dev)


# ---------------------------------------------------------------------------------------------
# memory


def peak_memory(device: Union[str, torch.device]) -> dict[str, float]:
    """Peak memory of this process so far, MiB: resident (peak_rss_MiB) and, on CUDA, allocated and
    reserved by PyTorch's allocator (peak_cuda_MiB, peak_cuda_reserved_MiB)."""
    import torch

    out = {"peak_rss_MiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}  # KiB on Linux
    device = torch.device(device)
    if device.type == "cuda":
        out["peak_cuda_MiB"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        out["peak_cuda_reserved_MiB"] = round(torch.cuda.max_memory_reserved(device) / 2**20, 1)
    return out
