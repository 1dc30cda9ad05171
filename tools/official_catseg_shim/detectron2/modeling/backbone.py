"""detectron2.modeling.backbone: the `Backbone` base class (CAT-Seg's ViT path passes backbone=None)."""
from __future__ import annotations

from torch import nn


class Backbone(nn.Module):
    """A module returning a dict of named feature maps; `output_shape()` describes them."""

    @property
    def size_divisibility(self) -> int:
        return 0

    @property
    def padding_constraints(self) -> dict:
        return {}

    def output_shape(self):
        from detectron2.layers import ShapeSpec

        return {name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
                for name in self._out_features}
