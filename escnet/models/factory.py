"""Model factory: named architectures and presets, our save format (config.json + model.safetensors),
loading any supported checkpoint, the ESC-Net training initialisation, and optimiser parameter groups."""
from __future__ import annotations

import dataclasses
import json
import os
import typing
from pathlib import Path

import torch
from torch import nn

from escnet.fileio import atomic_write
from escnet.models.validation import ConfigValidationError, validate_config, validate_fields
from escnet.weights.common import WeightsError, check_keys, check_shapes

ARCHS = ("escnet", "catseg")
PRESETS = ("vitb16", "vitl14", "tiny")
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def _classes(arch: str):
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
    cfg_cls, model_cls = _classes(arch)
    where = f"{arch} config ({preset})"
    validate_fields(cfg_cls, overrides, where)
    try:
        cfg = cfg_cls.preset(preset, **overrides)
    except (ValueError, TypeError, ZeroDivisionError) as e:
        raise ConfigValidationError(f"{where}: {e}") from None
    validate_config(cfg, where, model_cls)
    return cfg


def create_model(arch: str, preset: str = "vitb16", **overrides) -> nn.Module:
    """Randomly initialised model, e.g. create_model('escnet', 'tiny', num_blocks=2)."""
    cfg = make_config(arch, preset, **overrides)
    return _classes(arch)[1](cfg)


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def config_from_dict(cls, data: dict, where: str = "config", model_cls=None):
    """Rebuild a (nested) config dataclass from JSON values, validated before anything is allocated:
    unknown fields, types, ranges, divisibility and (with `model_cls`) the parameter count are errors
    naming the field (escnet.models.validation)."""
    values = validate_fields(cls, data, where)
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        if dataclasses.is_dataclass(hints[name]) and not dataclasses.is_dataclass(value):
            values[name] = config_from_dict(hints[name], value, f"{where}: {name}")
    try:
        cfg = cls(**values)
    except (ValueError, TypeError, ZeroDivisionError) as e:
        raise ConfigValidationError(f"{where}: {e}") from None
    validate_config(cfg, where, model_cls)
    return cfg


