"""Public CAT-Seg checkpoints (model_base.pth, model_large.pth) <-> our CATSeg state dict.

CAT-Seg's files are detectron2 checkpoints {"model": state_dict} of its `CATSeg` meta-architecture.
Key mapping (everything else is an error naming the key):

    sem_seg_head.predictor.clip_model.*   -> clip.*          (OpenAI CLIP, attention split into
                                                              q/k/v_proj_weight + in_proj_bias)
    sem_seg_head.predictor.transformer.*  -> transformer.*   (the Aggregator)
    upsample1.*, upsample2.*              -> unchanged       (ConvTranspose of the CLIP skips; they
                                                              live on CAT-Seg's top-level module)
    dropped: transformer.layers.*.swin_block.block_*.attn_mask (a buffer we rebuild at run time for
             any grid) and pixel_mean / pixel_std / clip_pixel_mean / clip_pixel_std (detectron2
             buffers; CAT-Seg marks them non-persistent, older files may still hold them).

CAT-Seg keeps CLIP's positional embedding at the pretraining grid (14 x 14 for ViT-B/16 @ 224) and
resizes it bicubically at run time; we resize it once here to the grid of `cfg.clip.image_size`, which
gives the same numbers.

Every size that a state dict shows is read from it (`infer_config`), so checkpoints with other CLIP
towers load too: CLIP's widths, depths, patch, embedding size, context length and vocabulary
(escnet.weights.clip.convert_openai_state_dict; heads = width // 64, OpenAI's rule), and the
aggregator's dimensions. CAT-Seg's code fixes the CLIP token grid at 24 x 24 (cat_seg_model.py
rearranges the tokens with H=24; clip_resolution 384 for ViT-B/16, 336 for ViT-L/14), so CLIP runs
at 24 x patch.
"""
from __future__ import annotations

import os
import re

import torch
from torch import Tensor

from escnet.models.catseg import CATSeg, CATSegConfig
from escnet.models.clip import resize_pos_embed
from escnet.models.swin import effective_window, window_attention_mask
from escnet.models.validation import validate_config
from escnet.weights.clip import convert_openai_state_dict
from escnet.weights.common import WeightsError, check_keys, check_shapes, read_state_dict

PREFIX = "sem_seg_head.predictor."
# (our prefix, CAT-Seg prefix)
_RENAMES = [
    ("clip.", PREFIX + "clip_model."),
    ("transformer.", PREFIX + "transformer."),
    ("upsample1.", "upsample1."),
    ("upsample2.", "upsample2."),
]
_DETECTRON2_BUFFERS = {"pixel_mean", "pixel_std", "clip_pixel_mean", "clip_pixel_std"}
_ATTN_MASK = re.compile(r"^transformer\.layers\.(\d+)\.swin_block\.block_[12]\.attn_mask$")
CATSEG_GRID = 24  # CLIP's token grid in CAT-Seg's code (module docstring)
_POS = "clip.visual.positional_embedding"


def from_catseg_names(sd: dict[str, Tensor], source: str = "CAT-Seg checkpoint") -> dict[str, Tensor]:
    """Rename a CAT-Seg state dict to ours, dropping the buffers listed in the module docstring.

    Keys that match no rule are kept unchanged, so the later key check names them as unexpected.
    """
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if key in _DETECTRON2_BUFFERS:
            continue
        ours = next((o + key[len(c):] for o, c in _RENAMES if key.startswith(c)), key)
        if _ATTN_MASK.match(ours):
            continue
        if ours in out:
            raise WeightsError(f"{source}: two keys map to {ours}")
        out[ours] = value
    return out


def to_catseg_names(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our CATSeg state dict -> CAT-Seg's key names (no buffers added)."""
    out = {}
    for key, value in sd.items():
        rule = next(((o, c) for o, c in _RENAMES if key.startswith(o)), None)
        if rule is None:
            raise WeightsError(f"{key}: not a CATSeg parameter (expected clip.*, transformer.*, upsample1/2.*)")
        out[rule[1] + key[len(rule[0]):]] = value
    return out


def _count(sd: dict[str, Tensor], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in sd if (m := rx.match(k))})


def _need(sd: dict[str, Tensor], key: str, source: str) -> Tensor:
    if key not in sd:
        raise WeightsError(f"{source}: missing key {key} (is this a CAT-Seg checkpoint?)")
    return sd[key]


