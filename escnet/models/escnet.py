"""ESC-Net (Lee et al., CVPR 2025): CLIP correlation refined by N ESC blocks (PPG -> SAM block -> VLF).

Data flow for B images, T classes, a g x g token grid (g = 24 at the paper's sizes):

    images (B, 3, H, W) -> CLIP -> F_v (B, D, g, g), skips;   class names -> CLIP text -> F_l (T, D)
    C0 = cos(F_v, F_l) (B, T, g, g);   E = stem(C0) (B, C, T, g, g)
    for each ESC block: map = readout(E) -> PPG -> prompts -> SAM block -> guidance (B*T, C, g, g)
                        E = VLF(E, guidance, F_l)
    logits = decoder(E, skips) (B, T, 4g, 4g) -> bilinear to (B, T, H, W)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from escnet.models.clip import CLIP, CLIPConfig
from escnet.models.decoder import Decoder, SkipProjector
from escnet.models.ppg import generate_pseudo_prompts
from escnet.models.sam import LayerNorm2d, PromptEncoder, TwoWayTransformer
from escnet.models.common import CLIP_MEAN, CLIP_STD, CLIPBackedModel, run_block
from escnet.models.vlf import VLFBlock



@dataclass
class ESCNetConfig:
    """Every choice the paper leaves open is a field here (see DESIGN.md), so it can be ablated."""

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
    ppg_tau: float = 100.0  # softmax temperature multiplier, every block (fixed: no gradient reaches PPG)
    ppg_threshold: str = "relative"  # relative: P > alpha*max(P) | uniform: P > 1/HW
    ppg_alpha: float = 0.5
    ppg_iters: int = 10
    ppg_init: str = "farthest"  # farthest | top
    ppg_source: str = "stem_inverse"  # map for PPG: stem_inverse (C0 at block 1, readout of E after) | initial (C0 always)
    prompt_points: bool = True
    prompt_masks: bool = True
    mask_combine: str = "sum"  # how the K region masks become one dense prompt: sum | union
    # SAM block
    use_sam: bool = True  # False = the paper's "W/O SAM" ablation (Table 2a)
    grad_checkpointing: bool = False  # training: recompute each ESC block and the decoder in backward (less memory)
    sam_sharing: str = "copies"  # copies: each block owns a copy of the pretrained transformer | shared
    sam_dim: int = 256
    sam_depth: int = 2
    sam_heads: int = 8
    sam_mlp_dim: int = 2048
    sam_downsample: int = 2
    sam_mask_in_chans: int = 16
    # VLF
    guidance_dim: int = 128
    heads: int = 4
    window: int = 12
    # Decoder
    decoder_dims: tuple[int, int] = (64, 32)
    skip_dims: tuple[int, int] = (256, 128)
    skip_proj_dims: tuple[int, int] = (32, 16)

    _CHOICES = {"ppg_threshold": ("relative", "uniform"), "ppg_init": ("farthest", "top"),
                "ppg_source": ("stem_inverse", "initial"), "mask_combine": ("sum", "union"),
                "sam_sharing": ("copies", "shared"), "clip_finetune": ("attention", "full", "none")}

    def __post_init__(self) -> None:
        for name in ("decoder_dims", "skip_dims", "skip_proj_dims", "pixel_mean", "pixel_std"):
            setattr(self, name, tuple(getattr(self, name)))
        for name, allowed in self._CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"ESCNetConfig.{name} = {getattr(self, name)!r}; choose one of {', '.join(allowed)}")
        if self.hidden_dim % self.heads:
            raise ValueError(f"ESCNetConfig: hidden_dim {self.hidden_dim} is not divisible by heads {self.heads}")
        if self.crop_size % self.grid:
            raise ValueError(f"ESCNetConfig: crop_size {self.crop_size} is not a multiple of the token grid {self.grid}")

    @classmethod
    def preset(cls, name: str, **overrides) -> ESCNetConfig:
        """`vitb16` / `vitl14` (paper sizes) or `tiny` (CPU tests and the synthetic benchmark)."""
        if name in ("vitb16", "vitl14"):
            cfg = cls(clip=CLIPConfig.preset(name))
        elif name == "tiny":
            clip = CLIPConfig.preset("tiny")
            cfg = cls(clip=clip, crop_size=clip.image_size, hidden_dim=32, num_blocks=2, ppg_regions=3,
                      sam_dim=32, sam_heads=2, sam_mlp_dim=64, sam_mask_in_chans=4, guidance_dim=32, heads=2,
                      window=clip.image_size // clip.patch_size // 2, decoder_dims=(16, 8), skip_dims=(16, 8),
                      skip_proj_dims=(8, 4))
        else:
            raise ValueError(f"unknown ESC-Net preset {name!r}; choose from vitb16, vitl14, tiny")
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown ESC-Net config field {unknown[0]!r}")
        return dataclasses.replace(cfg, **overrides)

    @property
    def grid(self) -> int:
        return self.clip.image_size // self.clip.patch_size


class SAMBlock(nn.Module):
    """Pretrained SAM mask-decoder pieces driven by pseudo prompts, batched over classes.

    Image: Conv1x1(D -> sam_dim) + LayerNorm2d of F_v, shared by the T classes of an image (expand, no copy).
    Tokens: SAM's IoU token + 4 mask tokens + sparse point prompts. Output: the refined image tokens
    of every class -> Conv1x1(sam_dim -> guidance_dim) = VLF's image guidance.
    """

    def __init__(self, cfg: ESCNetConfig, transformer: TwoWayTransformer, prompt_encoder: PromptEncoder):
        super().__init__()
        self.cfg = cfg
        self.image_proj = nn.Sequential(nn.Conv2d(cfg.clip.embed_dim, cfg.sam_dim, 1), LayerNorm2d(cfg.sam_dim))
        self.prompt_encoder = prompt_encoder
        self.transformer = transformer
        self.iou_token = nn.Embedding(1, cfg.sam_dim)
        self.mask_tokens = nn.Embedding(4, cfg.sam_dim)
        self.out_proj = nn.Conv2d(cfg.sam_dim, cfg.guidance_dim, 1)

    def forward(self, feats: Tensor, corr: Tensor) -> Tensor:
        """feats F_v (B, D, g, g), corr (B, T, g, g) maps for PPG -> guidance (B*T, G, g, g)."""
        cfg = self.cfg
        b, t, g, _ = corr.shape
        n = b * t
        pp = generate_pseudo_prompts(corr.reshape(n, g, g), num_regions=cfg.ppg_regions, tau=cfg.ppg_tau,
                                     threshold=cfg.ppg_threshold, alpha=cfg.ppg_alpha, iters=cfg.ppg_iters,
                                     init=cfg.ppg_init, canvas_size=cfg.crop_size)
        pe = self.prompt_encoder
        if cfg.prompt_points:
            sparse = pe.embed_points(pp.points, pp.labels, pad=True)  # (N, K+1, S)
        else:
            sparse = pe.embed_points(pp.points[:, :0], pp.labels[:, :0], pad=True)
        dense = pe.no_mask_dense(n)  # (N, S, g, g)
        if cfg.prompt_masks:
            k = cfg.ppg_regions
            if cfg.mask_combine == "sum":
                masks = F.interpolate(pp.masks, scale_factor=4, mode="nearest").reshape(n * k, 1, 4 * g, 4 * g)
                emb = pe.embed_masks(masks).view(n, k, -1, g, g)
                summed = (emb * pp.valid[:, :, None, None, None]).sum(1)
            elif cfg.mask_combine == "union":
                union = pp.foreground.float()[:, None]
                summed = pe.embed_masks(F.interpolate(union, scale_factor=4, mode="nearest"))
            else:
                raise ValueError(f"unknown mask_combine {cfg.mask_combine!r} (expected 'sum' or 'union')")
            any_region = pp.valid.any(1)[:, None, None, None]
            dense = torch.where(any_region, summed, dense)
        image = self.image_proj(feats)  # (B, S, g, g)
        src = image.unsqueeze(1).expand(b, t, *image.shape[1:]).reshape(n, *image.shape[1:]) + dense
        tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], 0)
        tokens = torch.cat([tokens.unsqueeze(0).expand(n, -1, -1), sparse], 1)
        _, keys = self.transformer(src, pe.get_dense_pe(), tokens)  # keys (N, g*g, S)
        return self.out_proj(keys.transpose(1, 2).reshape(n, -1, g, g))


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
            make_tf = lambda: TwoWayTransformer(depth=cfg.sam_depth, embedding_dim=cfg.sam_dim,  # noqa: E731
                                                num_heads=cfg.sam_heads, mlp_dim=cfg.sam_mlp_dim,
                                                attention_downsample_rate=cfg.sam_downsample)
            if cfg.sam_sharing == "copies":
                self.sam = nn.ModuleList(SAMBlock(cfg, make_tf(), make_pe()) for _ in range(cfg.num_blocks))
            elif cfg.sam_sharing == "shared":
                tf, pe = make_tf(), make_pe()
                self.sam = nn.ModuleList(SAMBlock(cfg, tf, pe) for _ in range(cfg.num_blocks))
            else:
                raise ValueError(f"unknown sam_sharing {cfg.sam_sharing!r} (expected 'copies' or 'shared')")
        guidance = cfg.guidance_dim if cfg.use_sam else 0
        self.vlf = nn.ModuleList(VLFBlock(c, guidance, d, cfg.heads, cfg.window) for _ in range(cfg.num_blocks))
        self.skips = SkipProjector(cfg.clip.vision_width, cfg.skip_dims, cfg.skip_proj_dims)
        self.decoder = Decoder(c, cfg.decoder_dims, cfg.skip_proj_dims)
        self.set_finetune(cfg.clip_finetune)

    def load_sam_weights(self, sd: dict[str, Tensor]) -> None:
        """Copy pretrained SAM decoder pieces (keys prompt_encoder.*, transformer.*, iou_token.weight,
        mask_tokens.weight) into every ESC block."""
        for block in self.sam:
            block.load_state_dict(sd, strict=False)

    def _readout(self, e: Tensor) -> Tensor:
        """Project E (B, C, T, g, g) back onto the stem direction -> (B, T, g, g); equals C0 for E = stem(C0).

        PPG has no gradient, so a learned readout would never train; the stem's own weights give a
        map on the cosine scale that tracks the refined embedding.
        """
        w = self.stem.weight[:, 0, self.cfg.stem_kernel // 2, self.cfg.stem_kernel // 2]  # (C,)
        centre = e - self.stem.bias.view(1, -1, 1, 1, 1)
        return torch.einsum("bcthw,c->bthw", centre, w) / w.pow(2).sum()

    def forward(self, images: Tensor, text: Tensor, class_chunk: int | None = None) -> Tensor:
        """images (B, 3, H, W) RGB 0..255, text (T, D) L2-normalised -> logits (B, T, H, W).

        class_chunk: run the per-class part on chunks of this many classes (exact, bounded memory).
        """
        feats, skips, out_size = self.encode_image(images)
        guidance = self.skips(skips)
        states = [blk.classes.text_state(text) for blk in self.vlf]
        t = text.shape[0]
        step = t if not class_chunk or class_chunk >= t else class_chunk
        outs = [self._classes_forward(feats, text[i:i + step], guidance, states, t) for i in range(0, t, step)]
        logits = torch.cat(outs, 1) if len(outs) > 1 else outs[0]
        return F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)

    def _classes_forward(self, feats: Tensor, text: Tensor, guidance, states, num_classes: int) -> Tensor:
        """feats (B, D, g, g), text (T', D) -> low-res logits (B, T', 4g, 4g)."""
        b, _, g, _ = feats.shape
        corr = torch.einsum("bdhw,td->bthw", F.normalize(feats, dim=1), F.normalize(text, dim=-1))
        e = self.stem(corr.reshape(-1, 1, g, g)).view(b, corr.shape[1], -1, g, g).transpose(1, 2)
        for i in range(len(self.vlf)):
            e = run_block(self, self._esc_block, i, e, corr, feats, states[i], num_classes)
        return run_block(self, self.decoder, e, guidance)

    def _esc_block(self, i: int, e: Tensor, corr: Tensor, feats: Tensor, state, num_classes: int) -> Tensor:
        """ESC block i: PPG -> SAM block -> VLF. e (B, C, T', g, g) -> (B, C, T', g, g)."""
        sam_guidance = None
        if self.cfg.use_sam:
            ppg_map = corr if self.cfg.ppg_source == "initial" or i == 0 else self._readout(e)
            sam_guidance = self.sam[i](feats, ppg_map.detach())
        return self.vlf[i](e, sam_guidance, state, num_classes)
