"""The model's life cycle, the one place that wires weight files into modules: our save format
(config.json + model.safetensors + model card), loading any supported checkpoint, and the training
initialisation from CLIP + SAM files. Above escnet.models (pure modules, configs, presets) and
escnet.weights (pure format converters); below inference, evaluation, training and the commands."""
from __future__ import annotations

import dataclasses
import json
import os
import typing
from pathlib import Path

import torch
from torch import nn

from escnet.fileio import atomic_write
from escnet.models.factory import ARCHS, arch_classes, model_from_config
from escnet.models.validation import ConfigValidationError, validate_config, validate_fields
from escnet.weights.common import WeightsError, check_keys, check_shapes, safetensors_header

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


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
    cfg_cls, model_cls = arch_classes(arch)
    if hasattr(cfg_cls, "upgrade"):
        data = cfg_cls.upgrade(data)
    cfg = config_from_dict(cfg_cls, data, str(p / CONFIG_NAME), model_cls)
    # keys and shapes against the weights file's header, on the meta device: a small config.json that
    # declares a huge model is refused before its memory is committed
    header = safetensors_header(p / WEIGHTS_NAME)
    if hasattr(model_cls, "upgrade_state_dict"):
        header = model_cls.upgrade_state_dict(header)
    with torch.device("meta"):
        expected = model_cls(cfg).state_dict()
    check_keys(expected, header, str(p / WEIGHTS_NAME))
    check_shapes(expected, header, str(p / WEIGHTS_NAME))
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


def build_init(cfg, clip_path: str | os.PathLike | None = None, sam_path: str | os.PathLike | None = None) -> nn.Module:
    """The training initialisation of a built config (escnet.models.factory.make_config): CLIP from an
    OpenAI / open_clip / HF CLIP file, or the fine-tuned CLIP of a public CAT-Seg checkpoint (.pth; the
    better warm start), plus (ESC-Net) the SAM mask-decoder pieces (sam_vit_{b,l,h}.pth or HF SamModel)
    copied into every ESC block. Either may be None (kept random: a tiny CLIP trained from scratch, or
    random SAM blocks)."""
    if sam_path is not None and cfg.arch != "escnet":
        raise ValueError(f"{cfg.arch} has no SAM blocks to initialise from {sam_path}")
    model = model_from_config(cfg)
    if clip_path is not None:
        clip_sd = _clip_state_from(clip_path, cfg.clip.image_size)
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