def save_pretrained(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write `config.json` + `model.safetensors` (atomically) to `directory`."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(out / WEIGHTS_NAME, lambda p: save_file(sd, p, metadata={"format": "pt", "arch": model.cfg.arch}))
    text = json.dumps(config_to_dict(model.cfg), indent=2)
    atomic_write(out / CONFIG_NAME, lambda p: Path(p).write_text(text))
    return out


def load_state_dict_strict(model: nn.Module, sd: dict, source: str) -> None:
    """Load `sd` into `model`, naming missing/unexpected keys and shape mismatches."""
    expected = model.state_dict()
    check_keys(expected, sd, source)
    check_shapes(expected, sd, source)
    model.load_state_dict(sd)


def load_pretrained(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Load a model from our format (a folder or its config.json) or a public CAT-Seg checkpoint (.pth)."""
    p = Path(path)
    if p.is_file() and p.suffix in (".pth", ".pt", ".pkl"):
        from escnet.models.catseg import CATSeg
        from escnet.weights.catseg import load_catseg_checkpoint

        cfg, sd = load_catseg_checkpoint(p)
        model = CATSeg(cfg)
        load_state_dict_strict(model, sd, str(p))
        return model.to(map_location)
    if p.is_file() and p.name == CONFIG_NAME:
        p = p.parent
    elif p.is_file():
        raise WeightsError(f"{path}: not a model; give a model folder (with {CONFIG_NAME} and {WEIGHTS_NAME}), "
                           f"its {CONFIG_NAME}, or a CAT-Seg checkpoint (.pth / .pt / .pkl)")
    if not p.is_dir():
        raise FileNotFoundError(f"model not found: {path} (expected a folder with {CONFIG_NAME} and {WEIGHTS_NAME}, "
                                f"or a CAT-Seg .pth checkpoint)")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (p / name).is_file():
            raise FileNotFoundError(f"model folder {p} has no {name}")
    try:
        data = json.loads((p / CONFIG_NAME).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigValidationError(f"{p / CONFIG_NAME}: not valid JSON ({e})") from None
    except RecursionError:
        raise ConfigValidationError(f"{p / CONFIG_NAME}: nested too deeply to be a model config") from None
    if not isinstance(data, dict):
        raise ConfigValidationError(f"{p / CONFIG_NAME}: expected a JSON object of config fields, got a {type(data).__name__}")
    arch = data.get("arch")
    if arch not in ARCHS:
        raise ConfigValidationError(f"{p / CONFIG_NAME}: arch must be one of {', '.join(ARCHS)}, got {arch!r:.60}")
    cfg_cls, model_cls = _classes(arch)
    cfg = config_from_dict(cfg_cls, data, str(p / CONFIG_NAME), model_cls)
    model = model_cls(cfg)
    from safetensors.torch import load_file

    try:
        sd = load_file(str(p / WEIGHTS_NAME))
    except Exception as e:  # noqa: BLE001 - re-raised naming the file
        raise WeightsError(f"{p / WEIGHTS_NAME}: not a readable safetensors file ({e})") from None
    load_state_dict_strict(model, sd, str(p / WEIGHTS_NAME))
    return model.to(map_location)


def build_escnet_init(preset: str, clip_path: str | os.PathLike, sam_path: str | os.PathLike | None,
                      **overrides) -> nn.Module:
    """ESC-Net training initialisation: CLIP from an OpenAI / open_clip / HF CLIP file, or the
    fine-tuned CLIP of a public CAT-Seg checkpoint (.pth; the better warm start), plus the SAM
    mask-decoder pieces (sam_vit_{b,l,h}.pth or HF SamModel) copied into every ESC block."""
    from escnet.models.escnet import ESCNet

    model = ESCNet(make_config("escnet", preset, **overrides))
    clip_sd = _clip_state_from(clip_path, model.cfg.clip.image_size)
    load_state_dict_strict(model.clip, clip_sd, str(clip_path))
    if sam_path is not None:
        from escnet.weights.sam import load_sam_decoder_weights

        sam_sd = load_sam_decoder_weights(sam_path)
        block_sd = model.sam[0].state_dict()
        wanted = {k for k in block_sd if k.split(".")[0] in ("prompt_encoder", "transformer", "iou_token", "mask_tokens")}
        check_keys(wanted, sam_sd, str(sam_path))
        check_shapes(block_sd, sam_sd, str(sam_path))
        model.load_sam_weights(sam_sd)
    return model


def _clip_state_from(path: str | os.PathLike, image_size: int) -> dict:
    p = Path(path)
    if p.is_file() and p.suffix == ".pth":
        from escnet.weights.catseg import load_catseg_checkpoint

        try:
            _, sd = load_catseg_checkpoint(p)
        except WeightsError:
            sd = None
        if sd is not None:
            return {k[len("clip."):]: v for k, v in sd.items() if k.startswith("clip.")}
    from escnet.weights.clip import load_clip_weights

    _, sd = load_clip_weights(p, image_size=image_size)
    return sd


def _is_sam_attention(module: nn.Module) -> bool:
    from escnet.models.sam import Attention

    return isinstance(module, Attention)


def param_groups(model: nn.Module, lr: float = 2e-4, low_lr: float = 2e-6, weight_decay: float = 1e-4) -> list[dict]:
    """AdamW groups per DESIGN.md: trainable CLIP weights (q/v projections) and SAM attention at
    `low_lr`, the rest at `lr`; no weight decay on norms, biases and embeddings (1-D tensors and
    nn.Embedding / norm-layer weights). Frozen parameters are left out. Each group has a 'name'."""
    low_ids = {id(p) for p in model.clip.parameters()}
    for m in model.modules():
        if _is_sam_attention(m):
            low_ids.update(id(p) for p in m.parameters())
    no_decay_ids = set()
    for m in model.modules():
        if isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.Embedding, nn.BatchNorm2d)) or type(m).__name__ == "LayerNorm2d":
            no_decay_ids.update(id(p) for p in m.parameters(recurse=False))
    groups: dict[str, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        low = id(p) in low_ids
        decay = p.dim() > 1 and id(p) not in no_decay_ids
        key = f"{'low' if low else 'main'}_{'decay' if decay else 'no_decay'}"
        g = groups.setdefault(key, {"name": key, "params": [], "param_names": [], "lr": low_lr if low else lr,
                                    "weight_decay": weight_decay if decay else 0.0})
        g["params"].append(p)
        g["param_names"].append(name)
    return [groups[k] for k in sorted(groups)]


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
