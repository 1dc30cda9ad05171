"""Deprecated: escnet.engine was split into rooms (docs/package-map.md); kept for one release.

Each old module here, escnet.engine.X, is a stand-in that warns (DeprecationWarning naming the new
path) and then *is* the module at the new path: `sys.modules["escnet.engine.X"]` is replaced by it,
so attribute reads and writes (monkeypatching included) reach the one real module.
"""
from __future__ import annotations

import importlib
import sys
import warnings

# old module name -> new module name
MOVED = {
    "benchmark": "escnet.benchmarks.benchmark",
    "benchmark_command": "escnet.commands.benchmark",
    "catalog": "escnet.commands.models",
    "checkpoint": "escnet.training.checkpoint",
    "config": "escnet.training.config",
    "convert": "escnet.commands.convert",
    "evaluate": "escnet.evaluation.evaluate",
    "export": "escnet.inference.export",
    "export_command": "escnet.commands.export",
    "flops": "escnet.benchmarks.flops",
    "inference": "escnet.inference.segmenter",
    "info": "escnet.commands.info",
    "metrics": "escnet.evaluation.metrics",
    "optim": "escnet.training.optim",
    "options": "escnet.inference.options",
    "outputs": "escnet.inference.outputs",
    "pretrain_sam": "escnet.training.pretrain_sam",
    "pretrain_sam_command": "escnet.commands.pretrain_sam",
    "protocol": "escnet.inference.protocol",
    "segment": "escnet.commands.segment",
    "text_cache": "escnet.inference.text_cache",
    "train": "escnet.training.loop",
    "train_command": "escnet.commands.train",
    "visualize": "escnet.inference.visualize",
}


def moved(old: str) -> None:
    """Called by the stand-in module `old` (escnet.engine.X): warn, then make `old` the new module."""
    new = MOVED[old.rsplit(".", 1)[1]]
    warnings.warn(f"{old} has moved to {new}; the old path goes away in the next release", DeprecationWarning,
                  stacklevel=3)
    sys.modules[old] = importlib.import_module(new)
