"""Mask prediction decoder (paper Sec. 3.6): U-Net style bilinear upsampling + 3x3 convolutions,
with the two CLIP skip features as guidance, applied to every class's embedding in one batch."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _conv_gn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(max(cout // 16, 1), cout), nn.ReLU(inplace=True)]


class UpBlock(nn.Module):
    """x2 bilinear upsampling, concatenation with the (projected) skip, two conv-GN-ReLU.

    The skip is the same for every class of an image, so the first conv's skip part is computed once
    per image and broadcast over the classes (a conv over a concatenation is the sum of the convs
    over its parts): the same result without T copies of the skip."""

    def __init__(self, cin: int, guidance: int, cout: int):
        super().__init__()
        self.cin = cin
        self.convs = nn.Sequential(*_conv_gn_relu(cin + guidance, cout), *_conv_gn_relu(cout, cout))

    def forward(self, x: Tensor, guidance: Tensor) -> Tensor:
        """x (B*T, Cin, h, w), guidance (B, G, 2h, 2w) shared by each image's T classes -> (B*T, Cout, 2h, 2w)."""
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        conv = self.convs[0]
        y = F.conv2d(x, conv.weight[:, :self.cin], padding=1)  # (B*T, Cout, 2h, 2w)
        g = F.conv2d(guidance, conv.weight[:, self.cin:], padding=1)  # (B, Cout, 2h, 2w)
        b = guidance.shape[0]
        y = (y.view(b, -1, *y.shape[1:]) + g.unsqueeze(1)).flatten(0, 1)
        return self.convs[1:](y)


class SkipProjector(nn.Module):
    """CLIP skip tokens -> decoder guidance: ConvTranspose x2 / x4 (as CAT-Seg), then 1x1 projection.

    vision_width: W of the CLIP tower; dims: channels after upsampling (256, 128);
    proj_dims: channels the decoder sees (32, 16).
    """

    def __init__(self, vision_width: int, dims: tuple[int, int], proj_dims: tuple[int, int]):
        super().__init__()
        self.up1 = nn.ConvTranspose2d(vision_width, dims[0], 2, stride=2)
        self.up2 = nn.ConvTranspose2d(vision_width, dims[1], 4, stride=4)
        self.proj1 = nn.Conv2d(dims[0], proj_dims[0], 1)
        self.proj2 = nn.Conv2d(dims[1], proj_dims[1], 1)

    def forward(self, skips: list[Tensor]) -> tuple[Tensor, Tensor]:
        """skips [(B, W, h, w), (B, W, h, w)] (shallower first) -> (B, p1, 2h, 2w), (B, p2, 4h, 4w)."""
        return self.proj1(self.up1(skips[0])), self.proj2(self.up2(skips[1]))


class Decoder(nn.Module):
    """Per-class decoder: embedding (B, C, T, h, w) + skips -> logits (B, T, 4h, 4w)."""

    def __init__(self, dim: int, dims: tuple[int, int], proj_dims: tuple[int, int]):
        super().__init__()
        self.up1 = UpBlock(dim, proj_dims[0], dims[0])
        self.up2 = UpBlock(dims[0], proj_dims[1], dims[1])
        self.head = nn.Conv2d(dims[1], 1, 3, padding=1)

    def forward(self, x: Tensor, guidance: tuple[Tensor, Tensor]) -> Tensor:
        """x (B, C, T, h, w), guidance ((B, p1, 2h, 2w), (B, p2, 4h, 4w)) -> (B, T, 4h, 4w)."""
        b, c, t, h, w = x.shape
        # channels-last, made dense at the smallest size: CPU bilinear upsampling and convolution are
        # several times faster in that layout (measured: 2x upsampling of 150 x 128 x 24 x 24, 0.05 s
        # vs 0.56 s), and E arrives channels-last already (VLF's class attention works on (..., C))
        y = x.transpose(1, 2).reshape(b * t, c, h, w).contiguous(memory_format=torch.channels_last)
        y = self.up2(self.up1(y, guidance[0]), guidance[1])
        return self.head(y).reshape(b, t, 4 * h, 4 * w)
