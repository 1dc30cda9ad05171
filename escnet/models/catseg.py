"""CAT-Seg (Cho et al., CVPR 2024): cost aggregation over CLIP image-text correlations.

Built to match the public code (cvlab-kaist/CAT-Seg: cat_seg_model.py, modeling/transformer/model.py,
cat_seg_predictor.py) so its checkpoints load by renaming only: our `clip` is its
`sem_seg_head.predictor.clip_model`, our `transformer` its `sem_seg_head.predictor.transformer`, and
`upsample1` / `upsample2` keep their top-level names (see escnet/weights/catseg.py).

Data flow for B images, T classes, an h x w token grid (24 x 24 at the paper's sizes):

    images (B, 3, H, W) -> CLIP -> F_v (B, D, h, w), skips from two resblocks (B, W, h, w)
    [T > class_truncation: keep the top-k classes per image by max cosine, logit -100 for the rest]
    C0 = cos(F_v, F_l) (B, T, h, w) -> 7x7 conv -> E (B, T, C, h, w)
    per layer: Swin pair over space (q/k see projected F_v), linear attention over classes (q/k see
               projected text), classes padded with a learnable token up to pad_len
    decoder: 2 x [ConvTranspose x2, concat projected skip, 2 x (conv3x3, GroupNorm, ReLU)], conv3x3 -> 1
    logits (B, T, 4h, 4w) -> bilinear to (B, T, H, W)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from escnet.models.clip import CLIP, CLIPConfig
from escnet.models.common import CLIP_MEAN, CLIP_STD, CLIPBackedModel, run_block
from escnet.models.swin import ClassAttentionLayer, SwinBlockPair

# forward's class_truncation default: the config's `class_truncation`. An argument, not a config
# change, picks another per call, so one model can serve callers with different class modes at once.
FROM_CONFIG = "config"


@dataclass
class CATSegConfig:
    """CAT-Seg hyper-parameters (defaults: configs/vitb_384.yaml; CAT-Seg yaml keys in comments)."""

    clip: CLIPConfig = field(default_factory=lambda: CLIPConfig.preset("vitb16"))
    arch: str = "catseg"
    crop_size: int = 384  # INPUT.CROP.SIZE; the view is resized to clip.image_size before CLIP (ViT-L: 336)
    pixel_mean: tuple[float, float, float] = CLIP_MEAN  # MODEL.CLIP_PIXEL_MEAN (0..255 scale)
    pixel_std: tuple[float, float, float] = CLIP_STD  # MODEL.CLIP_PIXEL_STD
    template: str = "A photo of a {} in the scene"  # PROMPT_ENSEMBLE_TYPE "single"
    clip_finetune: str = "attention"  # CLIP_FINETUNE: attention (q/v projection weights) | full | none
    hidden_dim: int = 128  # HIDDEN_DIMS: C of the correlation embedding E
    heads: int = 4  # NUM_HEADS (Swin and class attention)
    window: int = 12  # WINDOW_SIZES (Swin window; the second block shifts by window // 2)
    num_layers: int = 2  # NUM_LAYERS aggregator layers
    stem_kernel: int = 7  # the correlation embedding conv (conv1)
    text_guidance_proj_dim: int = 128  # TEXT_GUIDANCE_PROJ_DIM (input dim = clip.embed_dim)
    appearance_guidance_proj_dim: int = 128  # APPEARANCE_GUIDANCE_PROJ_DIM (input dim = clip.embed_dim)
    decoder_dims: tuple[int, int] = (64, 32)  # DECODER_DIMS
    skip_dims: tuple[int, int] = (256, 128)  # DECODER_GUIDANCE_DIMS: channels after upsample1 / upsample2
    skip_proj_dims: tuple[int, int] = (32, 16)  # DECODER_GUIDANCE_PROJ_DIMS
    pooling_train: tuple[int, int] = (2, 2)  # POOLING_SIZES before class attention in training
    pooling_eval: tuple[int, int] = (1, 1)  # ... at evaluation (CAT-Seg's eval.sh sets [1, 1])
    pad_len: int = 256  # class axis padded with a learnable token up to this length (0 = off)
    class_truncation: int | None = 256  # T > this: keep the top-k classes (CAT-Seg: = pad_len); None = all
    grad_checkpointing: bool = False  # training: recompute each aggregator layer and the decoder in backward (not in CAT-Seg)

    def __post_init__(self) -> None:
        for name in ("decoder_dims", "skip_dims", "skip_proj_dims", "pooling_train", "pooling_eval", "pixel_mean", "pixel_std"):
            setattr(self, name, tuple(getattr(self, name)))
        if self.hidden_dim % self.heads:
            raise ValueError(f"CATSegConfig: hidden_dim {self.hidden_dim} is not divisible by heads {self.heads}")
        for d in self.decoder_dims:
            if d < 16 or d % (d // 16):
                raise ValueError(f"CATSegConfig: decoder dim {d} must be >= 16 and divisible by {max(d // 16, 1)} "
                                 "(CAT-Seg's decoder uses GroupNorm(dim // 16, dim))")
        for cin, g in zip((self.hidden_dim, self.decoder_dims[0]), self.skip_proj_dims):
            if not 0 < g < cin:
                raise ValueError(f"CATSegConfig: skip_proj_dims entry {g} must be in 1..{cin - 1} "
                                 f"(the decoder block's ConvTranspose outputs {cin} - {g} channels)")
        if self.class_truncation is not None and self.class_truncation < 1:
            raise ValueError(f"CATSegConfig: class_truncation must be None or >= 1, got {self.class_truncation}")

    @classmethod
    def preset(cls, name: str, **overrides) -> CATSegConfig:
        """`vitb16` (configs/vitb_384.yaml), `vitl14` (configs/vitl_336.yaml) or `tiny` (CPU tests)."""
        if name in ("vitb16", "vitl14"):
            kwargs = dict(clip=CLIPConfig.preset(name))
        elif name == "tiny":
            clip = CLIPConfig.preset("tiny")
            grid = clip.image_size // clip.patch_size
            # small enough to train a step on CPU in well under a second, but still exercising shifted
            # windows (window < grid), pooling, padding and truncation (pad_len 8)
            kwargs = dict(clip=clip, crop_size=clip.image_size, hidden_dim=32, heads=2, window=max(grid // 2, 1),
                          text_guidance_proj_dim=16, appearance_guidance_proj_dim=16, decoder_dims=(16, 16),
                          skip_dims=(16, 8), skip_proj_dims=(8, 8), pad_len=8, class_truncation=8)
        else:
            raise ValueError(f"unknown CAT-Seg preset {name!r}; choose from vitb16, vitl14, tiny")
        unknown = sorted(set(overrides) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown CAT-Seg config field(s): {', '.join(unknown)}")
        return cls(**{**kwargs, **overrides})


class DoubleConv(nn.Module):
    """2 x (conv3x3 no bias, GroupNorm(C // 16), ReLU) (CAT-Seg's names: double_conv.{0,1,3,4})."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.double_conv = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(cout // 16, cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.GroupNorm(cout // 16, cout), nn.ReLU(inplace=True))

    def forward(self, x: Tensor) -> Tensor:
        return self.double_conv(x)


class Up(nn.Module):
    """Decoder block: ConvTranspose x2 to (cin - g) channels, concat the g-channel guidance, DoubleConv."""

    def __init__(self, cin: int, cout: int, guidance: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin - guidance, kernel_size=2, stride=2)
        self.conv = DoubleConv(cin, cout)

    def forward(self, x: Tensor, guidance: Tensor) -> Tensor:
        """x (B, t, cin, h, w), guidance (B, g, 2h, 2w) shared by the t classes -> (B, t, cout, 2h, 2w).

        Exactly CAT-Seg's conv over concat(up(x), guidance), computed without the t copies of the
        guidance: the first conv has no bias, so it is the sum of its x part (per class) and its
        guidance part (once per image, broadcast). Channels-last inside (CPU convolutions, GroupNorm
        and the transposed conv are faster in that layout); the result is a channels-last view."""
        b, t = x.shape[:2]
        y = self.up(x.flatten(0, 1).contiguous(memory_format=torch.channels_last))
        first = self.conv.double_conv[0]
        c = y.shape[1]
        z = F.conv2d(y, first.weight[:, :c], padding=1)  # (B*t, cout, 2h, 2w)
        g = F.conv2d(guidance, first.weight[:, c:], padding=1)  # (B, cout, 2h, 2w)
        z = (z.unflatten(0, (b, t)) + g.unsqueeze(1)).flatten(0, 1).contiguous(memory_format=torch.channels_last)
        return self.conv.double_conv[1:](z).unflatten(0, (b, t))


class AggregatorLayer(nn.Module):
    """Spatial Swin pair with appearance guidance, then class attention with text guidance."""

    def __init__(self, cfg: CATSegConfig):
        super().__init__()
        self.swin_block = SwinBlockPair(cfg.hidden_dim, cfg.appearance_guidance_proj_dim, cfg.heads, cfg.window)
        self.attention = ClassAttentionLayer(cfg.hidden_dim, cfg.text_guidance_proj_dim, cfg.heads,
                                             cfg.pooling_train, cfg.pooling_eval, cfg.pad_len)

    def forward(self, x: Tensor, appearance: Tensor, text: Tensor, chunks: list[slice]) -> Tensor:
        """x (B, T, C, h, w), appearance (B, Ga, h, w), text (B, T, Gt); chunks partition the T classes.

        The Swin pair is per class, so it runs chunk by chunk. The class attention needs sums over all
        classes: pass 1 accumulates them chunk by chunk, pass 2 applies them to each chunk.
        """
        b = x.shape[0]
        x = _per_chunk(lambda c: self.swin_block(x[:, c].flatten(0, 1), appearance).unflatten(0, (b, -1)), chunks)
        if len(chunks) == 1:
            return self.attention(x, text)
        attn = self.attention
        num_pad = attn.num_padding(x.shape[1])
        length = x.shape[1] + num_pad
        state = attn.padding_state(num_pad, length) if num_pad else None
        for c in chunks:
            part = attn.state(x[:, c], text[:, c], length)
            state = part if state is None else part.add(state)
        return _per_chunk(lambda c: attn.apply_state(x[:, c], text[:, c], state, length), chunks)


def _per_chunk(fn, chunks: list[slice]) -> Tensor:
    """Concatenate fn(chunk) over class chunks along dim 1 (no copy for a single chunk)."""
    outs = [fn(c) for c in chunks]
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)


class Aggregator(nn.Module):
    """CAT-Seg's cost aggregation and decoder (parameter names as its `Aggregator`)."""

    def __init__(self, cfg: CATSegConfig):
        super().__init__()
        self.cfg = cfg
        d, c = cfg.clip.embed_dim, cfg.hidden_dim
        self.layers = nn.ModuleList(AggregatorLayer(cfg) for _ in range(cfg.num_layers))
        self.conv1 = nn.Conv2d(1, c, cfg.stem_kernel, padding=cfg.stem_kernel // 2)
        self.guidance_projection = nn.Sequential(nn.Conv2d(d, cfg.appearance_guidance_proj_dim, 3, padding=1), nn.ReLU())
        self.text_guidance_projection = nn.Sequential(nn.Linear(d, cfg.text_guidance_proj_dim), nn.ReLU())
        self.decoder_guidance_projection = nn.ModuleList(
            nn.Sequential(nn.Conv2d(s, p, 3, padding=1), nn.ReLU()) for s, p in zip(cfg.skip_dims, cfg.skip_proj_dims))
        self.decoder1 = Up(c, cfg.decoder_dims[0], cfg.skip_proj_dims[0])
        self.decoder2 = Up(cfg.decoder_dims[0], cfg.decoder_dims[1], cfg.skip_proj_dims[1])
        self.head = nn.Conv2d(cfg.decoder_dims[1], 1, 3, padding=1)

    def forward(self, feats: Tensor, text: Tensor, skips: tuple[Tensor, Tensor], class_chunk: int | None = None) -> Tensor:
        """feats F_v (B, D, h, w); text (B, T, D) L2-normalised, per image; skips: upsampled CLIP features
        ((B, s1, 2h, 2w), (B, s2, 4h, 4w)) -> logits (B, T, 4h, 4w).

        class_chunk: process the classes in chunks of this size; same result as None.
        """
        b, t = text.shape[:2]
        step = t if not class_chunk or class_chunk >= t else class_chunk
        chunks = [slice(i, i + step) for i in range(0, t, step)]
        corr = torch.einsum("bdhw,btd->bthw", F.normalize(feats, dim=1), text)
        appearance = self.guidance_projection(feats)
        text_guidance = self.text_guidance_projection(text)
        dec_guidance = [proj(s) for proj, s in zip(self.decoder_guidance_projection, skips)]
        x = _per_chunk(lambda c: self.conv1(corr[:, c].flatten(0, 1).unsqueeze(1)).unflatten(0, (b, -1)), chunks)
        for layer in self.layers:
            x = run_block(self, layer, x, appearance, text_guidance, chunks)

        def decode(c: slice) -> Tensor:
            y = self.decoder2(self.decoder1(x[:, c], dec_guidance[0]), dec_guidance[1])
            return self.head(y.flatten(0, 1)).reshape(b, -1, *y.shape[-2:])

        return run_block(self, _per_chunk, decode, chunks)


class CATSeg(CLIPBackedModel):
    """CAT-Seg. forward(images (B, 3, H, W) in 0..255, text (T, D)) -> logits (B, T, H, W).

    The classes are scored either all together (aggregated jointly; padded with learnable tokens
    when T < pad_len) or, with CAT-Seg's truncation, only the k with the highest max cosine score
    per image (the others get logit -100); `truncation` says which a forward does.
    """

    def __init__(self, cfg: CATSegConfig):
        super().__init__()
        self.cfg = cfg
        self.clip = CLIP(cfg.clip)
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).view(1, 3, 1, 1), persistent=False)
        self.transformer = Aggregator(cfg)
        w = cfg.clip.vision_width
        # shallower skip -> coarser decoder stage (x2), deeper skip -> finer stage (x4), as CAT-Seg
        self.upsample1 = nn.ConvTranspose2d(w, cfg.skip_dims[0], kernel_size=2, stride=2)
        self.upsample2 = nn.ConvTranspose2d(w, cfg.skip_dims[1], kernel_size=4, stride=4)
        # CAT-Seg's "attention" rule trains CLIP parameters whose names contain "transformer" and either
        # "attn" + q_proj/v_proj or "position"; OpenAI CLIP has no parameter matching the latter, so
        # exactly the q and v projection weights of both towers train (docs/design.md), in_proj_bias does not.
        self.set_finetune(cfg.clip_finetune)

    def select_classes(self, feats: Tensor, text: Tensor, k: int) -> Tensor:
        """Indices (B, k) of each image's k classes with the highest max cosine score over the grid.

        feats (B, D, h, w), text (T, D) L2-normalised. Sorted ascending, so the kept classes keep
        their relative order.
        """
        score = torch.einsum("bdhw,td->bthw", F.normalize(feats, dim=1), text).flatten(2).amax(-1)
        return score.topk(k, dim=1).indices.sort(dim=1).values

    def truncation(self, num_classes: int, class_truncation: int | None | str = FROM_CONFIG) -> int | None:
        """The k of the truncation a forward over `num_classes` classes applies with this
        `class_truncation` (an integer k >= 1, None: never, or FROM_CONFIG: cfg.class_truncation);
        None when every class is scored (no truncation asked for, or T <= k)."""
        k = self.cfg.class_truncation if class_truncation == FROM_CONFIG else class_truncation
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"class_truncation must be an integer >= 1, None or {FROM_CONFIG!r}, got {k!r}")
        return k if k is not None and num_classes > k else None

    def forward(self, images: Tensor, text_feats: Tensor, class_chunk: int | None = None,
                upsample: bool = True, class_truncation: int | None | str = FROM_CONFIG) -> Tensor:
        """images (B, 3, H, W) RGB 0..255; text_feats (T, D) (L2-normalised here as in CAT-Seg)
        -> logits (B, T, H, W), or the decoder's native logits (B, T, 4g, 4g) with upsample=False.

        class_chunk: aggregate the classes in chunks of this size: exactly the result of None, with
        the per-class activations bounded by the chunk size.
        class_truncation: for T > k, aggregate only each image's k best classes (`select_classes`)
        and give the others logit -100; None scores every class; default: cfg.class_truncation.
        """
        if text_feats.dim() != 2 or text_feats.shape[1] != self.cfg.clip.embed_dim:
            raise ValueError(f"text_feats must have shape (T, {self.cfg.clip.embed_dim}), got {tuple(text_feats.shape)}")
        k = self.truncation(text_feats.shape[0], class_truncation)
        feats, skips, size = self.encode_image(images)
        text = F.normalize(text_feats.to(feats.dtype), dim=-1)
        b, t = feats.shape[0], text.shape[0]
        classes = None
        if k is not None:
            classes = self.select_classes(feats, text, k)
            text_b = text[classes]  # (B, k, D)
        else:
            text_b = text.expand(b, t, -1)
        logits = self.transformer(feats, text_b, (self.upsample1(skips[0]), self.upsample2(skips[1])), class_chunk)
        if not upsample:
            size = logits.shape[-2:]
        if logits.shape[-2:] != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        if classes is None:
            return logits
        out = logits.new_full((b, t, *size), -100.0)
        return out.scatter(1, classes[:, :, None, None].expand(-1, -1, *size), logits)
