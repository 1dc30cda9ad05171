"""SAM mask-decoder weights (prompt encoder, two-way transformer, output tokens) from public formats.

Formats (detected from the key names, not the file name):

- official segment-anything ``sam_vit_{b,l,h}.pth``: a plain state dict with ``prompt_encoder.*``,
  ``mask_decoder.transformer.*``, ``mask_decoder.iou_token.weight``, ``mask_decoder.mask_tokens.weight``
  (our names minus the ``mask_decoder.`` prefix); ``image_encoder.*`` and SAM's mask/IoU heads are ignored.
- Hugging Face ``SamModel``: a directory with ``model.safetensors`` (or a sharded index, or
  ``pytorch_model.bin``), or one weight file. Renames: ``point_embed`` -> ``point_embeddings``,
  ``mask_embed.{conv1,layer_norm1,conv2,layer_norm2,conv3}`` -> ``mask_downscaling.{0,1,3,4,6}``,
  ``layer_normK`` -> ``normK``, ``shared_embedding.positional_embedding`` ->
  ``pe_layer.positional_encoding_gaussian_matrix``. HF ties that matrix to
  ``shared_image_embedding.positional_embedding``; a file may hold either name or both.

The decoder is the same size for SAM vit_b/l/h; its dimensions are read from the tensor shapes so
smaller (test) decoders load too.
"""
from __future__ import annotations

import json
import os
import re

import torch
from torch import Tensor

from escnet.models.sam import PromptEncoder, TwoWayTransformer
from escnet.models.validation import check_ranges
from escnet.weights.common import WeightsError, check_keys, check_shapes, read_state_dict

NUM_MASK_TOKENS = 4  # SAM: 3 multimask outputs + 1 single-mask output

# (our prefix, official prefix); the first matching prefix wins.
_OFFICIAL = [
    ("prompt_encoder.", "prompt_encoder."),
    ("transformer.", "mask_decoder.transformer."),
    ("iou_token.", "mask_decoder.iou_token."),
    ("mask_tokens.", "mask_decoder.mask_tokens."),
]
# (our prefix, HF prefix); more specific prefixes first.
_HF = [
    ("prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", "prompt_encoder.shared_embedding.positional_embedding"),
    ("prompt_encoder.point_embeddings.", "prompt_encoder.point_embed."),
    ("prompt_encoder.mask_downscaling.0.", "prompt_encoder.mask_embed.conv1."),
    ("prompt_encoder.mask_downscaling.1.", "prompt_encoder.mask_embed.layer_norm1."),
    ("prompt_encoder.mask_downscaling.3.", "prompt_encoder.mask_embed.conv2."),
    ("prompt_encoder.mask_downscaling.4.", "prompt_encoder.mask_embed.layer_norm2."),
    ("prompt_encoder.mask_downscaling.6.", "prompt_encoder.mask_embed.conv3."),
    ("prompt_encoder.", "prompt_encoder."),
    ("transformer.norm_final_attn.", "mask_decoder.transformer.layer_norm_final_attn."),
    ("transformer.", "mask_decoder.transformer."),
    ("iou_token.", "mask_decoder.iou_token."),
    ("mask_tokens.", "mask_decoder.mask_tokens."),
]
_HF_SHARED_PE = "shared_image_embedding.positional_embedding"
# Inside transformer layers only the four block norms differ; matched on our-side prefixes
# (HF keys are prefix-renamed first).
_OUR_NORM = re.compile(r"^(transformer\.layers\.\d+\.)norm([1-4])\.")
_HF_NORM = re.compile(r"^(transformer\.layers\.\d+\.)layer_norm([1-4])\.")


def _rename(key: str, table: list[tuple[str, str]], reverse: bool) -> str | None:
    """Map one key through a prefix table (ours -> file, or file -> ours with reverse); None if no prefix fits."""
    for ours, theirs in table:
        src, dst = (theirs, ours) if reverse else (ours, theirs)
        if key.startswith(src):
            return dst + key[len(src):]
    return None


def _to_file_name(key: str, fmt: str) -> str:
    """One of our keys -> its name in format `fmt` ("official" or "hf")."""
    if fmt == "hf":
        name = _rename(_OUR_NORM.sub(r"\1layer_norm\2.", key), _HF, reverse=False)
    else:
        name = _rename(key, _OFFICIAL, reverse=False)
    if name is None:
        raise WeightsError(f"{key}: not a SAM decoder key of escnet.models.sam")
    return name


def _to_our_name(key: str, fmt: str) -> str | None:
    """A file key in format `fmt` -> our name, or None for keys outside the decoder pieces."""
    if fmt == "hf":
        name = _rename(key, _HF, reverse=True)
        return None if name is None else _HF_NORM.sub(r"\1norm\2.", name)
    return _rename(key, _OFFICIAL, reverse=True)


