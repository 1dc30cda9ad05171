"""Training configuration: one flat dataclass of named, typed values (nanoGPT style).

A config file is TOML: top-level keys are `TrainConfig` fields, and two tables override the model's
own config: ``[model]`` (fields of ESCNetConfig / CATSegConfig, e.g. ``num_blocks = 2``) and
``[clip]`` (fields of CLIPConfig, e.g. ``patch_size = 12``). Command-line overrides are
``key=value`` (``max_iters=1000``, ``model.num_blocks=2``, ``clip.patch_size=12``,
``min_size_train=96,112``), parsed by the type of the field they set. An unknown key or a value
of the wrong type is an error naming the key and where it came from, raised before any work.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import json
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from escnet.errors import EscnetError

CHOICES = {
    "arch": ("escnet", "catseg"),
    "preset": ("vitb16", "vitl14", "tiny"),
    "precision": ("fp32", "bf16"),
    "eval_protocol": ("sliding", "single"),
    "reading": ("paper", "efficient", "legacy"),  # escnet.models.escnet.READINGS
    "sam_lr_rule": ("all", "attention"),  # escnet.training.optim.SAM_LR_RULES
    "sam_lr_random": ("low", "main"),  # escnet.training.optim.sam_rate
}


class ConfigError(EscnetError, ValueError):
    """A configuration that cannot run; the message names the key and where it was set."""


@dataclass
class TrainConfig:
    """Every training setting. Defaults: ESC-Net ViT-B/16 on COCO-Stuff (docs/design.md "Training recipe")."""

    # model
    arch: str = "escnet"  # escnet | catseg
    preset: str = "vitb16"  # vitb16 | vitl14 | tiny
    reading: str = "paper"  # ESC-Net: named reading of the paper (paper | efficient | legacy); [model] fields win
    model: dict = field(default_factory=dict)  # model config overrides (TOML table [model])
    clip: dict = field(default_factory=dict)  # CLIP config overrides (TOML table [clip])
    init_clip: str = ""  # CLIP weights (OpenAI .pt, open_clip, HF CLIPModel; ESC-Net also a CAT-Seg .pth)
    init_sam: str = ""  # SAM checkpoint whose mask-decoder pieces initialise every ESC block (ESC-Net)
    init_model: str = ""  # start from a whole saved model instead (our format or a CAT-Seg .pth)
    # data
    dataset: str = "coco-stuff"  # coco-stuff | synthetic | a folder with images/, labels/, classes.txt
    data_root: str = ""  # benchmark root; "" = $DETECTRON2_DATASETS or ./datasets
    min_size_train: tuple[int, ...] = (384,)  # ResizeShortestEdge sizes (one drawn per sample)
    max_size_train: int = 1333  # cap on the long side after resizing
    single_category_max_area: float = 1.0  # random-crop constraint; 1.0 = off (CAT-Seg)
    color_aug: bool = True  # SSD colour jitter
    hue_delta: int = 18  # its hue range (OpenCV units of 2 degrees)
    flip: bool = True
    num_workers: int = 4  # data loader processes per training process
    # evaluation during training
    eval_dataset: str = "coco-stuff"  # "" = none
    eval_split: str = "val"
    eval_protocol: str = "sliding"  # sliding (CAT-Seg's evaluation) | single
    eval_every: int = 5000  # steps between evaluations (and one at the end); 0 = only at the end
    eval_limit: int = 0  # evaluate on the first N images only; 0 = all
    # dense CLIP warm-up before segmentation training (for a CLIP that starts random; off for real runs)
    clip_warmup_iters: int = 0  # steps training CLIP alone as a per-pixel classifier over the class names
    clip_warmup_lr: float = 2e-3
    clip_warmup_batch: int = 16
    # a clip_warmup.pt written by an earlier run's warm-up (same seed and warm-up settings): its CLIP
    # weights and RNG state replace this run's warm-up, so variants of one seed share one warm-up
    clip_warmup_init: str = ""
    # optimisation
    batch_size: int = 4  # global batch, split over the processes
    max_iters: int = 80000
    lr: float = 2e-4
    low_lr: float = 2e-6  # trainable CLIP weights and the pretrained SAM pieces (sam_lr_rule)
    sam_lr_rule: str = "all"  # SAM parameters at low_lr: all (the paper: every pretrained SAM piece) | attention
    sam_lr: float = 0.0  # a rate of their own for those SAM parameters (groups sam_*); 0 = low_lr (the paper)
    # ESC-Net whose SAM pieces start random (no init_sam, no init_model; Table 2 (b) "rand init"): low =
    # low_lr as if pretrained | main = lr (groups sam_*), nothing pretrained to preserve
    sam_lr_random: str = "low"
    weight_decay: float = 1e-4  # 0 on norms, biases and embeddings
    warmup_iters: int = 0  # linear warm-up before the cosine (CAT-Seg: none)
    grad_clip: float = 0.01  # global gradient-norm clip; 0 = off
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    seed: int = 0
    # run
    output_dir: str = "output/escnet_vitb16_coco"
    device: str = "auto"  # auto | cpu | cuda | mps
    threads: int = 0  # torch CPU threads per process; 0 = torch's default
    log_every: int = 20
    save_every: int = 5000
    keep_last: int = 3  # checkpoints kept
    stop_after: int = 0  # end this run after this step (the schedule still spans max_iters); 0 = off

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @functools.cached_property
    def model_config(self):
        """The model's config dataclass (build_model_config), built once per TrainConfig and passed down."""
        return build_model_config(self)


