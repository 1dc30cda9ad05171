"""detectron2.config: `configurable`, `CfgNode`, `get_cfg`."""
from __future__ import annotations

import functools
import inspect

from fvcore.common.config import CfgNode as _FvCfgNode


class CfgNode(_FvCfgNode):
    """fvcore's CfgNode (detectron2's base; `merge_from_file` follows `_BASE_`), accepting new keys
    everywhere: `get_cfg` below holds only the groups CAT-Seg's code writes into, not detectron2's
    full defaults, so the yaml files may add keys those defaults would have declared."""

    def __init__(self, init_dict=None, key_list=None, new_allowed=True):
        super().__init__(init_dict, key_list, new_allowed)


def get_cfg() -> CfgNode:
    """The groups CAT-Seg's `add_cat_seg_config` and yaml files assign into (detectron2's defaults
    declare them; the values used are all set by cat_seg/config.py and the yaml files)."""
    cfg = CfgNode()
    for group in ("MODEL", "INPUT", "DATASETS", "SOLVER", "TEST", "DATALOADER"):
        cfg[group] = CfgNode()
    cfg.MODEL.SEM_SEG_HEAD = CfgNode()
    cfg.MODEL.DEVICE = "cpu"
    cfg.INPUT.CROP = CfgNode()
    return cfg


def _called_with_cfg(*args, **kwargs) -> bool:
    return bool(args) and isinstance(args[0], _FvCfgNode) or isinstance(kwargs.get("cfg"), _FvCfgNode)


def configurable(init_func):
    """Decorator for `__init__`: called with a CfgNode first, the arguments come from the class's
    `from_config(cfg, ...)`; called with keyword arguments, they are used as given (detectron2's
    `configurable`, the form CAT-Seg uses)."""
    if not (inspect.isfunction(init_func) and init_func.__name__ == "__init__"):
        raise TypeError("this shim's configurable only decorates __init__ methods")

    @functools.wraps(init_func)
    def wrapped(self, *args, **kwargs):
        if _called_with_cfg(*args, **kwargs):
            init_func(self, **type(self).from_config(*args, **kwargs))
        else:
            init_func(self, *args, **kwargs)

    return wrapped
