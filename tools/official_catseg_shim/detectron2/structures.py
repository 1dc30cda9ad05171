"""detectron2.structures: `ImageList` (a batch of images padded to a common, divisible size)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class ImageList:
    """tensor (N, C, H_pad, W_pad) and the unpadded image_sizes [(h, w)] (detectron2's ImageList)."""

    def __init__(self, tensor: torch.Tensor, image_sizes: list[tuple[int, int]]):
        self.tensor = tensor
        self.image_sizes = image_sizes

    def __len__(self) -> int:
        return len(self.image_sizes)

    @property
    def device(self):
        return self.tensor.device

    @staticmethod
    def from_tensors(tensors, size_divisibility: int = 0, pad_value: float = 0.0, padding_constraints=None) -> ImageList:
        """Pad each (C, H, W) at the bottom and right with pad_value to the batch's largest H and W,
        each rounded up to a multiple of size_divisibility (when > 1), and stack."""
        if not tensors:
            raise ValueError("ImageList.from_tensors needs at least one tensor")
        sizes = [(int(t.shape[-2]), int(t.shape[-1])) for t in tensors]
        max_h, max_w = max(s[0] for s in sizes), max(s[1] for s in sizes)
        if size_divisibility > 1:
            max_h = math.ceil(max_h / size_divisibility) * size_divisibility
            max_w = math.ceil(max_w / size_divisibility) * size_divisibility
        batch = torch.stack([F.pad(t, (0, max_w - s[1], 0, max_h - s[0]), value=pad_value)
                             for t, s in zip(tensors, sizes)])
        return ImageList(batch, sizes)