def _expected(sd: dict[str, Tensor], source: str = "SAM weights") -> dict[str, Tensor]:
    """Meta tensors (no memory) for every key our modules have, with dims read from `sd` (our names).

    Dims that cannot be read fall back to SAM's, so absent keys are reported by name later.
    """
    def dim(key: str, axis: int, default: int) -> int:
        return sd[key].shape[axis] if key in sd and sd[key].dim() > axis else default

    embed_dim = dim("prompt_encoder.no_mask_embed.weight", 1, 256)
    mask_in_chans = dim("prompt_encoder.mask_downscaling.3.weight", 0, 16)
    mlp_dim = dim("transformer.layers.0.mlp.lin1.weight", 0, 2048)
    internal = dim("transformer.final_attn_token_to_image.q_proj.weight", 0, embed_dim // 2)
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"transformer\.layers\.(\d+)\.", k))}
    depth = max(layers) + 1 if layers else 2
    # the sizes a file declares are bounded like a config's before anything (even on meta) is built
    check_ranges({"sam_dim": embed_dim, "sam_mask_in_chans": mask_in_chans, "sam_mlp_dim": mlp_dim,
                  "sam_depth": depth}, f"{source}: sizes read from its tensor shapes")
    with torch.device("meta"):
        # Heads do not change any tensor shape; 1 always divides the attention width.
        pe = PromptEncoder(embed_dim, mask_in_chans=mask_in_chans)
        tr = TwoWayTransformer(depth, embed_dim, num_heads=1, mlp_dim=mlp_dim,
                               attention_downsample_rate=max(embed_dim // max(internal, 1), 1))
        tokens = {"iou_token.weight": torch.empty(1, embed_dim), "mask_tokens.weight": torch.empty(NUM_MASK_TOKENS, embed_dim)}
    out = {f"prompt_encoder.{k}": v for k, v in pe.state_dict().items()}
    out.update({f"transformer.{k}": v for k, v in tr.state_dict().items()})
    out.update(tokens)
    return out


def _convert(sd: dict[str, Tensor], fmt: str, source: str) -> dict[str, Tensor]:
    """Decoder keys of a file in format `fmt` -> our names, checking key names and shapes (in the file's names)."""
    ours = {}
    for k, v in sd.items():
        name = _to_our_name(k, fmt)
        if name is not None:
            ours[name] = v
    expected = {_to_file_name(k, fmt): v for k, v in _expected(ours, source).items()}
    check_keys(expected, sd, source)
    check_shapes(expected, sd, source)
    return ours


def _is_decoder_key(key: str) -> bool:
    return (key.startswith(("prompt_encoder.", "mask_decoder.transformer.", "mask_decoder.iou_token.",
                            "mask_decoder.mask_tokens.")) or key == _HF_SHARED_PE)


def convert_official_sam(sd: dict[str, Tensor], source: str = "official SAM state dict") -> dict[str, Tensor]:
    """Official segment-anything state dict -> our decoder state dict; other keys are ignored."""
    return _convert({k: v for k, v in sd.items() if _is_decoder_key(k)}, "official", source)


def convert_hf_sam(sd: dict[str, Tensor], source: str = "HF SamModel state dict") -> dict[str, Tensor]:
    """Hugging Face SamModel state dict -> our decoder state dict; other keys are ignored."""
    sd = {k: v for k, v in sd.items() if _is_decoder_key(k)}
    pe_key = _to_file_name("prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", "hf")
    shared = sd.pop(_HF_SHARED_PE, None)
    if shared is not None:
        if pe_key not in sd:
            sd[pe_key] = shared
        elif not torch.equal(sd[pe_key], shared):
            # We have one matrix for point and image positional encodings; HF ties the two.
            raise WeightsError(f"{source}: {pe_key} and {_HF_SHARED_PE} differ, but SAM uses one matrix for both")
    return _convert(sd, "hf", source)


def to_official_sam(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our decoder state dict -> official segment-anything key names (decoder keys only)."""
    return {_to_file_name(k, "official"): v for k, v in sd.items()}


def to_hf_sam(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our decoder state dict -> HF SamModel key names, including the tied shared_image_embedding copy."""
    out = {_to_file_name(k, "hf"): v for k, v in sd.items()}
    out[_HF_SHARED_PE] = sd["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"]
    return out


def _read_safetensors(path: str) -> dict[str, Tensor]:
    """Only the decoder tensors of a .safetensors file (SAM vit_h is 2.5 GB; the decoder is ~16 MB)."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys() if _is_decoder_key(k)}
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise WeightsError(f"{path}: not a readable safetensors file ({e})") from None


def _read(path: str) -> dict[str, Tensor]:
    if os.path.isdir(path):
        index = os.path.join(path, "model.safetensors.index.json")
        if os.path.isfile(index):
            with open(index) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            out = {}
            for shard in shards:
                out.update(_read_safetensors(os.path.join(path, shard)))
            return out
        for name in ("model.safetensors", "pytorch_model.bin"):
            if os.path.isfile(os.path.join(path, name)):
                return _read(os.path.join(path, name))
        raise WeightsError(f"{path}: directory has no model.safetensors, model.safetensors.index.json or pytorch_model.bin")
    if path.endswith(".safetensors") and os.path.isfile(path):
        return _read_safetensors(path)
    return read_state_dict(path)


def load_sam_decoder_weights(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read SAM's prompt encoder, two-way transformer and output tokens from an official or HF file.

    Args:
        path: official ``sam_vit_{b,l,h}.pth``; an HF SamModel directory or weight file.
    Returns:
        state dict with keys ``prompt_encoder.*``, ``transformer.*``, ``iou_token.weight``,
        ``mask_tokens.weight`` (names of ``escnet.models.sam``).
    Raises:
        WeightsError naming missing/unexpected keys or mismatched shapes, or an unrecognised file.
    """
    path = os.fspath(path)
    sd = _read(path)
    if "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix" in sd or any(
            k.startswith(("prompt_encoder.point_embeddings.", "prompt_encoder.mask_downscaling.")) for k in sd):
        return convert_official_sam(sd, f"{path} (official SAM)")
    if _HF_SHARED_PE in sd or any(
            k.startswith(("prompt_encoder.point_embed.", "prompt_encoder.mask_embed.", "prompt_encoder.shared_embedding."))
            for k in sd):
        return convert_hf_sam(sd, f"{path} (HF SamModel)")
    raise WeightsError(f"{path}: no SAM prompt-encoder keys found (expected official 'prompt_encoder.pe_layer.*' "
                       f"or HF 'prompt_encoder.point_embed.*' / '{_HF_SHARED_PE}')")
