"""detectron2.modeling: the registries (fvcore's Registry, as detectron2), `build_model`,
`build_sem_seg_head`, `build_backbone`, `Backbone`, `ShapeSpec`."""
from __future__ import annotations

from fvcore.common.registry import Registry

from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import Backbone

META_ARCH_REGISTRY = Registry("META_ARCH")
SEM_SEG_HEADS_REGISTRY = Registry("SEM_SEG_HEADS")
BACKBONE_REGISTRY = Registry("BACKBONE")

__all__ = ["META_ARCH_REGISTRY", "SEM_SEG_HEADS_REGISTRY", "BACKBONE_REGISTRY", "Backbone", "ShapeSpec",
           "build_model", "build_sem_seg_head", "build_backbone"]


def build_model(cfg):
    """The meta-architecture named by cfg.MODEL.META_ARCHITECTURE, on cfg.MODEL.DEVICE."""
    model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
    return model.to(cfg.MODEL.DEVICE)


def build_sem_seg_head(cfg, input_shape):
    return SEM_SEG_HEADS_REGISTRY.get(cfg.MODEL.SEM_SEG_HEAD.NAME)(cfg, input_shape)


def build_backbone(cfg, input_shape=None):
    return BACKBONE_REGISTRY.get(cfg.MODEL.BACKBONE.NAME)(cfg, input_shape)