# ---------------------------------------------------------------------------------------------
# typed values


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) if isinstance(hint, type) else str(hint).replace("typing.", "")


def coerce(value, hint, key: str, where: str):
    """Check `value` (from TOML / JSON) against the type hint; returns it converted
    (int -> float, list -> tuple). Raises ConfigError naming `key` and `where`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    bad = ConfigError(f"{where}: {key} must be {_type_name(hint)}, got {value!r} ({type(value).__name__})")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key, where)
            except ConfigError:
                pass
        raise bad
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise bad
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: {key} needs {len(args)} values, got {len(value)}")
            items = [coerce(v, a, f"{key}[{i}]", where) for i, (v, a) in enumerate(zip(value, args))]
        else:
            inner = args[0] if args else typing.Any
            items = [coerce(v, inner, f"{key}[{i}]", where) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if hint is typing.Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if hint is str:
        if not isinstance(value, str):
            raise bad
        return value
    if hint is dict:
        if not isinstance(value, dict):
            raise bad
        return value
    raise ConfigError(f"{where}: {key} has a type ({_type_name(hint)}) that cannot be set from a config")


def parse_text(text: str, hint, key: str, where: str):
    """A command-line value as the type `hint` wants: true/false, numbers, comma-separated or JSON
    lists, "none" for optional values; strings are taken as they are."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    stripped = text.strip()
    if origin in (typing.Union, types.UnionType):
        if stripped.lower() in ("none", "null") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return parse_text(text, inner[0], key, where) if len(inner) == 1 else coerce(text, hint, key, where)
    if hint is str:
        return text
    if hint is bool:
        words = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
        if stripped.lower() not in words:
            raise ConfigError(f"{where}: {key} must be true or false, got {text!r}")
        return words[stripped.lower()]
    if origin in (tuple, list) and not stripped.startswith("["):
        inner = args[0] if args else str
        parts = [parse_text(p, args[i] if origin is tuple and args and args[-1] is not Ellipsis and i < len(args)
                            else inner, f"{key}[{i}]", where) for i, p in enumerate(stripped.split(",")) if p.strip()]
        return coerce(parts, hint, key, where)
    try:
        value = json.loads(stripped)
    except json.JSONDecodeError:
        raise ConfigError(f"{where}: {key} must be {_type_name(hint)}, got {text!r}") from None
    return coerce(value, hint, key, where)


# ---------------------------------------------------------------------------------------------
# model-config overrides ([model], [clip])


def model_config_class(arch: str):
    if arch == "escnet":
        from escnet.models.escnet import ESCNetConfig

        return ESCNetConfig
    from escnet.models.catseg import CATSegConfig

    return CATSegConfig


def _check_fields(cls, values: dict, table: str, where: str, reserved: tuple[str, ...] = ()) -> dict:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)} - set(reserved)
    out = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown key {table}.{key} (fields of {cls.__name__}: {', '.join(sorted(names))})")
        out[key] = coerce(value, hints[key], f"{table}.{key}", where)
    return out


