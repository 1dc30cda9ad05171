"""Model config validation, before anything is allocated.

A config (``ESCNetConfig``, ``CATSegConfig``, their nested ``CLIPConfig``, any future field) is checked
generically from its dataclass type hints: an ``int`` field takes an int (not a bool, a float or a
string), a ``bool`` field a bool (the string "false" is an error, not true), a ``float`` field a finite
number, a tuple field a sequence of the right length and element type. Ranges are a table keyed by field
name, so a field added to a config is range-checked by adding one row. Then the sizes a config asks for
are bounded: per-field caps (which also bound how long building the module tree takes) and the total
parameter count, counted exactly by building the model on the meta device (no memory is allocated).
Every error names the field.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping

from escnet.errors import EscnetError

# parameters a model config may ask for: 2e9 (8 GB in float32) is 4.5 x ESC-Net ViT-L/14 (449 M)
MAX_PARAMETERS = 2_000_000_000

_WIDTH = (1, 16384)  # channel widths and embedding sizes
_DEPTH = (1, 256)  # layers and blocks: also bounds the number of modules built
_HEADS = (1, 1024)
# field name -> (lowest, highest) allowed value; for a tuple field, every element
RANGES: dict[str, tuple[float, float]] = {
    # CLIP
    "embed_dim": _WIDTH, "vision_width": _WIDTH, "text_width": _WIDTH,
    "vision_layers": _DEPTH, "text_layers": _DEPTH, "vision_heads": _HEADS, "text_heads": _HEADS,
    "image_size": (1, 4096), "patch_size": (1, 1024), "context_length": (1, 4096), "vocab_size": (1, 1_000_000),
    "skip_layers": (0, 255),
    # both models
    "crop_size": (1, 4096), "hidden_dim": _WIDTH, "heads": _HEADS, "window": (1, 1024), "stem_kernel": (1, 63),
    "pixel_mean": (-1e6, 1e6), "pixel_std": (1e-12, 1e6),
    "decoder_dims": _WIDTH, "skip_dims": _WIDTH, "skip_proj_dims": _WIDTH,
    # ESC-Net
    "num_blocks": _DEPTH, "ppg_regions": (1, 1024), "ppg_tau": (1e-6, 1e6), "ppg_alpha": (0.0, 1.0),
    "ppg_iters": (1, 1000), "ppg_smooth": (1, 63), "ppg_min_contrast": (0.0, 1e6), "ppg_region_min": (0.0, 1.0),
    "mask_logit": (0.0, 1e4), "sam_dim": _WIDTH, "sam_depth": _DEPTH, "sam_heads": _HEADS,
    "sam_mlp_dim": (1, 65536), "sam_downsample": (1, 1024), "sam_mask_in_chans": (1, 4096), "guidance_dim": _WIDTH,
    # CAT-Seg
    "num_layers": _DEPTH, "text_guidance_proj_dim": _WIDTH, "appearance_guidance_proj_dim": _WIDTH,
    "pooling_train": (1, 64), "pooling_eval": (1, 64), "pad_len": (0, 100_000), "class_truncation": (1, 100_000),
}

# (field, divisor field): the first must be a multiple of the second, where a config has both
DIVISIBLE = (("hidden_dim", "heads"), ("vision_width", "vision_heads"), ("text_width", "text_heads"),
             ("image_size", "patch_size"), ("sam_dim", "sam_heads"))


class ConfigValidationError(EscnetError, ValueError):
    """A model config that must not be built; the message names the field."""


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _check_value(value, hint, name: str, where: str):
    """`value` as `hint` wants it (lists become tuples), or ConfigValidationError naming `name`."""
    def bad(expected: str):
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        return ConfigValidationError(f"{where}: {name} must be {expected}, got {type(value).__name__} {shown}")

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _check_value(value, rest[0], name, where)
        for a in rest:
            try:
                return _check_value(value, a, name, where)
            except ConfigValidationError:
                continue
        raise bad(" or ".join(_type_name(a) for a in args))
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad(f"a list ({_type_name(hint)})")
        if len(args) == 2 and args[1] is Ellipsis:
            items = args[:1] * len(value)
        else:
            items = args
            if len(value) != len(items):
                raise bad(f"a list of {len(items)} values")
        return tuple(_check_value(v, h, f"{name}[{i}]", where) for i, (v, h) in enumerate(zip(value, items)))
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            validate_config(value, f"{where}: {name}")
            return value
        if not isinstance(value, Mapping):
            raise bad(f"a table of {hint.__name__} fields")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        if not math.isfinite(value):
            raise bad("a finite number")
        value = float(value)
    elif hint is str:
        if not isinstance(value, str):
            raise bad("a string")
    _check_range(value, name, where)
    return value


def _check_range(value, name: str, where: str) -> None:
    field = name.split("[")[0]
    if field not in RANGES or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    low, high = RANGES[field]
    if not low <= value <= high:
        raise ConfigValidationError(f"{where}: {name} = {value} is outside the allowed range {low:g}..{high:g}")


def check_ranges(values: Mapping[str, float], where: str) -> None:
    """Check sizes read from a weight file (not a config) against the same `RANGES` rows, naming the field."""
    for name, value in values.items():
        _check_range(value, name, where)


def validate_fields(cls, data, where: str) -> dict:
    """Check raw values (a dict from JSON / TOML / overrides) for the dataclass `cls` before it is built.

    Unknown fields, wrong types, out-of-range values are errors naming the field. Returns the values with
    lists turned into tuples (nested dataclass tables are checked and left as dicts)."""
    if not isinstance(data, Mapping):
        raise ConfigValidationError(f"{where}: expected a table of {cls.__name__} fields, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in data if k not in names)
    if unknown:
        raise ConfigValidationError(f"{where}: unknown field(s) for {cls.__name__}: {', '.join(unknown)}")
    out = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            validate_fields(hint, value, f"{where}: {name}")
            out[name] = value
        else:
            out[name] = _check_value(value, hint, name, where)
    return out


def _count_parameters(model_cls, cfg) -> int:
    import torch  # here, not at the top: the command-line parsers read the presets without loading torch

    with torch.device("meta"):
        model = model_cls(cfg)
    return sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())


def _largest_departure(cfg) -> str:
    """The numeric field furthest above its default: the likely cause of an oversized config."""
    best, text = 1.0, "the model sizes"
    for f in dataclasses.fields(cfg):
        value, default = getattr(cfg, f.name), f.default
        if dataclasses.is_dataclass(value) or isinstance(value, bool) or isinstance(default, bool):
            continue
        if isinstance(value, (int, float)) and isinstance(default, (int, float)) and default > 0 and value / default > best:
            best, text = value / default, f"{f.name} = {value} (default {default})"
    return text


def validate_config(cfg, where: str = "config", model_cls=None) -> None:
    """Check a built config: every field's type and range (nested configs too), divisibility, and, with
    `model_cls`, that the model it describes has at most MAX_PARAMETERS parameters (counted on the meta
    device). Raises ConfigValidationError naming the field."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise ConfigValidationError(f"{where}: expected a config object, got {type(cfg).__name__}")
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        _check_value(getattr(cfg, f.name), hints[f.name], f.name, where)
    for name, divisor in DIVISIBLE:
        if hasattr(cfg, name) and hasattr(cfg, divisor) and getattr(cfg, name) % getattr(cfg, divisor):
            raise ConfigValidationError(f"{where}: {name} = {getattr(cfg, name)} is not divisible by "
                                        f"{divisor} = {getattr(cfg, divisor)}")
    if model_cls is not None:
        n = _count_parameters(model_cls, cfg)
        if n > MAX_PARAMETERS:
            raise ConfigValidationError(
                f"{where}: the config asks for {n / 1e9:.1f} G parameters ({4 * n / 2**30:.0f} GiB in float32), "
                f"over the limit of {MAX_PARAMETERS / 1e9:g} G; largest departure from the defaults: "
                f"{_largest_departure(cfg)}")
