"""SAM's mask decoder head: output tokens -> masks and predicted IoUs (Kirillov et al., 2023).

ESC-Net's SAM block uses only the two-way transformer and the output tokens of this decoder
(escnet.models.sam); the mask head here is what a promptable segmenter needs to *train* those
pieces (escnet.training.pretrain_sam). Parameter names are segment-anything's ``mask_decoder.*``
(transformer, iou_token, mask_tokens, output_upscaling, output_hypernetworks_mlps,
iou_prediction_head), so a saved model has the official checkpoint layout.

Shapes: N prompt sets, C the transformer width, (h, w) the image-embedding grid, M = 4 mask
tokens (3 multimask outputs + 1 single-mask output, index 0).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from escnet.models.sam import LayerNorm2d, TwoWayTransformer

NUM_MULTIMASK_OUTPUTS = 3


class MLP(nn.Module):
    """`num_layers` linear layers with ReLU between them: (..., input_dim) -> (..., output_dim)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip(dims, dims[1:] + [output_dim]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class MaskDecoder(nn.Module):
    """Two-way transformer over [IoU token, M mask tokens, prompt tokens] and the image tokens, then
    masks = hypernetwork(mask token) . upscaled image tokens (4x the grid), IoU = MLP(IoU token)."""

    def __init__(self, transformer: TwoWayTransformer, transformer_dim: int, iou_head_hidden_dim: int = 256,
                 iou_head_depth: int = 3, activation: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        if transformer_dim % 8:
            raise ValueError(f"MaskDecoder: transformer_dim {transformer_dim} must be divisible by 8")
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_mask_tokens = NUM_MULTIMASK_OUTPUTS + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(self, image_embeddings: Tensor, image_pe: Tensor, sparse: Tensor, dense: Tensor,
                multimask_output: bool) -> tuple[Tensor, Tensor]:
        """Predict masks.

        Args:
            image_embeddings: (N, C, h, w), one per prompt set (an ``expand``ed view is fine).
            image_pe: (1, C, h, w) positional encoding of the grid.
            sparse: (N, P, C) point / box tokens; dense: (N, C, h, w) mask-prompt embedding.
            multimask_output: return the 3 multimask outputs instead of the single-mask output.
        Returns:
            low-res mask logits (N, 3 or 1, 4h, 4w) and predicted IoUs (N, 3 or 1).
        """
        n = sparse.shape[0]
        tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], 0)
        tokens = torch.cat([tokens.unsqueeze(0).expand(n, -1, -1), sparse], 1)
        src = image_embeddings + dense
        _, c, h, w = src.shape
        hs, keys = self.transformer(src, image_pe, tokens)
        upscaled = self.output_upscaling(keys.transpose(1, 2).reshape(n, c, h, w))  # (N, C/8, 4h, 4w)
        hyper = torch.stack([mlp(hs[:, 1 + i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], 1)
        masks = (hyper @ upscaled.flatten(2)).view(n, self.num_mask_tokens, *upscaled.shape[2:])
        iou = self.iou_prediction_head(hs[:, 0])
        pick = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, pick], iou[:, pick]