def build_model_config(cfg: TrainConfig):
    """The model's config dataclass: preset, then [clip] and [model] overrides. Errors name the key."""
    from escnet.models.clip import CLIPConfig

    where = "model config"
    clip_values = _check_fields(CLIPConfig, cfg.clip, "clip", where)
    model_values = _check_fields(model_config_class(cfg.arch), cfg.model, "model", where, reserved=("clip", "arch"))
    try:
        clip = dataclasses.replace(CLIPConfig.preset(cfg.preset), **clip_values)
        from escnet.models.factory import make_config

        reading = {"reading": cfg.reading} if cfg.arch == "escnet" else {}
        return make_config(cfg.arch, cfg.preset, clip=clip, **reading, **model_values)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# files and overrides


def _read_toml(path: Path) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise ConfigError(f"{path}: reading TOML needs Python >= 3.11 or the 'tomli' package") from None
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


def _set(values: dict, key: str, value, where: str, from_text: bool) -> None:
    """Put one key (dotted for [model] / [clip]) into `values`, typed by TrainConfig's field."""
    hints = typing.get_type_hints(TrainConfig)
    top, _, sub = key.partition(".")
    if top not in hints:
        raise ConfigError(f"{where}: unknown key {key!r} (see escnet/training/config.py for the fields)")
    if sub:
        if top not in ("model", "clip"):
            raise ConfigError(f"{where}: {key!r}: only [model] and [clip] take dotted keys")
        if from_text:
            arch = values.get("arch", TrainConfig.arch)
            from escnet.models.clip import CLIPConfig

            cls = CLIPConfig if top == "clip" else model_config_class(arch)
            sub_hints = typing.get_type_hints(cls)
            if sub not in sub_hints:
                raise ConfigError(f"{where}: unknown key {key!r} (not a field of {cls.__name__})")
            value = parse_text(value, sub_hints[sub], key, where)
        values.setdefault(top, {})
        values[top] = {**values[top], sub: value}
        return
    values[top] = parse_text(value, hints[top], key, where) if from_text else coerce(value, hints[top], key, where)


def load_config(path: str | os.PathLike | None = None, overrides: list[str] = ()) -> TrainConfig:
    """TrainConfig from a TOML file (optional) and ``key=value`` overrides, validated for keys,
    types and choices (not for files; see escnet.training.loop.check_config)."""
    values: dict = {}
    if path is not None:
        where = str(path)
        for key, value in _read_toml(Path(path)).items():
            if isinstance(value, dict):
                if key not in ("model", "clip"):
                    raise ConfigError(f"{where}: unknown table [{key}] (tables: [model], [clip])")
                for sub, v in value.items():
                    _set(values, f"{key}.{sub}", v, where, from_text=False)
            else:
                _set(values, key, value, where, from_text=False)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected key=value")
        _set(values, key.strip(), text, "command line", from_text=True)
    cfg = TrainConfig(**values)
    for key, choices in CHOICES.items():
        if getattr(cfg, key) not in choices:
            raise ConfigError(f"{key} = {getattr(cfg, key)!r}: choose one of {', '.join(choices)}")
    positive = ("batch_size", "max_iters", "log_every", "keep_last", "save_every", "clip_warmup_batch")
    for key in positive:
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {getattr(cfg, key)}")
    for key in ("eval_every", "eval_limit", "num_workers", "threads", "warmup_iters", "stop_after", "clip_warmup_iters"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{key} must be >= 0, got {getattr(cfg, key)}")
    if not (cfg.sam_lr >= 0 and math.isfinite(cfg.sam_lr)):
        raise ConfigError(f"sam_lr must be >= 0 (0 = low_lr), got {cfg.sam_lr}")
    if cfg.sam_lr > 0 and cfg.sam_lr_random == "main":
        raise ConfigError(f"sam_lr = {cfg.sam_lr} and sam_lr_random = 'main' both set the SAM rate; set one of them")
    if not cfg.min_size_train:
        raise ConfigError("min_size_train needs at least one size")
    if not 0 < cfg.single_category_max_area <= 1:
        raise ConfigError(f"single_category_max_area must be in (0, 1], got {cfg.single_category_max_area}")
    cfg.model_config  # built (and validated) now, so that errors come before any work
    return cfg


def config_from_dict(data: dict, where: str = "checkpoint") -> TrainConfig:
    """A TrainConfig from `to_dict()` output (e.g. stored in a checkpoint), type-checked."""
    values: dict = {}
    for key, value in data.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                _set(values, f"{key}.{sub}", v, where, from_text=False)
            values.setdefault(key, {})
        else:
            _set(values, key, value, where, from_text=False)
    return TrainConfig(**values)
