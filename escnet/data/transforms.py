"""Training augmentations of the CAT-Seg / MaskFormer semantic recipe, in numpy and Pillow.

Order (MaskFormer's ``mask_former_semantic`` dataset mapper, which CAT-Seg trains with):

1. ResizeShortestEdge: the short side to a size drawn from ``min_sizes`` (CAT-Seg: 384), the long
   side capped at ``max_size`` (detectron2's rounding); image bilinear, labels nearest (Pillow, as
   detectron2's ResizeTransform).
2. Random crop of ``crop`` x ``crop`` with the category-area constraint: up to 10 draws of the
   crop position until no single category (the ignore label not counted) covers
   ``single_category_max_area`` or more of the crop and at least two categories are present;
   1.0 turns the constraint off (CAT-Seg's setting).
3. SSD colour jitter (brightness, then contrast / saturation / hue in one of two orders, each
   applied with probability 1/2, on 8-bit values with OpenCV's HSV conventions: H in 0..179).
4. Horizontal flip with probability 1/2.
5. Padding to ``crop`` x ``crop`` (image 0, labels ignore) when the resized image is smaller.

Every random draw comes from the ``numpy.random.Generator`` passed in, so a sample's augmentation
is a pure function of its seed (exact resume, any number of loader workers).
Arrays: image (H, W, 3) uint8 RGB, label (H, W) integer class ids.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


def shortest_edge_size(height: int, width: int, short: int, max_size: int) -> tuple[int, int]:
    """(new H, new W) of detectron2's ResizeShortestEdge.get_output_shape (its rounding included), each at
    least 1: for an extreme aspect ratio (1 x 1281 with max_size 424) the max_size rescale rounds the short
    side to 0, where detectron2 would fail; it is kept at 1 pixel."""
    scale = short / min(height, width)
    if height < width:
        new_h, new_w = short, scale * width
    else:
        new_h, new_w = scale * height, short
    if max(new_h, new_w) > max_size:
        rescale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * rescale, new_w * rescale
    return max(1, int(new_h + 0.5)), max(1, int(new_w + 0.5))


def resize(image: np.ndarray, label: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize to size = (H, W): image bilinear, labels nearest (labels keep their integer dtype)."""
    if image.shape[:2] == tuple(size):
        return image, label
    h, w = size
    out_image = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    # mode "I" (int32) holds any label value, 16-bit ids included
    out_label = np.asarray(Image.fromarray(label.astype(np.int32)).resize((w, h), Image.NEAREST))
    return out_image, out_label.astype(label.dtype)


def crop_window(label: np.ndarray, crop: int, rng: np.random.Generator, single_category_max_area: float = 1.0,
                ignore_label: int = 255) -> tuple[int, int, int, int]:
    """(y0, x0, h, w) of a random crop (detectron2's RandomCrop_CategoryAreaConstraint, absolute size)."""
    height, width = label.shape
    ch, cw = min(crop, height), min(crop, width)
    y0 = x0 = 0
    for _ in range(10 if single_category_max_area < 1.0 else 1):
        y0 = int(rng.integers(height - ch + 1))
        x0 = int(rng.integers(width - cw + 1))
        if single_category_max_area >= 1.0:
            break
        values, counts = np.unique(label[y0:y0 + ch, x0:x0 + cw], return_counts=True)
        counts = counts[values != ignore_label]
        if len(counts) > 1 and counts.max() < counts.sum() * single_category_max_area:
            break
    return y0, x0, ch, cw


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB -> uint8 HSV with OpenCV's 8-bit ranges (H 0..179 in 2-degree steps, S and V 0..255)."""
    x = rgb.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = x.max(-1)
    delta = v - x.min(-1)
    s = np.where(v > 0, 255.0 * delta / np.maximum(v, 1e-6), 0.0)
    safe = np.maximum(delta, 1e-6)
    h = np.where(v == r, 60.0 * (g - b) / safe, np.where(v == g, 120.0 + 60.0 * (b - r) / safe,
                                                         240.0 + 60.0 * (r - g) / safe))
    h = np.where(delta > 0, np.mod(h, 360.0), 0.0)
    out = np.stack([np.round(h / 2.0) % 180, np.round(s), v], -1)
    return np.clip(out, 0, 255).astype(np.uint8)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of `rgb_to_hsv` (uint8 HSV with H in 0..179 -> uint8 RGB)."""
    x = hsv.astype(np.float32)
    h = (x[..., 0] * 2.0) % 360.0 / 60.0
    s, v = x[..., 1] / 255.0, x[..., 2]
    sector = np.floor(h).astype(np.int64) % 6
    f = h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    # (R, G, B) of the six hue sectors, each a choice among v, p, q, t
    table = np.stack([np.stack(c, -1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))])
    rgb = np.take_along_axis(table, sector[None, ..., None], 0)[0]
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


@dataclass
class ColorJitter:
    """SSD photometric distortion (MaskFormer's ColorAugSSDTransform defaults)."""

    brightness_delta: float = 32
    contrast_range: tuple[float, float] = (0.5, 1.5)
    saturation_range: tuple[float, float] = (0.5, 1.5)
    hue_delta: int = 18

    @staticmethod
    def _affine(x: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def _contrast(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.integers(2):
            img = self._affine(img, alpha=rng.uniform(*self.contrast_range))
        return img

    def _saturation(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.integers(2):
            hsv = rgb_to_hsv(img)
            hsv[..., 1] = self._affine(hsv[..., 1], alpha=rng.uniform(*self.saturation_range))
            img = hsv_to_rgb(hsv)
        return img

    def _hue(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.integers(2):
            shift = int(rng.integers(-self.hue_delta, self.hue_delta + 1))
            if shift:
                hsv = rgb_to_hsv(img)
                hsv[..., 0] = (hsv[..., 0].astype(np.int64) + shift) % 180
                img = hsv_to_rgb(hsv)
        return img

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """img (H, W, 3) uint8 RGB -> jittered copy (H, W, 3) uint8."""
        if rng.integers(2):
            img = self._affine(img, beta=rng.uniform(-self.brightness_delta, self.brightness_delta))
        if rng.integers(2):
            img = self._hue(self._saturation(self._contrast(img, rng), rng), rng)
        else:
            img = self._contrast(self._hue(self._saturation(img, rng), rng), rng)
        return img


@dataclass
class TrainAugmentation:
    """The whole training pipeline (module docstring). Call with (image, label, rng)."""

    crop: int = 384
    min_sizes: tuple[int, ...] = (384,)
    max_size: int = 1333
    single_category_max_area: float = 1.0
    color: ColorJitter | None = None
    flip: bool = True
    ignore_label: int = 255

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """image (H, W, 3) uint8, label (H, W) -> (crop, crop, 3) uint8, (crop, crop) int64."""
        short = int(self.min_sizes[rng.integers(len(self.min_sizes))])
        image, label = resize(image, label, shortest_edge_size(*label.shape, short, self.max_size))
        y0, x0, h, w = crop_window(label, self.crop, rng, self.single_category_max_area, self.ignore_label)
        image, label = image[y0:y0 + h, x0:x0 + w], label[y0:y0 + h, x0:x0 + w]
        if self.color is not None:
            image = self.color(image, rng)
        if self.flip and rng.integers(2):
            image, label = image[:, ::-1], label[:, ::-1]
        out_image = np.zeros((self.crop, self.crop, 3), np.uint8)
        out_label = np.full((self.crop, self.crop), self.ignore_label, np.int64)
        out_image[:h, :w], out_label[:h, :w] = image, label
        return out_image, out_label
