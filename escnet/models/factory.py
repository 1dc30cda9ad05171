"""Model factory: the named architectures and presets, validated configs, randomly initialised models.
Pure: no weight files (loading, saving and the training initialisation are escnet.lifecycle)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from escnet.models.validation import ConfigValidationError, validate_config, validate_fields

if TYPE_CHECKING:
    from torch import nn

ARCHS = ("escnet", "catseg")
PRESETS = ("vitb16", "vitl14", "tiny")


def arch_classes(arch: str) -> tuple[type, type]:
    """(config dataclass, model class) of architecture `arch`."""
    if arch == "escnet":
        from escnet.models.escnet import ESCNet, ESCNetConfig

        return ESCNetConfig, ESCNet
    if arch == "catseg":
        from escnet.models.catseg import CATSeg, CATSegConfig

        return CATSegConfig, CATSeg
    raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")


def make_config(arch: str, preset: str, **overrides):
    """Config object of `arch` ('escnet' | 'catseg') at `preset` with field overrides, validated
    (types, ranges, size bound: escnet.models.validation) before anything is allocated."""
    cfg_cls, model_cls = arch_classes(arch)
    where = f"{arch} config ({preset})"
    # `reading` (ESC-Net) names a set of field values (escnet.models.escnet.READINGS), not a field
    validate_fields(cfg_cls, {k: v for k, v in overrides.items() if k != "reading"}, where)
    try:
        cfg = cfg_cls.preset(preset, **overrides)
    except (ValueError, TypeError, ZeroDivisionError) as e:
        raise ConfigValidationError(f"{where}: {e}") from None
    validate_config(cfg, where, model_cls)
    return cfg


def create_model(arch: str, preset: str = "vitb16", **overrides) -> nn.Module:
    """Randomly initialised model, e.g. create_model('escnet', 'tiny', num_blocks=2)."""
    return model_from_config(make_config(arch, preset, **overrides))


def model_from_config(cfg) -> nn.Module:
    """Randomly initialised model of a built config (make_config), e.g. to build it only once."""
    return arch_classes(cfg.arch)[1](cfg)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameter counts per top-level component (and 'total'), counting shared modules once."""
    counts: dict[str, int] = {}
    seen: set[int] = set()
    for name, child in model.named_children():
        n = 0
        for p in child.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                n += p.numel()
        counts[name] = n
    counts["total"] = sum(counts.values())
    return counts
