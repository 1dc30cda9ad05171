"""ESC-Net (Lee et al., CVPR 2025): CLIP correlation refined by N ESC blocks (PPG -> SAM block -> VLF).

Data flow for B images, T classes, a g x g token grid (g = 24 at the paper's sizes), L = g*g:

    images (B, 3, H, W) -> CLIP -> F_v (B, D, g, g), skips;   class names -> CLIP text -> F_l (T, D)
    C0 = cos(F_v, F_l) (B, T, g, g);   E = stem(C0) (B, C, T, g, g)
    for each ESC block: map = C0 (block 1) or the readout of E on C0's scale (`ppg_map`)
                        -> PPG (escnet/models/ppg.py, docs/ppg.md) -> prompts (B*T sets) -> SAM block -> F'_v
                        E = VLF(E, F'_v, F_l)
    logits = decoder(E, skips) (B, T, 4g, 4g) -> bilinear to (B, T, H, W)

The paper's reading is the default (docs/design.md): one SAM two-way attention layer per ESC block,
the per-class refined image tokens (F_v^n)' merged by eq. (2) into ONE class-agnostic F'_v per image
(a 1x1 conv over [F_v ; mean_n (F_v^n)'], order-agnostic and valid for any T), and one Swin block per
VLF. Today's earlier reading (per-class guidance, SAM's whole two-layer transformer per block, a Swin
pair per VLF) is `ESCNetConfig.preset(..., reading="legacy")`; each choice is a field of its own.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from escnet.models.clip import CLIP, CLIPConfig
from escnet.models.common import CLIP_MEAN, CLIP_STD, CLIPBackedModel, run_block
from escnet.models.decoder import Decoder, SkipProjector
from escnet.models.catseg import FROM_CONFIG
from escnet.models.ppg import (INITS, LEGACY_THRESHOLDS, MASK_COMBINES, THRESHOLDS, PseudoPromptGenerator, PseudoPrompts,
                               class_logsumexp, mask_prompt, smooth_maps)
from escnet.models.mask_decoder import MLP
from escnet.models.sam import Attention, LayerNorm2d, PromptEncoder, TwoWayAttentionBlock
from escnet.models.vlf import VLFBlock

# Named readings of the paper: field overrides applied by `ESCNetConfig.preset(name, reading=...)`.
READINGS: dict[str, dict] = {
    "paper": {},  # the defaults below
    # The paper's reading without the feed-forward after the class attention (the paper names only the
    # attention): the cheapest configuration.
    "efficient": {"class_ffn": False},
    # escnet's reading before v0.2 (and of the bundled demonstration model): not the paper's.
    "legacy": {"sam_guidance": "perclass", "sam_layers": "full", "vlf_swin": "pair", "sam_seed_layers": (0, 1)},
}
# The pseudo prompt generator and mask prompt before the PPG revision (docs/ppg.md): what a saved config
# without `ppg_smooth` ran (`ESCNetConfig.upgrade`), and part of the legacy reading.
PRE_PPG_REVISION: dict = {"ppg_threshold": "softmax_peak", "ppg_alpha": 0.5, "ppg_smooth": 1, "ppg_min_contrast": 0.0,
                          "ppg_region_min": 0.0,
                          "ppg_init": "farthest_raster", "ppg_source": "stem_inverse", "mask_combine": "sum"}
READINGS["legacy"].update(PRE_PPG_REVISION)


@dataclass
class ESCNetConfig:
    """Every choice the paper leaves open is a field here (docs/design.md), so it can be ablated."""

    clip: CLIPConfig = field(default_factory=lambda: CLIPConfig.preset("vitb16"))
    arch: str = "escnet"
    crop_size: int = 384  # side of the square view the model sees; ViT-L resizes it to clip.image_size
    pixel_mean: tuple[float, float, float] = CLIP_MEAN
    pixel_std: tuple[float, float, float] = CLIP_STD
    template: str = "A photo of a {} in the scene"
    clip_finetune: str = "attention"  # attention (q/v projection weights) | full | none
    hidden_dim: int = 128  # C of the correlation embedding E
    num_blocks: int = 4  # N ESC blocks
    stem_kernel: int = 1  # correlation embedding conv (paper: 1x1; CAT-Seg uses 7x7)
    # Pseudo prompt generator
    ppg_regions: int = 5  # N_o
    ppg_tau: float = 100.0  # softmax temperature of the softmax rules, every block (fixed: no gradient reaches PPG)
    # binary mask (Fig. 3 (c)), escnet/models/ppg.py: range (> min + alpha (max - min)) | otsu | quantile |
    # class_softmax (per-pixel softmax over classes > alpha) | softmax_peak (P > alpha max P, the rule before
    # the revision; "relative" in saved configs) | softmax_uniform (P > 1/HW; "uniform"). docs/ppg.md
    ppg_threshold: str = "range"
    ppg_alpha: float | None = None  # the rule's parameter; None: the rule's default (ppg.DEFAULT_ALPHA)
    ppg_smooth: int = 3  # k x k average of the map before the threshold (1: none)
    ppg_min_contrast: float = 0.0  # map units: a map whose smoothed max - median is below holds only noise
    ppg_region_min: float = 0.68  # a region whose point is below min + this * (max - min) holds only noise (0: off)
    ppg_iters: int = 10
    ppg_init: str = "farthest"  # farthest (ties by the map's value) | farthest_raster (ties in raster order) | top
    # map for PPG: C0 at block 1; after it stem_inverse (E projected back on the stem's direction) |
    # rescaled (that readout per map affinely set to C0's mean and std) | initial (C0 always)
    ppg_source: str = "rescaled"
    prompt_points: bool = True  # the paper's prompts: points + masks (Table 3)
    prompt_boxes: bool = False  # the smallest box around each region mask, through SAM's box embedding
    prompt_masks: bool = True
    # the dense prompt: logits (ONE mask per prompt set, +/-mask_logit on / off the regions, SAM's form) |
    # union (one {0, 1} mask) | sum | mean (of the K region masks' embeddings)
    mask_combine: str = "logits"
    mask_logit: float = 10.0
    # T > this: only each image's top-k classes by max cosine are scored, -100 for the rest (CAT-Seg's
    # rule, escnet.models.catseg); None: every class (a forward's class_truncation argument overrides it)
    class_truncation: int | None = None
    # SAM block
    use_sam: bool = True  # False = the paper's "W/O SAM" ablation (Table 2a)
    # with use_sam = false, VLF's image guidance: none (no image guidance at all) | unrefined (F_v through
    # the SAM block's image projection and a 1x1 conv, no SAM layer: the paper's words "F_v is not
    # refined", docs/readings-options.md)
    no_sam_guidance: str = "none"
    # block k+1's SAM block starts from block k's refined SAM image tokens (their mean over all classes,
    # the class-agnostic tokens eq. (2) merges) instead of projecting F_v again (block 1 projects F_v)
    sam_chain_tokens: bool = False
    sam_guidance: str = "merge"  # merge: eq. (2), one F'_v per image | perclass: each class its own
    # one: one SAM two-way attention layer per ESC block | full: SAM's whole transformer | decoder: SAM's
    # complete mask decoder (whole transformer, final token->image attention, upscaling, hypernetworks,
    # IoU head); its IoU-weighted mask of each class enters E (docs/readings-options.md)
    sam_layers: str = "one"
    sam_seed_layers: tuple[int, ...] = (0, 1)  # with "one": pretrained layer seeding block i = [i % len]
    sam_text_token: bool = False  # a class's text feature as one more prompt token (the literal SA(F_l^n))
    grad_checkpointing: bool = False  # training: recompute each ESC block and the decoder in backward (less memory)
    sam_checkpointing: bool = True  # training: recompute the SAM blocks' per-class refinement in backward (same
    # gradients; the SAM blocks are ~10 % of the forward's multiply-adds but ~1/4 of the memory kept for backward)
    sam_sharing: str = "copies"  # copies: each block owns its SAM pieces | shared: one set for all blocks
    sam_dim: int = 256
    sam_depth: int = 2  # layers of the pretrained SAM transformer (the file's; "full" runs them all)
    sam_heads: int = 8
    sam_mlp_dim: int = 2048
    sam_downsample: int = 2
    sam_mask_in_chans: int = 16
    # VLF
    vlf_swin: str = "single"  # single: one Swin block per VLF, shift alternating over blocks | pair
    class_ffn: bool = True  # feed-forward after the class attention
    # text: the paper's class attention (text as keys and values) | catseg: CAT-Seg's class aggregation
    # (keys / values from the class embeddings at each pixel, projected text (width guidance_dim) as guidance)
    class_attention: str = "text"
    guidance_dim: int = 128
    heads: int = 4
    window: int = 12
    # Decoder
    decoder_dims: tuple[int, int] = (64, 32)
    skip_dims: tuple[int, int] = (256, 128)
    skip_proj_dims: tuple[int, int] = (32, 16)

    _CHOICES = {"ppg_threshold": THRESHOLDS, "ppg_init": INITS,
                "ppg_source": ("rescaled", "stem_inverse", "initial"), "mask_combine": MASK_COMBINES,
                "sam_sharing": ("copies", "shared"), "clip_finetune": ("attention", "full", "none"),
                "sam_guidance": ("merge", "perclass"), "sam_layers": ("one", "full", "decoder"),
                "no_sam_guidance": ("none", "unrefined"), "class_attention": ("text", "catseg"),
                "vlf_swin": ("single", "pair")}

    def __post_init__(self) -> None:
        for name in ("decoder_dims", "skip_dims", "skip_proj_dims", "pixel_mean", "pixel_std", "sam_seed_layers"):
            setattr(self, name, tuple(getattr(self, name)))
        self.ppg_threshold = LEGACY_THRESHOLDS.get(self.ppg_threshold, self.ppg_threshold)
        for name, allowed in self._CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"ESCNetConfig.{name} = {getattr(self, name)!r}; choose one of {', '.join(allowed)}")
        if self.hidden_dim % self.heads:
            raise ValueError(f"ESCNetConfig: hidden_dim {self.hidden_dim} is not divisible by heads {self.heads}")
        if self.crop_size % self.grid:
            raise ValueError(f"ESCNetConfig: crop_size {self.crop_size} is not a multiple of the token grid {self.grid}")
        if not self.sam_seed_layers or any(not 0 <= i < self.sam_depth for i in self.sam_seed_layers):
            raise ValueError(f"ESCNetConfig.sam_seed_layers = {self.sam_seed_layers}: each must be a layer "
                             f"0..{self.sam_depth - 1} of the pretrained SAM transformer (sam_depth {self.sam_depth})")
        if self.ppg_smooth < 1 or self.ppg_smooth % 2 == 0:
            raise ValueError(f"ESCNetConfig.ppg_smooth = {self.ppg_smooth}: an odd filter side >= 1 (1: no smoothing)")
        if self.class_truncation is not None and self.class_truncation < 1:
            raise ValueError(f"ESCNetConfig.class_truncation must be None or >= 1, got {self.class_truncation}")
        if self.use_sam and self.no_sam_guidance != "none":
            raise ValueError(f"ESCNetConfig.no_sam_guidance = {self.no_sam_guidance!r} applies only with use_sam = false")
        if self.use_sam and not (self.prompt_points or self.prompt_boxes or self.prompt_masks or self.sam_text_token):
            raise ValueError("ESCNetConfig: the SAM block needs a prompt: enable prompt_points, prompt_boxes, "
                             "prompt_masks or sam_text_token (or set use_sam = false)")

    @classmethod
    def preset(cls, name: str, reading: str = "paper", **overrides) -> ESCNetConfig:
        """`vitb16` / `vitl14` (paper sizes) or `tiny` (CPU tests and the synthetic benchmark), in a
        named reading of the paper (READINGS: paper, efficient, legacy); overrides win over both."""
        if name in ("vitb16", "vitl14"):
            cfg = cls(clip=CLIPConfig.preset(name))
        elif name == "tiny":
            clip = CLIPConfig.preset("tiny")
            cfg = cls(clip=clip, crop_size=clip.image_size, hidden_dim=32, num_blocks=2, ppg_regions=3,
                      sam_dim=32, sam_heads=2, sam_mlp_dim=64, sam_mask_in_chans=16, guidance_dim=32, heads=2,
                      window=clip.image_size // clip.patch_size // 2, decoder_dims=(16, 8), skip_dims=(16, 8),
                      skip_proj_dims=(8, 4))
        else:
            raise ValueError(f"unknown ESC-Net preset {name!r}; choose from vitb16, vitl14, tiny")
        if reading not in READINGS:
            raise ValueError(f"unknown ESC-Net reading {reading!r}; choose from {', '.join(READINGS)}")
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown ESC-Net config field {unknown[0]!r}")
        return dataclasses.replace(cfg, **{**READINGS[reading], **overrides})

    @staticmethod
    def upgrade(data: dict) -> dict:
        """A saved config.json from before the readings existed (no `sam_guidance`) described the
        legacy reading, one from before the PPG revision (no `ppg_smooth`) the old pseudo prompts
        (PRE_PPG_REVISION; its init "farthest" broke ties in raster order): fill those fields so such
        models load and run unchanged (the bundled model is one)."""
        if "sam_guidance" not in data:
            data = {**{k: list(v) if isinstance(v, tuple) else v for k, v in READINGS["legacy"].items()
                       if k not in PRE_PPG_REVISION}, **data}
        if "ppg_smooth" not in data:
            old = {**PRE_PPG_REVISION, **{k: data[k] for k in PRE_PPG_REVISION if k in data}}
            if old["ppg_init"] == "farthest":
                old["ppg_init"] = "farthest_raster"
            old["ppg_threshold"] = LEGACY_THRESHOLDS.get(old["ppg_threshold"], old["ppg_threshold"])
            data = {**data, **old}
        return data

    @property
    def grid(self) -> int:
        return self.clip.image_size // self.clip.patch_size

    def seed_layer(self, block: int) -> int:
        """Which layer of the pretrained SAM transformer ESC block `block` starts from ("one")."""
        return self.sam_seed_layers[block % len(self.sam_seed_layers)]


class SAMLayers(nn.Module):
    """The SAM two-way attention layers an ESC block runs (names as SAM's `transformer.layers.*`):
    one (the paper's reading) or the whole pretrained depth. SAM's final token->image attention is
    not here: its output (the tokens) is never used by ESC-Net."""

    def __init__(self, cfg: ESCNetConfig, first_layer: int):
        super().__init__()
        indices = [first_layer] if cfg.sam_layers == "one" else list(range(cfg.sam_depth))  # full, decoder
        self.seeds = indices  # pretrained layer each of `layers` is loaded from
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(cfg.sam_dim, cfg.sam_heads, cfg.sam_mlp_dim, nn.ReLU, cfg.sam_downsample,
                                 skip_first_layer_pe=(i == 0))
            for i in indices)


class MaskHead(nn.Module):
    """The rest of SAM's mask decoder (sam_layers = "decoder"; names as SAM's `mask_decoder.*`, the
    final attention as its `transformer.*`): final token->image attention on the refined tokens, then
    masks = hypernetwork(mask token j) . upscaled image tokens (4 per prompt set, 4g x 4g) and the
    predicted IoUs. ESC-Net keeps ONE mask per class: the 4 masks weighted by the softmax of their
    predicted IoUs (SAM picks the best; a weighting keeps every head in the gradient), average-pooled
    to the grid; `SAMBlock.mask_embed` (1x1 conv 1 -> C) adds it to the class's embedding E."""

    def __init__(self, cfg: ESCNetConfig):
        super().__init__()
        s = cfg.sam_dim
        if s % 8:
            raise ValueError(f"ESCNetConfig: sam_layers = 'decoder' needs sam_dim divisible by 8, got {s}")
        self.final_attn_token_to_image = Attention(s, cfg.sam_heads, downsample_rate=cfg.sam_downsample)
        self.norm_final_attn = nn.LayerNorm(s)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(s, s // 4, kernel_size=2, stride=2), LayerNorm2d(s // 4), nn.GELU(),
            nn.ConvTranspose2d(s // 4, s // 8, kernel_size=2, stride=2), nn.GELU())
        self.output_hypernetworks_mlps = nn.ModuleList(MLP(s, s, s // 8, 3) for _ in range(4))
        self.iou_prediction_head = MLP(s, s, 4, 3)

    def forward(self, queries: Tensor, keys: Tensor, tokens: Tensor, pos: Tensor) -> Tensor:
        """queries (N, P, S) after the SAM layers (IoU token first, then the 4 mask tokens), keys (N, L, S),
        tokens (N, P, S) their positional encoding, pos (1, L, S) -> mask logits on the grid (N, g, g)."""
        q = self.norm_final_attn(queries + self.final_attn_token_to_image(q=queries + tokens, k=keys + pos, v=keys))
        n, length, s = keys.shape
        g = int(round(length ** 0.5))
        up = self.output_upscaling(keys.transpose(1, 2).reshape(n, s, g, g))  # (N, S/8, 4g, 4g)
        hyper = torch.stack([mlp(q[:, 1 + j]) for j, mlp in enumerate(self.output_hypernetworks_mlps)], 1)  # (N, 4, S/8)
        masks = (hyper @ up.flatten(2)).view(n, 4, *up.shape[2:])
        weight = self.iou_prediction_head(q[:, 0]).softmax(-1)  # (N, 4)
        return F.avg_pool2d(torch.einsum("nkhw,nk->nhw", masks, weight), 4)


@dataclass
class DensePrompt:
    """A dense prompt per class in factored form: dense_n = H_n @ W_c^T + beta_n, where W_c (S, m) is
    the mask encoder's last 1x1 conv. h: (N, L, m) mask features before that conv (None: no mask
    for any class); beta: (N, S) the conv bias times the region count, or no_mask_embed."""

    h: Tensor | None
    beta: Tensor
    w_c: Tensor

    def factors(self, length: int) -> tuple[Tensor, Tensor]:
        """dense_n = A_n @ D_n, rank m + 1 (17 at SAM's sizes, vs S = 256 channels): A (N, L, m + 1) =
        [H_n, 1] and D (N, m + 1, S) = [W_c^T; beta_n]; without masks A = 1 (N, L, 1), D = beta_n."""
        n = self.beta.shape[0]
        if self.h is None:
            return self.beta.new_ones(n, 1, 1).expand(n, length, 1), self.beta[:, None, :]
        d = torch.cat([self.w_c.t().unsqueeze(0).expand(n, -1, -1), self.beta[:, None, :]], 1)
        return torch.cat([self.h, self.h.new_ones(*self.h.shape[:2], 1)], 2), d

    def materialise(self) -> Tensor:
        """-> (N, L, S); (N, 1, S) without masks (the same for every position). The product of
        `factors`: one formula for the dense prompt (what the model uses is what tests compare)."""
        a, d = self.factors(1 if self.h is None else self.h.shape[1])
        return a @ d


class SAMBlock(nn.Module):
    """Pretrained SAM mask-decoder pieces driven by pseudo prompts, batched over the T classes.

    Image: Conv1x1(D -> S) + LayerNorm2d of F_v, shared by the T classes of an image. Per class n:
    keys = image + dense prompt, tokens = SAM's IoU + 4 mask tokens + sparse prompts; the SAM layer(s)
    refine the keys to (F_v^n)' (B, T, L, S). Guidance for VLF: `merge` (eq. 2) -> (B, G, g, g) or
    `perclass` -> (B*T, G, g, g).
    """

    def __init__(self, cfg: ESCNetConfig, transformer: SAMLayers, prompt_encoder: PromptEncoder, project: bool = True):
        """project: the block projects F_v to its image tokens (False: it is given the previous block's
        refined tokens, `sam_chain_tokens`, and has no projection of its own)."""
        super().__init__()
        self.cfg = cfg
        self.image_proj = (nn.Sequential(nn.Conv2d(cfg.clip.embed_dim, cfg.sam_dim, 1), LayerNorm2d(cfg.sam_dim))
                           if project else None)
        self.prompt_encoder = prompt_encoder
        self.ppg = PseudoPromptGenerator.from_config(cfg)
        self.records: list[PseudoPrompts] | None = None  # PPG's records, only while ESCNet.forward(return_ppg=True)
        self.transformer = transformer
        self.iou_token = nn.Embedding(1, cfg.sam_dim)
        self.mask_tokens = nn.Embedding(4, cfg.sam_dim)
        self.text_proj = nn.Linear(cfg.clip.embed_dim, cfg.sam_dim) if cfg.sam_text_token else None
        decoder = cfg.sam_layers == "decoder"
        self.mask_head = MaskHead(cfg) if decoder else None
        self.mask_embed = nn.Conv2d(1, cfg.hidden_dim, 1) if decoder else None  # ESC-Net's: SAM's mask into E
        if cfg.sam_guidance == "merge":
            self.merge = nn.Conv2d(2 * cfg.sam_dim, cfg.guidance_dim, 1)
        else:
            self.out_proj = nn.Conv2d(cfg.sam_dim, cfg.guidance_dim, 1)

    def project_image(self, feats: Tensor) -> Tensor:
        """F_v (B, D, g, g) -> SAM image tokens (B, S, g, g)."""
        if self.image_proj is None:
            raise ValueError("this SAM block takes the previous block's refined tokens (sam_chain_tokens): no projection of F_v")
        return self.image_proj(feats)

    def prompts(self, corr: Tensor, text: Tensor, class_lse: Tensor | None = None) -> tuple[Tensor, DensePrompt]:
        """PPG maps corr (N, g, g) and text (N, D) -> tokens (N, P, S) and the dense prompt of each class.
        class_lse: the per-pixel class normaliser for ppg_threshold "class_softmax" (see `refine`)."""
        cfg, pe = self.cfg, self.prompt_encoder
        n, g, _ = corr.shape
        pp = self.ppg(corr, class_lse)
        if self.records is not None:
            pp.source = corr.detach()
            self.records.append(pp)
        coords, labels = [pp.points[:, :0]], [pp.labels[:, :0]]
        if cfg.prompt_points:
            coords.append(pp.points)
            labels.append(pp.labels)
        if cfg.prompt_boxes:  # two corner tokens per region (labels 2, 3), "not a point" for empty regions
            coords.append(pp.boxes.reshape(n, -1, 2))
            corner = torch.tensor([2, 3], device=corr.device)
            labels.append(torch.where(pp.valid[..., None], corner, -1).reshape(n, -1))
        # SAM pads a prompt without boxes with one not-a-point token.
        sparse = pe.embed_points(torch.cat(coords, 1), torch.cat(labels, 1), pad=not cfg.prompt_boxes)
        dtype = sparse.dtype
        tokens = [self.iou_token.weight, self.mask_tokens.weight]
        tokens = [torch.cat(tokens, 0).unsqueeze(0).expand(n, -1, -1), sparse]
        if self.text_proj is not None:
            tokens.append(self.text_proj(text).unsqueeze(1))
        tokens = torch.cat(tokens, 1)

        last = pe.mask_downscaling[-1]  # the 1x1 conv: linear, so it is folded into what follows
        w_c = last.weight.flatten(1)  # (S, m)
        no_mask = pe.no_mask_embed.weight.expand(n, -1)
        if not cfg.prompt_masks:
            return tokens, DensePrompt(None, no_mask, w_c)
        # SAM embeds a mask given at 4x the grid; ours are grid masks upsampled (nearest) by 4, so every
        # 4 x 4 block the two 2x2-stride-2 convs reduce to one cell is constant. The stack before the
        # last 1x1 conv is per cell (convs on one block, per-pixel LayerNorm2d, GELU), so a cell's
        # features are e(v) of its value v. Every mask here takes two values lo / hi (region or not):
        # a cell's features are exactly e(lo) + [cell in mask] * (e(hi) - e(lo)).
        any_region = pp.valid.any(1, keepdim=True)  # (N, 1); a set without a region gets no mask
        one = mask_prompt(pp, cfg.mask_combine, cfg.mask_logit)
        if one is not None:  # ONE mask per prompt set (SAM's form): bias once
            pp.mask_prompt = one
            lo, hi = (0.0, 1.0) if cfg.mask_combine == "union" else (-cfg.mask_logit, cfg.mask_logit)
            masks, weights = (pp.regions >= 0).to(dtype)[:, None], any_region.to(dtype)
        else:  # the K region masks, each embedded as SAM would, summed or averaged
            lo, hi = 0.0, 1.0
            masks, weights = pp.masks.to(dtype), pp.valid.to(dtype)  # (N, K, g, g), (N, K)
            if cfg.mask_combine == "mean":
                weights = weights / weights.sum(1, keepdim=True).clamp(min=1)
        probe = torch.tensor([lo, hi], dtype=dtype, device=masks.device).view(2, 1, 1, 1).expand(2, 1, 4, 4)
        e_lo, e_hi = pe.mask_downscaling[:-1](probe).flatten(1)  # (m,) each
        covered = torch.einsum("nkhw,nk->nhw", masks, weights).reshape(n, g * g, 1)  # weighted mask sum per cell
        h = weights.sum(1)[:, None, None] * e_lo + covered * (e_hi - e_lo)  # (N, L, m)
        beta = torch.where(any_region, weights.sum(1, keepdim=True) * last.bias, no_mask)
        return tokens, DensePrompt(h * any_region[:, :, None].to(dtype), beta, w_c)

    def refine(self, image: Tensor, corr: Tensor, text: Tensor, class_lse: Tensor | None = None) -> Tensor:
        """image (B, S, g, g) from `project_image`, PPG maps corr (B, T', g, g), text (T', D),
        class_lse (B, g, g) the per-pixel logsumexp over ALL T classes (ppg_threshold "class_softmax"
        only) -> the refined image tokens (F_v^n)' of every class (B, T', L, S); with sam_layers =
        "decoder" also SAM's mask of every class on the grid (B, T', g, g) (`MaskHead`): a tuple."""
        b, t, g, _ = corr.shape
        tokens, dense = self.prompts(corr.reshape(b * t, g, g), text.repeat(b, 1), class_lse)
        image = image.flatten(2).transpose(1, 2)  # (B, L, S)
        pos = self.prompt_encoder.get_dense_pe().to(image.dtype).flatten(2).transpose(1, 2)  # (1, L, S)
        first, *rest = self.transformer.layers
        queries, keys = _first_layer(first, tokens, image, pos, dense, t)
        for layer in rest:
            queries, keys = layer(queries=queries, keys=keys, query_pe=tokens, key_pe=pos)
        if self.mask_head is not None:
            return keys.view(b, t, g * g, -1), self.mask_head(queries, keys, tokens, pos).view(b, t, g, g)
        return keys.view(b, t, g * g, -1)

    def embed_mask(self, e: Tensor, mask: Tensor) -> Tensor:
        """E (B, C, T', g, g) + the 1x1 conv of SAM's class masks (B, T', g, g) -> (B, C, T', g, g)."""
        w, bias = self.mask_embed.weight.flatten(), self.mask_embed.bias
        return e + torch.einsum("bthw,c->bcthw", mask.to(e.dtype), w) + bias[:, None, None, None]

    def merge_guidance(self, image: Tensor, mean_refined: Tensor) -> Tensor:
        """Eq. (2): image (B, S, g, g), mean over all T classes of (F_v^n)' (B, L, S) -> F'_v (B, G, g, g)."""
        refined = mean_refined.transpose(1, 2).reshape(image.shape)
        return self.merge(torch.cat([image, refined], 1))

    def perclass_guidance(self, refined: Tensor) -> Tensor:
        """(F_v^n)' (B, T', L, S) -> per-class guidance (B*T', G, g, g)."""
        b, t, length, s = refined.shape
        g = self.cfg.grid
        return self.out_proj(refined.reshape(b * t, length, s).transpose(1, 2).reshape(b * t, s, g, g))


def _first_layer(layer: TwoWayAttentionBlock, tokens: Tensor, image: Tensor, pos: Tensor, dense: DensePrompt,
                 t: int) -> tuple[Tensor, Tensor]:
    """SAM's TwoWayAttentionBlock on keys_n = image_b + dense_n for the t classes of each image, equal to
    `layer(tokens, keys, tokens, pos)` on the materialised keys, without materialising them.

    The dense prompt has rank r = m + 1 (`DensePrompt.factors`: dense_n = A_n D_n), so a projection of
    the keys is the image's projection (once per image) plus A_n times a small per-class (r, out) map,
    and both cross attentions' scores split the same way: an image part, one matmul per (image, head)
    over all classes, plus a class part through A_n. The only (N, L, S) tensor made is the output
    (for B > 1 images also the copies of each image it accumulates onto).

    tokens (N, P, S) (also their positional encoding, as in SAM); image (B, L, S); pos (1, L, S).
    Returns queries (N, P, S) and the refined keys (N, L, S)."""
    if layer.skip_first_layer_pe:
        queries = layer.self_attn(q=tokens, k=tokens, v=tokens)
    else:
        queries = tokens + layer.self_attn(q=tokens + tokens, k=tokens + tokens, v=tokens)
    queries = layer.norm1(queries)

    b, length, s = image.shape
    n, p, _ = tokens.shape
    a_n, d_n = dense.factors(length)  # (N, L, r), (N, r, S)
    r = a_n.shape[2]

    # token -> image: each class's P queries attend over its L keys; keys and values factored
    a = layer.cross_attn_token_to_image
    heads = a.num_heads
    dh = a.internal_dim // heads
    q = (a.q_proj(queries + tokens) * dh ** -0.5).view(b, t, p, heads, dh)
    k_img = a.k_proj(image + pos).view(b, length, heads, dh)  # its bias is every class's offset
    v_img = a.v_proj(image).view(b, length, heads, dh)
    dk = (d_n @ a.k_proj.weight.t()).view(b, t, r, heads, dh)
    dv = (d_n @ a.v_proj.weight.t()).view(n, r, heads, dh)
    scores = q.permute(0, 3, 1, 2, 4).reshape(b, heads, t * p, dh) @ k_img.permute(0, 2, 3, 1)  # (B, H, tP, L)
    low = torch.einsum("btphd,btrhd->bthpr", q, dk).reshape(n, heads * p, r) @ a_n.transpose(1, 2)  # (N, HP, L)
    scores.view(b, heads, t, p, length).add_(low.view(b, t, heads, p, length).transpose(1, 2))
    attn = scores.softmax(-1)
    out = (attn @ v_img.transpose(1, 2)).view(b, heads, t, p, dh).permute(0, 2, 3, 1, 4).reshape(n, p, heads, dh)
    through = attn.view(b, heads, t, p, length).transpose(1, 2).reshape(n, heads * p, length) @ a_n  # (N, HP, r)
    out = out + torch.einsum("nhpr,nrhd->nphd", through.view(n, heads, p, r), dv)
    queries = layer.norm2(queries + a.out_proj(out.reshape(n, p, a.internal_dim)))
    queries = layer.norm3(queries + layer.mlp(queries))

    # image -> token: each of a class's L key positions attends over that class's P tokens
    a = layer.cross_attn_image_to_token
    heads = a.num_heads
    dh = a.internal_dim // heads
    q_img = (a.q_proj(image + pos) * dh ** -0.5).view(b, length, heads, dh)
    dq = (d_n @ a.q_proj.weight.t() * dh ** -0.5).view(n, r, heads, dh)
    k = a.k_proj(queries + tokens).view(n, p, heads, dh)
    v = a.v_proj(queries).view(n, p, heads, dh)
    # scores (N, H, P, L): the softmax runs over P with L contiguous (over a last axis of P = 11 it is
    # ~15x slower on CPU)
    img_part = k.view(b, t * p, heads, dh).transpose(1, 2) @ q_img.permute(0, 2, 3, 1)  # (B, H, tP, L)
    scores = torch.einsum("nrhd,nphd->nhpr", dq, k).reshape(n, heads * p, r) @ a_n.transpose(1, 2)  # (N, HP, L)
    scores.view(b, t, heads, p, length).add_(img_part.view(b, heads, t, p, length).transpose(1, 2))
    attn = scores.view(n, heads, p, length).softmax(2).view(n, heads * p, length)
    # keys_n + attention output = [attn_n^T, A_n] @ [V_n W_o; D_n] + image_b + out_proj's bias: one
    # batched matmul accumulating onto the image (a view for one image, B copies of it for B)
    vw = torch.einsum("nphd,shd->nhps", v, a.out_proj.weight.view(s, heads, dh)).reshape(n, heads * p, s)
    base = (image + a.out_proj.bias).unsqueeze(1).expand(b, t, length, s).reshape(n, length, s)
    keys = torch.baddbmm(base, torch.cat([attn.transpose(1, 2), a_n], 2), torch.cat([vw, d_n], 1))  # (N, L, S)
    return queries, layer.norm4(keys)


class ESCNet(CLIPBackedModel):
    """ESC-Net. forward(images (B, 3, H, W) in 0..255, text (T, D)) -> logits (B, T, H, W)."""

    def __init__(self, cfg: ESCNetConfig):
        super().__init__()
        self.cfg = cfg
        c, d = cfg.hidden_dim, cfg.clip.embed_dim
        self.clip = CLIP(cfg.clip)
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).view(1, 3, 1, 1), persistent=False)
        self.stem = nn.Conv2d(1, c, cfg.stem_kernel, padding=cfg.stem_kernel // 2)
        if cfg.use_sam:
            g = cfg.grid
            make_pe = lambda: PromptEncoder(cfg.sam_dim, (g, g), (cfg.crop_size, cfg.crop_size),  # noqa: E731
                                            cfg.sam_mask_in_chans)
            project = [i == 0 or not cfg.sam_chain_tokens for i in range(cfg.num_blocks)]
            if cfg.sam_sharing == "copies":
                self.sam = nn.ModuleList(SAMBlock(cfg, SAMLayers(cfg, cfg.seed_layer(i)), make_pe(), project[i])
                                         for i in range(cfg.num_blocks))
            else:
                layers, pe = SAMLayers(cfg, cfg.seed_layer(0)), make_pe()
                self.sam = nn.ModuleList(SAMBlock(cfg, layers, pe, project[i]) for i in range(cfg.num_blocks))
            if not cfg.prompt_masks:  # never used: frozen, so that every trainable parameter gets a gradient
                for block in self.sam:
                    block.prompt_encoder.mask_downscaling.requires_grad_(False)
        guidance = cfg.guidance_dim if cfg.use_sam or cfg.no_sam_guidance == "unrefined" else 0
        # Table 2 (a) as worded: F_v, not refined, through the SAM block's image projection (Conv1x1 + LN)
        # and a 1x1 conv to the guidance width, one per ESC block
        self.unrefined = nn.ModuleList(
            nn.Sequential(nn.Conv2d(d, cfg.sam_dim, 1), LayerNorm2d(cfg.sam_dim), nn.Conv2d(cfg.sam_dim, guidance, 1))
            for _ in range(cfg.num_blocks)) if not cfg.use_sam and cfg.no_sam_guidance == "unrefined" else None
        half = cfg.window // 2
        shifts = [(0, half) if cfg.vlf_swin == "pair" else ((0,) if i % 2 == 0 else (half,))
                  for i in range(cfg.num_blocks)]
        self.vlf = nn.ModuleList(VLFBlock(c, guidance, d, cfg.heads, cfg.window, shifts[i], cfg.class_ffn,
                                          cfg.class_attention, cfg.guidance_dim)
                                 for i in range(cfg.num_blocks))
        self.skips = SkipProjector(cfg.clip.vision_width, cfg.skip_dims, cfg.skip_proj_dims)
        self.decoder = Decoder(c, cfg.decoder_dims, cfg.skip_proj_dims)
        self.set_finetune(cfg.clip_finetune)

    @staticmethod
    def upgrade_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
        """Models saved before v0.2 hold SAM's final token->image attention in every block; no reading
        uses its output, so it is no longer part of the model: drop it."""
        unused = (".transformer.final_attn_token_to_image.", ".transformer.norm_final_attn.")
        return {k: v for k, v in sd.items() if not (k.startswith("sam.") and any(u in k for u in unused))}

    def sam_block_state(self, block: int, sd: dict[str, Tensor]) -> dict[str, Tensor]:
        """The pretrained SAM decoder pieces (keys prompt_encoder.*, transformer.layers.<j>.*,
        iou_token.weight, mask_tokens.weight, as `escnet.weights.sam` reads them) that ESC block
        `block` starts from, in its own names: its layers take the pretrained layers named by
        `SAMLayers.seeds` (cfg.sam_seed_layers in the paper's reading). With sam_layers "decoder"
        also the final attention (transformer.final_attn_token_to_image.*, transformer.norm_final_attn.*)
        and, where `sd` holds them, SAM's output heads (output_upscaling.*, output_hypernetworks_mlps.*,
        iou_prediction_head.*; `escnet.weights.sam` does not read them yet) -> mask_head.*."""
        own = {k: v for k, v in sd.items() if k.startswith(("prompt_encoder.", "iou_token.", "mask_tokens."))}
        for j, seed in enumerate(self.sam[block].transformer.seeds):
            prefix = f"transformer.layers.{seed}."
            own.update({f"transformer.layers.{j}.{k[len(prefix):]}": v for k, v in sd.items() if k.startswith(prefix)})
        if self.sam[block].mask_head is not None:  # sam_layers "decoder": the rest of SAM's mask decoder
            head = {"transformer.final_attn_token_to_image.": "final_attn_token_to_image.",
                    "transformer.norm_final_attn.": "norm_final_attn.", "output_upscaling.": "output_upscaling.",
                    "output_hypernetworks_mlps.": "output_hypernetworks_mlps.", "iou_prediction_head.": "iou_prediction_head."}
            for src, dst in head.items():
                own.update({f"mask_head.{dst}{k[len(src):]}": v for k, v in sd.items() if k.startswith(src)})
        return own

    def load_sam_weights(self, sd: dict[str, Tensor]) -> None:
        """Copy pretrained SAM decoder pieces into every ESC block (see `sam_block_state`)."""
        for i, block in enumerate(self.sam):
            block.load_state_dict(self.sam_block_state(i, sd), strict=False)

    def _readout(self, e: Tensor) -> Tensor:
        """Project E (B, C, T, g, g) back onto the stem direction -> (B, T, g, g); equals C0 for E = stem(C0).

        PPG has no gradient, so a learned readout would never train; the stem's own weights give a
        map that tracks the refined embedding (its scale drifts from block to block: docs/ppg.md).
        """
        w = self.stem.weight[:, 0, self.cfg.stem_kernel // 2, self.cfg.stem_kernel // 2]  # (C,)
        return (torch.einsum("bcthw,c->bthw", e, w) - self.stem.bias @ w) / w.pow(2).sum()  # no copy of E

    def ppg_map(self, block: int, c0: Tensor, e: Tensor) -> Tensor:
        """The map ESC block `block` gives PPG (ppg_source), (B, T', g, g), no gradient: C0 (B, T', g, g)
        at block 0 (and always with "initial"); after it the readout of E (B, C, T', g, g), as it is
        ("stem_inverse") or set per map to C0's mean and standard deviation ("rescaled": the cosine
        scale, so a threshold in map units means the same in every block)."""
        src = self.cfg.ppg_source
        if block == 0 or src == "initial":
            return c0.detach()
        r = self._readout(e.detach())
        if src == "stem_inverse":
            return r
        c0 = c0.detach()
        mu, sd = r.mean((-2, -1), keepdim=True), r.std((-2, -1), keepdim=True)
        return (r - mu) / sd.clamp(min=1e-12) * c0.std((-2, -1), keepdim=True) + c0.mean((-2, -1), keepdim=True)

    def truncation(self, num_classes: int, class_truncation: int | None | str = FROM_CONFIG) -> int | None:
        """The k of CAT-Seg's truncation a forward over `num_classes` classes applies (an integer k >= 1,
        None: never, FROM_CONFIG: cfg.class_truncation); None when every class is scored."""
        k = self.cfg.class_truncation if class_truncation == FROM_CONFIG else class_truncation
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"class_truncation must be an integer >= 1, None or {FROM_CONFIG!r}, got {k!r}")
        return k if k is not None and num_classes > k else None

    @staticmethod
    def select_classes(feats: Tensor, text: Tensor, k: int) -> Tensor:
        """CAT-Seg's rule (CATSeg.select_classes): indices (B, k) of each image's k classes with the
        highest max cosine over the grid, sorted ascending. feats (B, D, g, g), text (T, D)."""
        score = torch.einsum("bdhw,td->bthw", F.normalize(feats, dim=1), F.normalize(text, dim=-1)).flatten(2).amax(-1)
        return score.topk(k, dim=1).indices.sort(dim=1).values

    def forward(self, images: Tensor, text: Tensor, class_chunk: int | None = None, upsample: bool = True,
                class_truncation: int | None | str = FROM_CONFIG, return_ppg: bool = False):
        """images (B, 3, H, W) RGB 0..255, text (T, D) L2-normalised -> logits (B, T, H, W), or the
        decoder's native logits (B, T, 4g, 4g) with upsample=False (CAT-Seg's single-view protocol
        takes the sigmoid there, before resizing).

        class_chunk: run the per-class parts on chunks of this many classes (exact, bounded memory).
        The ESC blocks run one after another over all chunks, because eq. (2)'s F'_v of a block needs
        the refined tokens of every class: only the embedding E of all classes (B, C, T, g, g) is kept.
        class_truncation: for T > k, score only each image's k classes with the highest max cosine
        (CAT-Seg's rule, `select_classes`) and give the others logit -100; None scores every class;
        default cfg.class_truncation (None).
        return_ppg: also return PPG's record of every ESC block, a list of PseudoPrompts whose fields
        lead with (B, T) (with truncation: (B, k), the classes of `select_classes`): (logits, records).
        """
        if text.dim() != 2 or text.shape[1] != self.cfg.clip.embed_dim:
            raise ValueError(f"text must have shape (T, {self.cfg.clip.embed_dim}), got {tuple(text.shape)}")
        k = self.truncation(text.shape[0], class_truncation)
        if return_ppg and not self.cfg.use_sam:
            raise ValueError("return_ppg: this ESC-Net has no SAM blocks (use_sam = false), so no pseudo prompts")
        blocks = self.sam if self.cfg.use_sam else []
        for block in blocks:
            block.records = [] if return_ppg else None
        try:
            feats, skips, out_size = self.encode_image(images)
            if k is None:
                logits = self._decode(feats, skips, text, class_chunk)
            else:  # each image its own k classes: the per-class parts run per image
                classes = self.select_classes(feats, text.to(feats.dtype), k)
                parts = [self._decode(feats[i:i + 1], [s[i:i + 1] for s in skips], text[classes[i]], class_chunk)
                         for i in range(feats.shape[0])]
                kept = torch.cat(parts, 0)
                logits = kept.new_full((kept.shape[0], text.shape[0], *kept.shape[2:]), -100.0)
                logits = logits.scatter(1, classes[:, :, None, None].expand(-1, -1, *kept.shape[2:]), kept)
            if upsample:
                logits = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
            if not return_ppg:
                return logits
            b = feats.shape[0]
            records = []
            for block in blocks:  # per block: one record per (image group, chunk), in call order
                parts = [r.reshape(-1 if k is None else 1, r.points.shape[0] // (b if k is None else 1))
                         for r in block.records]
                if k is None:
                    records.append(PseudoPrompts.cat(parts, 1))
                else:
                    chunks_per_image = len(parts) // b
                    records.append(PseudoPrompts.cat(
                        [PseudoPrompts.cat(parts[i * chunks_per_image:(i + 1) * chunks_per_image], 1) for i in range(b)], 0))
            return logits, records
        finally:
            for block in blocks:
                block.records = None

    def _decode(self, feats: Tensor, skips: list[Tensor], text: Tensor, class_chunk: int | None) -> Tensor:
        """CLIP features F_v (B, D, g, g), skips, text (T, D) -> the decoder's logits (B, T, 4g, 4g)."""
        guidance = self.skips(skips)
        text = text.to(feats.dtype)
        t = text.shape[0]
        step = t if not class_chunk or class_chunk >= t else class_chunk
        chunks = [slice(i, min(i + step, t)) for i in range(0, t, step)]
        unit = F.normalize(feats, dim=1)
        corr = [torch.einsum("bdhw,td->bthw", unit, F.normalize(text[c], dim=-1)) for c in chunks]
        b, _, g, _ = feats.shape
        es = [self.stem(x.reshape(-1, 1, g, g)).view(b, x.shape[1], -1, g, g).transpose(1, 2) for x in corr]
        tokens = None  # sam_chain_tokens: the previous SAM block's refined image tokens (B, S, g, g)
        for i, vlf in enumerate(self.vlf):
            sam_guidance = [None] * len(chunks)
            if self.cfg.use_sam:
                sam_guidance, tokens, masks = self._sam_guidance(i, feats, es, corr, text, chunks, tokens)
                if masks is not None:  # sam_layers "decoder": SAM's mask of each class enters E
                    es = [self.sam[i].embed_mask(e, m) for e, m in zip(es, masks)]
            elif self.unrefined is not None:
                sam_guidance = [self.unrefined[i](feats)] * len(chunks)
            if self.cfg.class_attention == "text":  # keys / values from text: one state per vocabulary
                state = vlf.classes.text_state(text)
                es = [run_block(self, vlf, e, s, state, t) for e, s in zip(es, sam_guidance)]
            else:  # "catseg": keys / values per pixel from every chunk's embeddings, summed, then applied
                ys = [run_block(self, vlf.spatial_part, e, s) for e, s in zip(es, sam_guidance)]
                state = None
                for y, c in zip(ys, chunks):
                    part = vlf.classes.state(y, text[c], t)
                    state = part if state is None else state.add(part)
                es = [run_block(self, vlf.class_part, y, state, t, text[c]) for y, c in zip(ys, chunks)]
        outs = [run_block(self, self.decoder, e, guidance) for e in es]
        return torch.cat(outs, 1) if len(outs) > 1 else outs[0]

    def _sam_guidance(self, i: int, feats: Tensor, es: list[Tensor], corr: list[Tensor], text: Tensor,
                      chunks: list[slice], tokens: Tensor | None = None
                      ) -> tuple[list[Tensor], Tensor | None, list[Tensor] | None]:
        """ESC block i's SAM block for every chunk -> (the guidance each chunk's VLF sees: eq. (2)'s
        F'_v (B, G, g, g) shared by all chunks (a mean over ALL classes), or (B*T', G, g, g) per chunk;
        with sam_chain_tokens the mean over all classes of the refined tokens (B, S, g, g), the next
        block's image tokens, else None; with sam_layers "decoder" SAM's class masks (B, T', g, g) per
        chunk, else None). tokens: this block's image tokens (None: project F_v)."""
        block = self.sam[i]
        image = block.project_image(feats) if tokens is None else tokens
        maps = [self.ppg_map(i, x, e) for x, e in zip(corr, es)]
        lse = None
        if block.ppg.needs_class_lse:  # the per-pixel softmax over ALL classes: its normaliser first
            tau, s = self.cfg.ppg_tau, self.cfg.ppg_smooth
            lse = torch.logsumexp(torch.stack([class_logsumexp(smooth_maps(m.flatten(0, 1), s).view(m.shape), tau)
                                               for m in maps]), 0)
        always, chain = self.cfg.sam_checkpointing, self.cfg.sam_chain_tokens
        masks = [] if block.mask_head is not None else None

        def chunk_tokens():  # one chunk's refined tokens at a time: a chunk's (B, T', L, S) is not kept
            for m, c in zip(maps, chunks):
                out = run_block(self, block.refine, image, m, text[c], lse, checkpoint_always=always)
                if masks is not None:
                    out, mask = out
                    masks.append(mask)
                yield out

        refined = chunk_tokens()
        if self.cfg.sam_guidance == "perclass":
            guidance, total = [], 0
            for r in refined:
                guidance.append(block.perclass_guidance(r))
                if chain:
                    total = total + r.sum(1)
        else:
            total = sum(r.sum(1) for r in refined)
            guidance = [block.merge_guidance(image, total / text.shape[0])] * len(chunks)
        if not chain:
            return guidance, None, masks
        return guidance, (total / text.shape[0]).transpose(1, 2).reshape(image.shape), masks
