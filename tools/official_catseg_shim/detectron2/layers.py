"""detectron2.layers: `Conv2d` (nn.Conv2d with optional norm and activation), `ShapeSpec`, `get_norm`
(imported by cat_seg_head.py; the ViT-B model path does not call them)."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ShapeSpec:
    channels: int | None = None
    height: int | None = None
    width: int | None = None
    stride: int | None = None


class Conv2d(nn.Conv2d):
    def __init__(self, *args, norm=None, activation=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x):
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


def get_norm(norm, out_channels: int):
    """'' / None -> None; 'BN' -> BatchNorm2d; 'GN' -> GroupNorm(32); a callable -> norm(out_channels)."""
    if not norm:
        return None
    if callable(norm):
        return norm(out_channels)
    table = {"BN": nn.BatchNorm2d, "GN": lambda c: nn.GroupNorm(32, c)}
    if norm not in table:
        raise ValueError(f"this shim's get_norm knows {sorted(table)}, not {norm!r}")
    return table[norm](out_channels)
