"""Read CLIP ViT weights from the public formats into ``escnet.models.clip.CLIP`` names.

Formats (auto-detected by ``load_clip_weights``):

- OpenAI's released ``ViT-B-16.pt`` / ``ViT-L-14-336px.pt``: TorchScript archives. They are NOT read with
  ``torch.jit.load``, which would run the archive's compiled code (a module's ``__setstate__``) while loading:
  ``escnet.weights.common.read_torchscript_state_dict`` rebuilds only the tensors, with the same names
  ``torch.jit.load(...).state_dict()`` gives, and nothing in the file is run.
- Plain state dicts with OpenAI names (``visual.transformer.resblocks.0.attn.in_proj_weight`` ...): OpenAI
  state dicts and open_clip checkpoints of OpenAI-style ViT models (open_clip keeps the same names; training
  checkpoints wrap them as {"state_dict": {"module." + name: ...}}, which is unwrapped). Read weights-only.
- Hugging Face ``CLIPModel``: a directory with config.json + model.safetensors (or pytorch_model.bin), or a
  bare .safetensors file (``vision_model.encoder.layers.0.self_attn.q_proj.weight`` ...).
- Our own names (a state dict of ``CLIP``, CAT-Seg's split q / k / v naming).

The model sizes are inferred from tensor shapes. Attention heads are not visible in a state dict: they are
read from config.json when there is one and are otherwise width // 64 (OpenAI's rule, true of every released
CLIP ViT). Tensors come back as float32.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from escnet.models.clip import CLIP, CLIPConfig, default_skip_layers, resize_pos_embed
from escnet.models.validation import validate_config
from escnet.weights.common import (WeightsError, check_keys, check_shapes, is_torchscript, read_state_dict,
                                   read_torchscript_state_dict)

__all__ = [
    "load_clip_weights",
    "convert_openai_state_dict",
    "convert_hf_state_dict",
    "clip_state_to_openai",
    "read_torchscript_state_dict",
    "detect_format",
]

# entries in released files that are not weights: OpenAI's TorchScript keeps its sizes as tensors, HF keeps index buffers
_IGNORED = re.compile(r"^(input_resolution|context_length|vocab_size)$|(^|\.)position_ids$")
_BLOCK = re.compile(r"^(visual\.transformer|transformer)\.resblocks\.(\d+)\.(.+)$")

# (our block-relative name, HF block-relative name); the fused bias and the q / k / v weights are special-cased
_HF_BLOCK_NAMES = {
    "ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
    "attn.out_proj": "self_attn.out_proj",
}
_HF_TOP_NAMES = {
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
}

Source = tuple[list[str], Callable[..., Tensor]]


def _identity(t: Tensor) -> Tensor:
    return t


# outputs are fresh contiguous tensors (not views sharing storage), so the state dict can be saved as safetensors
def _transpose(t: Tensor) -> Tensor:
    return t.t().contiguous()


def _fuse(*ts: Tensor) -> Tensor:
    return torch.cat(ts)


def _chunk(i: int) -> Callable[[Tensor], Tensor]:
    return lambda t: t.chunk(3)[i].clone()


def _openai_source(key: str) -> Source:
    """Where our key comes from in an OpenAI / open_clip state dict: the fused in_proj_weight is split."""
    for i, name in enumerate(("q", "k", "v")):
        if key.endswith(f".attn.{name}_proj_weight"):
            return [key.replace(f"{name}_proj_weight", "in_proj_weight")], _chunk(i)
    return [key], _identity


def _hf_source(key: str) -> Source:
    """Where our key comes from in a Hugging Face CLIPModel state dict."""
    if key in _HF_TOP_NAMES:
        return [_HF_TOP_NAMES[key]], _identity
    if key == "visual.proj":  # nn.Linear stores (D, W); OpenAI's matrix is (W, D)
        return ["visual_projection.weight"], _transpose
    if key == "text_projection":
        return ["text_projection.weight"], _transpose
    m = _BLOCK.match(key)
    if m is None:
        raise KeyError(key)
    tower = "vision_model" if m[1] == "visual.transformer" else "text_model"
    prefix, rest = f"{tower}.encoder.layers.{m[2]}.", m[3]
    if rest == "attn.in_proj_bias":
        return [f"{prefix}self_attn.{n}_proj.bias" for n in ("q", "k", "v")], _fuse
    if rest.startswith("attn.") and rest.endswith("_proj_weight"):
        return [f"{prefix}self_attn.{rest[5]}_proj.weight"], _identity
    module, param = rest.rsplit(".", 1)
    return [f"{prefix}{_HF_BLOCK_NAMES[module]}.{param}"], _identity


def _own_source(key: str) -> Source:
    return [key], _identity


def _need(sd: Mapping[str, Tensor], key: str, source: str) -> Tensor:
    if key not in sd:
        raise WeightsError(f"{source}: missing key {key!r}; not a CLIP ViT checkpoint in the expected format")
    return sd[key]


def _num_blocks(sd: Mapping[str, Tensor], prefix: str) -> int:
    ids = {int(m[1]) for k in sd if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(ids) + 1 if ids else 0


def _infer_config(sizes: dict, image_size: int | None, source: str) -> CLIPConfig:
    """sizes: widths, depths, heads (None = width // 64), patch, stored grid, embed_dim, context, vocab."""
    patch, grid = sizes["patch"], sizes["grid"]
    if image_size is None:
        image_size = grid * patch
    if image_size % patch:
        raise WeightsError(f"{source}: image_size {image_size} is not a multiple of the patch size {patch}")
    for tower in ("vision", "text"):
        if sizes[f"{tower}_layers"] == 0:
            raise WeightsError(f"{source}: no {tower} transformer blocks found")
        if sizes.get(f"{tower}_heads") is None:
            sizes[f"{tower}_heads"] = max(sizes[f"{tower}_width"] // 64, 1)
    try:
        cfg = CLIPConfig(
            embed_dim=sizes["embed_dim"], image_size=image_size, patch_size=patch,
            vision_width=sizes["vision_width"], vision_layers=sizes["vision_layers"], vision_heads=sizes["vision_heads"],
            text_width=sizes["text_width"], text_layers=sizes["text_layers"], text_heads=sizes["text_heads"],
            context_length=sizes["context_length"], vocab_size=sizes["vocab_size"],
            skip_layers=default_skip_layers(sizes["vision_layers"]),
        )
    except ValueError as e:
        raise WeightsError(f"{source}: inconsistent sizes ({e})") from None
    # the same checks as a config.json: types, ranges and the parameter bound (counted on the meta device)
    validate_config(cfg, f"{source}: CLIP config inferred from its tensor shapes", CLIP)
    return cfg


def _grid(pos: Tensor, source: str) -> int:
    g = round((pos.shape[0] - 1) ** 0.5)
    if pos.ndim != 2 or g * g + 1 != pos.shape[0]:
        raise WeightsError(f"{source}: positional embedding of shape {tuple(pos.shape)} is not (1 + g*g, width)")
    return g


def _convert(sd: Mapping[str, Tensor], cfg: CLIPConfig, source_of: Callable[[str], Source], source: str) -> dict[str, Tensor]:
    """Check the file's keys against what ``cfg`` needs (in the file's own names), then build our state dict."""
    with torch.device("meta"):
        expected = CLIP(cfg).state_dict()
    sources = {k: source_of(k) for k in expected}
    got = {k for k in sd if not _IGNORED.search(k)}
    check_keys({s for srcs, _ in sources.values() for s in srcs}, got, source)
    out = {}
    for key, (srcs, fn) in sources.items():
        tensors = [sd[s].float() if sd[s].is_floating_point() else sd[s] for s in srcs]
        try:
            out[key] = fn(*tensors)
        except RuntimeError as e:
            raise WeightsError(f"{source}: cannot build {key} from {srcs} ({e})") from None
    out["visual.positional_embedding"] = resize_pos_embed(out["visual.positional_embedding"], cfg.grid_size)
    check_shapes(expected, out, source)
    return out


def _strip_module_prefix(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Training checkpoints (DDP) prefix every name with "module."."""
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd)


def convert_openai_state_dict(sd: Mapping[str, Tensor], image_size: int | None = None,
                              source: str = "OpenAI CLIP state dict") -> tuple[CLIPConfig, dict[str, Tensor]]:
    """OpenAI / open_clip names (fused ``attn.in_proj_weight``), or already ours (split q / k / v) -> (config, our state dict).

    image_size: resolution to run at (positional embedding resized to its grid); None keeps the checkpoint's.
    """
    sd = _strip_module_prefix(sd)
    if any(k.startswith("visual.layer1.") for k in sd):
        raise WeightsError(f"{source}: a ResNet CLIP; only ViT CLIP models are supported")
    conv = _need(sd, "visual.conv1.weight", source)
    sizes = dict(
        vision_width=conv.shape[0], patch=conv.shape[-1],
        grid=_grid(_need(sd, "visual.positional_embedding", source), source),
        embed_dim=_need(sd, "visual.proj", source).shape[-1],
        text_width=_need(sd, "ln_final.weight", source).shape[0],
        context_length=_need(sd, "positional_embedding", source).shape[0],
        vocab_size=_need(sd, "token_embedding.weight", source).shape[0],
        vision_layers=_num_blocks(sd, "visual.transformer.resblocks."),
        text_layers=_num_blocks(sd, "transformer.resblocks."),
    )
    cfg = _infer_config(sizes, image_size, source)
    split = "visual.transformer.resblocks.0.attn.q_proj_weight" in sd
    return cfg, _convert(sd, cfg, _own_source if split else _openai_source, source)


def convert_hf_state_dict(sd: Mapping[str, Tensor], hf_config: Mapping | None = None, image_size: int | None = None,
                          source: str = "Hugging Face CLIP state dict") -> tuple[CLIPConfig, dict[str, Tensor]]:
    """Hugging Face ``CLIPModel`` names -> (config, our state dict).

    hf_config: the parsed config.json (gives the head counts and is checked for the quick-GELU activation).
    image_size as in ``convert_openai_state_dict``.
    """
    sizes = {}
    if hf_config is not None:
        for tower in ("vision", "text"):
            sub = hf_config.get(f"{tower}_config") or {}
            act = sub.get("hidden_act", "quick_gelu")
            if act != "quick_gelu":
                raise WeightsError(f"{source}: {tower}_config.hidden_act is {act!r}; this CLIP implements quick_gelu only")
            sizes[f"{tower}_heads"] = sub.get("num_attention_heads")
    conv = _need(sd, "vision_model.embeddings.patch_embedding.weight", source)
    sizes.update(
        vision_width=conv.shape[0], patch=conv.shape[-1],
        grid=_grid(_need(sd, "vision_model.embeddings.position_embedding.weight", source), source),
        embed_dim=_need(sd, "visual_projection.weight", source).shape[0],
        text_width=_need(sd, "text_model.final_layer_norm.weight", source).shape[0],
        context_length=_need(sd, "text_model.embeddings.position_embedding.weight", source).shape[0],
        vocab_size=_need(sd, "text_model.embeddings.token_embedding.weight", source).shape[0],
        vision_layers=_num_blocks(sd, "vision_model.encoder.layers."),
        text_layers=_num_blocks(sd, "text_model.encoder.layers."),
    )
    cfg = _infer_config(sizes, image_size, source)
    return cfg, _convert(sd, cfg, _hf_source, source)


def clip_state_to_openai(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our state dict -> OpenAI / open_clip names (q / k / v weights fused back into ``attn.in_proj_weight``)."""
    out = {}
    for key, value in sd.items():
        if key.endswith(".attn.q_proj_weight"):
            base = key[: -len("q_proj_weight")]
            out[base + "in_proj_weight"] = torch.cat([sd[base + f"{n}_proj_weight"] for n in ("q", "k", "v")])
        elif not (key.endswith(".attn.k_proj_weight") or key.endswith(".attn.v_proj_weight")):
            out[key] = value
    return out


def detect_format(path: str | os.PathLike) -> str:
    """"hf-dir", "torchscript" or "state-dict" (a file whose names decide between OpenAI and HF)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return "hf-dir"
    if not os.path.isfile(path):
        raise WeightsError(f"CLIP weights not found: {path}")
    return "torchscript" if is_torchscript(path) else "state-dict"


def _read_hf_dir(path: str) -> tuple[dict[str, Tensor], dict]:
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise WeightsError(f"{path}: a Hugging Face CLIP directory needs config.json")
    with open(config_path) as f:
        hf_config = json.load(f)
    if hf_config.get("model_type", "clip") != "clip":
        raise WeightsError(f"{config_path}: model_type is {hf_config.get('model_type')!r}, expected 'clip'")
    for name in ("model.safetensors", "pytorch_model.bin"):
        if os.path.isfile(os.path.join(path, name)):
            return read_state_dict(os.path.join(path, name)), hf_config
    raise WeightsError(f"{path}: no model.safetensors or pytorch_model.bin (sharded checkpoints are not supported)")


def load_clip_weights(path: str | os.PathLike, image_size: int | None = None) -> tuple[CLIPConfig, dict[str, Tensor]]:
    """Read CLIP ViT weights in any supported format (see module docstring).

    image_size: the resolution the model will run at (e.g. 384 for CAT-Seg's ViT-B/16); the positional embedding
    is bicubically resized to image_size // patch. None keeps the checkpoint's own resolution.
    Returns (CLIPConfig, state dict in ``CLIP``'s names, float32). Raises WeightsError naming missing or
    unexpected keys (in the file's own names) and mismatched shapes.
    """
    path = os.fspath(path)
    kind = detect_format(path)
    if kind == "hf-dir":
        sd, hf_config = _read_hf_dir(path)
        return convert_hf_state_dict(sd, hf_config, image_size, source=path)
    sd = read_torchscript_state_dict(path) if kind == "torchscript" else _strip_module_prefix(read_state_dict(path))
    if any(k.startswith(("vision_model.", "text_model.")) for k in sd):
        return convert_hf_state_dict(sd, None, image_size, source=path)
    return convert_openai_state_dict(sd, image_size, source=path)
