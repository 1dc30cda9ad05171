"""The interfaces other tools expect, over escnet's models and results.

    from escnet.inference.adapters import post_process_semantic_segmentation, to_detections
    from escnet.inference.outputs import pipeline_output

    labels = post_process_semantic_segmentation(logits, target_sizes=[(480, 640)])  # transformers-style
    pipeline_output(result)  # [{"label": "cat", "score": 0.91, "mask": <PIL "L" image>}, ...]
    detections = to_detections(result)  # supervision.Detections (pip install 'escnet[supervision]')

- `post_process_semantic_segmentation(outputs, target_sizes)`: the method of the same name on
  Hugging Face image processors (SegFormer, Mask2Former, ...), for code written against them: model
  logits (B, T, h, w) -> one (H, W) label map per image. escnet's models are sigmoid models and
  CAT-Seg's evaluation takes the sigmoid before resizing (escnet.inference.protocol), so this does
  the same: sigmoid, bilinear resize to the target size (align_corners=False), argmax, in class
  chunks (escnet.inference.segmenter.upsample_argmax). transformers resizes the logits; for a
  sigmoid the two orders can differ where classes are close, and this one is the model's own.
- The `pipeline("image-segmentation")` list is `escnet.inference.outputs.pipeline_output` (one home).
- `to_detections(result)`: a `supervision.Detections` with one detection per class present: xyxy
  (N, 4) boxes around each class's pixels (supervision's `mask_to_xyxy`), mask (N, H, W) bool, class_id (N,) ids into the
  vocabulary, confidence (N,) the class scores (None when the result has none), data["class_name"].
  supervision is optional and imported only here.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import numpy as np
import torch

from escnet.inference.outputs import class_masks
from escnet.inference.segmenter import upsample_argmax

SUPERVISION_HINT = "supervision is not installed: pip install 'escnet[supervision]' (or: pip install supervision)"
_CHUNK = 64  # classes resized at a time


def _logits(outputs: Any) -> torch.Tensor:
    """A (B, T, h, w) tensor, a mapping with "logits", or an object with `.logits`."""
    if isinstance(outputs, Mapping):
        if "logits" not in outputs:
            raise ValueError("post_process_semantic_segmentation: outputs has no 'logits'")
        outputs = outputs["logits"]
    elif not isinstance(outputs, torch.Tensor) and hasattr(outputs, "logits"):
        outputs = outputs.logits
    if not isinstance(outputs, torch.Tensor) or outputs.ndim != 4:
        shape = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
        raise ValueError(f"post_process_semantic_segmentation: expected logits (B, T, h, w), got {shape}")
    return outputs


def post_process_semantic_segmentation(
    outputs: Any, target_sizes: Optional[Union[Sequence[Sequence[int]], torch.Tensor]] = None
) -> list[torch.Tensor]:
    """Model logits (B, T, h, w) (a tensor, {"logits": ...} or an object with `.logits`) -> a list
    of B label maps, long tensors (H_i, W_i) at target_sizes[i] = (H_i, W_i), or (h, w) when
    target_sizes is None. The order is sigmoid, bilinear resize, argmax (module docstring)."""
    logits = _logits(outputs)
    if target_sizes is not None:
        sizes = [tuple(int(v) for v in size) for size in (target_sizes.tolist() if isinstance(target_sizes, torch.Tensor)
                                                          else target_sizes)]
        if len(sizes) != logits.shape[0]:
            raise ValueError(f"post_process_semantic_segmentation: {len(sizes)} target size(s) for a batch of "
                             f"{logits.shape[0]}; give one (H, W) per image")
        if any(len(s) != 2 or min(s) < 1 for s in sizes):
            raise ValueError(f"post_process_semantic_segmentation: target sizes must be (H, W) >= 1, got {sizes}")
    else:
        sizes = [tuple(logits.shape[-2:])] * logits.shape[0]
    probs = logits.float().sigmoid()
    return [upsample_argmax(p, size, _CHUNK)[0] for p, size in zip(probs, sizes)]


def to_detections(result):
    """A SegmentationResult -> supervision.Detections, one detection per class present (module
    docstring). A one-line ImportError with the install command when supervision is missing."""
    try:
        import supervision as sv
    except ImportError:
        raise ImportError(SUPERVISION_HINT) from None
    masks = class_masks(result)  # every pixel has a class: at least one
    mask = np.stack([m["mask"] for m in masks])
    return sv.Detections(
        xyxy=sv.mask_to_xyxy(mask).astype(np.float32),  # supervision's own boxes of masks
        mask=mask,
        class_id=np.asarray([m["id"] for m in masks], dtype=np.int64),
        confidence=None if result.scores is None else np.asarray([m["score"] for m in masks], dtype=np.float32),
        data={"class_name": np.asarray([m["label"] for m in masks], dtype=str)},
    )
