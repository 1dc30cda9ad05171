"""How the `Segmenter` runs its model: "eager" (PyTorch as written) or "compile" (torch.compile with
inductor: fused kernels for the layout-heavy, elementwise and mid-sized matmul work that dominates
a CPU forward, see docs/deploy.md).

    Segmenter.from_pretrained("catseg-vitb16", backend="compile")
    escnet segment photos/ --classes ade150 --backend compile --out results/

Compiling happens on the first forward of each new input shape (views per call, classes per
chunk), so the first image costs the compile (tens of seconds to minutes for ViT-B on a CPU) and
the next ones run the compiled kernels. The cost is reported: `Segmenter.backend_info` records
the first compiled call's wall time ("first_call_s") and the cache folder. Inductor caches what
it compiled on disk (its FX graph cache), so a later process with the same model and shapes
reuses it and starts much faster; the folder is TORCHINDUCTOR_CACHE_DIR when set, else
<escnet cache>/inductor ($ESCNET_CACHE or ~/.cache/escnet, escnet.hub.cache_dir), kept across
reboots (inductor's own default lives in /tmp).

Compiled and eager float32 forwards differ by float rounding only (fused reductions sum in
another order); labels are equal to eager's on the bundled model (tests/engine/test_backends.py).
"""
from __future__ import annotations

import functools
import os
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import torch

from escnet.inference.options import BACKENDS

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
# What the compiler says on the first call that a user cannot act on: Dynamo traces through
# functools.lru_cache wrappers (escnet.models.swin.window_attention_mask, a pure function of
# integers, so tracing it gives the cached value) and says so once.
_QUIET_WARNINGS = (r"Dynamo detected a call to a `functools.lru_cache`-wrapped function",)


def compile_cache_dir(cache_dir: Optional[os.PathLike | str] = None) -> Path:
    """Point inductor's on-disk cache at cache_dir (default: TORCHINDUCTOR_CACHE_DIR when set, else
    <escnet cache>/inductor) and return it. Set before the first compile."""
    if cache_dir is None:
        if os.environ.get(CACHE_ENV):
            return Path(os.environ[CACHE_ENV])
        from escnet.hub import cache_dir as escnet_cache

        cache_dir = escnet_cache() / "inductor"
    cache_dir = Path(cache_dir).expanduser().absolute()
    cache_dir.mkdir(parents=True, exist_ok=True)
    os.environ[CACHE_ENV] = str(cache_dir)
    return cache_dir


def apply_backend(model: torch.nn.Module, backend: str = "eager", cache_dir=None) -> dict[str, Any]:
    """Set up `model` (in place) to run with `backend` (one of BACKENDS); returns what the Segmenter
    records about it: {"backend": ...} and, for "compile", {"compiler": "inductor", "cache_dir": ...,
    "first_call_s": (after the first forward)}."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    info: dict[str, Any] = {"backend": backend}
    if backend == "compile":
        info.update(compiler="inductor", cache_dir=str(compile_cache_dir(cache_dir)))
        eager = model.forward
        compiled = torch.compile(eager, backend="inductor")

        @functools.wraps(eager)  # keeps forward's signature (escnet.inference.protocol reads it)
        def forward(*args, **kwargs):
            if "first_call_s" in info:
                return compiled(*args, **kwargs)
            start = time.perf_counter()  # outside the compiled code: the first call's compile + run
            with warnings.catch_warnings():
                for message in _QUIET_WARNINGS:
                    warnings.filterwarnings("ignore", message=message, category=UserWarning)
                out = compiled(*args, **kwargs)
            info["first_call_s"] = round(time.perf_counter() - start, 3)
            return out

        model.forward = forward  # an instance attribute: nn.Module.__call__ runs it
    return info
