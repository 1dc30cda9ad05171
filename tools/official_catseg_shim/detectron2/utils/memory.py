"""detectron2.utils.memory: `_ignore_torch_cuda_oom` (imported, unused, by cat_seg_model.py)."""
from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def _ignore_torch_cuda_oom():
    """Swallow a CUDA out-of-memory error raised inside the block (detectron2's helper)."""
    try:
        yield
    except RuntimeError as e:
        if "CUDA out of memory" not in str(e):
            raise