def infer_config(sd: dict[str, Tensor], source: str = "CAT-Seg checkpoint") -> CATSegConfig:
    """CATSegConfig from the tensor shapes of a state dict in our names (module docstring).

    Not visible in shapes, CAT-Seg's values are assumed: aggregator heads 4 and window 12, and the
    skip layers (3, 7) for 12 CLIP layers, (7, 15) for 24 (other depths: the same thirds). Files
    without class-padding tokens were trained by CAT-Seg code without padding/truncation, so they
    get pad_len 0 and class_truncation None.
    """
    patch = _need(sd, "clip.visual.conv1.weight", source).shape[-1]
    clip = {k[len("clip."):]: v for k, v in sd.items() if k.startswith("clip.")}
    clip_cfg, _ = convert_openai_state_dict(clip, image_size=CATSEG_GRID * patch, source=source)
    t = "transformer."
    fields = dict(
        clip=clip_cfg,
        hidden_dim=_need(sd, t + "conv1.weight", source).shape[0],
        stem_kernel=sd[t + "conv1.weight"].shape[-1],
        num_layers=_count(sd, r"^transformer\.layers\.(\d+)\."),
        text_guidance_proj_dim=_need(sd, t + "text_guidance_projection.0.weight", source).shape[0],
        appearance_guidance_proj_dim=_need(sd, t + "guidance_projection.0.weight", source).shape[0],
        decoder_dims=tuple(_need(sd, f"{t}decoder{i}.conv.double_conv.0.weight", source).shape[0] for i in (1, 2)),
        skip_dims=tuple(_need(sd, f"upsample{i}.weight", source).shape[1] for i in (1, 2)),
        skip_proj_dims=tuple(_need(sd, f"{t}decoder_guidance_projection.{i}.0.weight", source).shape[0] for i in (0, 1)),
    )
    if "transformer.layers.0.attention.padding_tokens" not in sd:
        fields.update(pad_len=0, class_truncation=None)
    try:
        cfg = CATSegConfig(**fields)
    except ValueError as e:
        raise WeightsError(f"{source}: inconsistent CAT-Seg sizes ({e})") from None
    # the same checks as a config.json: types, ranges and the parameter bound (counted on the meta device)
    validate_config(cfg, f"{source}: CAT-Seg config inferred from its tensor shapes", CATSeg)
    return cfg


def load_catseg_checkpoint(path: str | os.PathLike, cfg: CATSegConfig | None = None) -> tuple[CATSegConfig, dict[str, Tensor]]:
    """Read a CAT-Seg detectron2 checkpoint -> (config, state dict for `CATSeg(config)`).

    cfg: the configuration to load into; None infers it from the tensor shapes (`infer_config`).
    Raises WeightsError naming missing / unexpected keys and mismatched shapes.
    """
    source = os.fspath(path)
    sd = from_catseg_names(read_state_dict(path), source)
    if cfg is None:
        cfg = infer_config(sd, source)
    if _POS in sd:
        pos = sd[_POS]
        if pos.dim() != 2:
            raise WeightsError(f"{source}: {_POS} has shape {tuple(pos.shape)}, expected (1 + g*g, width)")
        try:
            sd[_POS] = resize_pos_embed(pos, cfg.clip.image_size // cfg.clip.patch_size)
        except ValueError as e:
            raise WeightsError(f"{source}: {_POS}: {e}") from None
    with torch.device("meta"):
        expected = CATSeg(cfg).state_dict()
    check_keys(expected, sd, source)
    check_shapes(expected, sd, source)
    return cfg, sd


def save_catseg_checkpoint(model: CATSeg, path: str | os.PathLike, clip_grid: int | None = None) -> None:
    """Write `model` as CAT-Seg's code would save it: torch.save({"model": sd}) with CAT-Seg's key names,
    the Swin `attn_mask` buffers CAT-Seg registers (for its fixed feature grid), and CLIP's positional
    embedding at `clip_grid` (e.g. 14 for a ViT-B/16 file; None keeps ours). Used by tests and to hand
    our weights to CAT-Seg's code.
    """
    cfg = model.cfg
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if clip_grid is not None:
        sd[_POS] = resize_pos_embed(sd[_POS], clip_grid)
    grid = cfg.clip.image_size // cfg.clip.patch_size
    window, shift = effective_window(grid, grid, cfg.window, cfg.window // 2)
    mask = window_attention_mask(grid, grid, window, shift) if shift else None
    if mask is not None:
        for i in range(cfg.num_layers):
            sd[f"transformer.layers.{i}.swin_block.block_2.attn_mask"] = mask
    torch.save({"model": to_catseg_names(sd)}, os.fspath(path))
