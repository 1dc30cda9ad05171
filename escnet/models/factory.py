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


def save_pretrained(model: nn.Module, directory: str | os.PathLike, card: dict | None = None) -> Path:
    """Write `config.json` + `model.safetensors` + the model card `README.md` (each atomically) to
    `directory`. card: keyword arguments of escnet.modelcard.render_model_card (training, metrics,
    source, licence, name) beyond the config."""
    from safetensors.torch import save_file

    from escnet.modelcard import CARD_NAME, render_model_card

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(out / WEIGHTS_NAME, lambda p: save_file(sd, p, metadata={"format": "pt", "arch": model.cfg.arch}),
                 mode=0o666)  # a model folder is for sharing: readable like any file the user makes
    text = json.dumps(config_to_dict(model.cfg), indent=2)
    atomic_write(out / CONFIG_NAME, lambda p: Path(p).write_text(text))
    readme = render_model_card(config_to_dict(model.cfg), **(card or {}))
    atomic_write(out / CARD_NAME, lambda p: Path(p).write_text(readme))
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
    if hasattr(cfg_cls, "upgrade"):
        data = cfg_cls.upgrade(data)
    cfg = config_from_dict(cfg_cls, data, str(p / CONFIG_NAME), model_cls)
    model = model_cls(cfg)
    from safetensors.torch import load_file

    try:
        sd = load_file(str(p / WEIGHTS_NAME))
    except Exception as e:  # noqa: BLE001 - re-raised naming the file
        raise WeightsError(f"{p / WEIGHTS_NAME}: not a readable safetensors file ({e})") from None
    if hasattr(model_cls, "upgrade_state_dict"):
        sd = model_cls.upgrade_state_dict(sd)
    load_state_dict_strict(model, sd, str(p / WEIGHTS_NAME))
    return model.to(map_location)


def build_escnet_init(preset: str, clip_path: str | os.PathLike | None, sam_path: str | os.PathLike | None,
                      **overrides) -> nn.Module:
    """ESC-Net training initialisation: CLIP from an OpenAI / open_clip / HF CLIP file, or the
    fine-tuned CLIP of a public CAT-Seg checkpoint (.pth; the better warm start), plus the SAM
    mask-decoder pieces (sam_vit_{b,l,h}.pth or HF SamModel) copied into every ESC block.
    Either may be None (kept random: a tiny CLIP trained from scratch, or random SAM blocks)."""
    from escnet.models.escnet import ESCNet

    model = ESCNet(make_config("escnet", preset, **overrides))
    if clip_path is not None:
        clip_sd = _clip_state_from(clip_path, model.cfg.clip.image_size)
        load_state_dict_strict(model.clip, clip_sd, str(clip_path))
    if sam_path is not None:
        from escnet.weights.sam import load_sam_decoder_weights

        sam_sd = load_sam_decoder_weights(sam_path)
        for i, block in enumerate(model.sam):
            block_sd = block.state_dict()
            wanted = {k for k in block_sd if k.split(".")[0] in ("prompt_encoder", "transformer", "iou_token", "mask_tokens")}
            mapped = model.sam_block_state(i, sam_sd)
            check_keys(wanted, mapped, f"{sam_path} (layers {block.transformer.seeds} for ESC block {i})")
            check_shapes(block_sd, mapped, str(sam_path))
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


SAM_LR_RULES = ("all", "attention")
_PRETRAINED_SAM = ("prompt_encoder", "transformer", "iou_token", "mask_tokens")


def _pretrained_sam_params(model: nn.Module, rule: str) -> set[int]:
    """ids of the SAM parameters trained at the low rate: rule 'all' = every pretrained SAM piece
    (attention, MLP, norms, prompt encoder, output tokens; the paper: "the CLIP encoder and SAM blocks
    are trained with 2e-6"), 'attention' = SAM's attention layers only. The layers ESC-Net adds around
    SAM (image projection, eq. 2's merge conv, text token projection) are new and train at the main rate."""
    from escnet.models.sam import Attention

    if rule not in SAM_LR_RULES:
        raise ValueError(f"unknown SAM learning-rate rule {rule!r}; choose from {', '.join(SAM_LR_RULES)}")
    ids: set[int] = set()
    for block in getattr(model, "sam", None) or []:
        for name, child in block.named_children():
            if name not in _PRETRAINED_SAM:
                continue
            if rule == "all":
                ids.update(id(p) for p in child.parameters())
            else:
                ids.update(id(p) for m in child.modules() if isinstance(m, Attention) for p in m.parameters())
    return ids


def param_groups(model: nn.Module, lr: float = 2e-4, low_lr: float = 2e-6, weight_decay: float = 1e-4,
                 sam_rule: str = "all") -> list[dict]:
    """AdamW groups: trainable CLIP weights and the pretrained SAM pieces (`sam_rule`, see
    `_pretrained_sam_params`) at `low_lr`, the rest at `lr`; no weight decay on norms, biases and
    embeddings (1-D tensors and nn.Embedding / norm-layer weights). Frozen parameters are left out.
    Each group has a 'name'."""
    low_ids = {id(p) for p in model.clip.parameters()} | _pretrained_sam_params(model, sam_rule)
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
