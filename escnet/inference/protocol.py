"""CAT-Seg's test-time protocol, rule by rule as the official evaluation runs it.

Sources (read for the rules, not copied): cvlab-kaist/CAT-Seg @ 3c8d854 (`cat_seg/cat_seg_model.py`:
`CATSeg.forward` in eval mode and `inference_sliding_window`; `configs/config.yaml`, `cat_seg/config.py`,
`eval.sh`) and facebookresearch/detectron2 (`data/dataset_mapper.py`, `data/detection_utils.py
build_augmentation`, `data/transforms/augmentation_impl.py ResizeShortestEdge`,
`data/transforms/transform.py ResizeTransform`, `structures/image_list.py ImageList.from_tensors`,
`modeling/postprocessing.py sem_seg_postprocess`). Below c is the model's crop (`cfg.crop_size`,
CAT-Seg's `kernel` 384), r the CLIP input side (`cfg.clip.image_size`, CAT-Seg's `clip_resolution`:
384 for ViT-B/16, 336 for ViT-L/14), n the model's native output side (4 x the CLIP token grid: 96).

1. Data mapper (`mapper_resize`). detectron2's test `DatasetMapper` applies
   `ResizeShortestEdge(INPUT.MIN_SIZE_TEST = 640, INPUT.MAX_SIZE_TEST = 2560, "choice")`: the new size
   is `get_output_shape` (short side to 640, both sides scaled down if the long side exceeds 2560,
   then `int(x + 0.5)`), and `ResizeTransform.apply_image` resizes a uint8 image with Pillow's
   BILINEAR (`Image.fromarray(img).resize((new_w, new_h))`), i.e. uint8 in, uint8 out. The model
   receives that image as float. The mapper also records the original (H, W) as the output size
   (`check_image_size`). Here 640 = S, the sliding window's side, and 2560 = 4 S, so a model with
   another crop scales them with it.
2. Sliding window (`predict_sliding`; `eval.sh` sets TEST.SLIDING_WINDOW True for every benchmark).
   stride s = int(c * (1 - 0.333)) = 256, S = c + s = 640 (`out_res`). The mapper's image is resized
   to S x S (F.interpolate bilinear, align_corners=False, no antialias); `nn.Unfold(c, stride=s)`
   cuts 2 x 2 crops in row-major order of their offsets {0, s}; the global view is the mapper's image
   resized to c x c (same resize); the five views are normalised with CLIP's mean / std and resized
   to r x r (the model does both). The model's logits are resized to c x c (bilinear, align_corners
   False) and THEN passed through the sigmoid; `nn.Fold` sums the crops and divides by the fold of
   ones (the average where they overlap); the global view's probabilities are resized to S x S; the
   result is (crops + global) / 2. `sem_seg_postprocess(out, (S, S), H, W)` crops nothing and
   resizes bilinearly (align_corners False) to the original (H, W).
3. Single view (`predict_single`; TEST.SLIDING_WINDOW False). `ImageList.from_tensors(clip_images,
   MODEL.MASK_FORMER.SIZE_DIVISIBILITY = 32)` pads the *normalised* image at the bottom and right
   with 0 up to a multiple of 32: in pixel units that is CLIP's mean colour, which is what we pad
   with (the model normalises, so the padding becomes exactly 0). The padded image is resized to
   r x r (bilinear, align_corners False, no antialias), the model's logits at its native n x n
   resolution go through the sigmoid FIRST, then `sem_seg_postprocess(probs, image_size, H, W)`
   crops `[:h', :w']` with the mapper's (unpadded) image size and resizes to (H, W). The crop is
   applied to the n x n map, not to an image-sized one, so unless h' or w' < n it removes nothing:
   the padding's share of the map is stretched into the output, exactly as the official code does.

Output: both protocols return probabilities (T, h, w) that the caller resizes to (H, W) with a plain
bilinear resize (escnet.inference.segmenter.upsample_argmax), the last step of `sem_seg_postprocess`.

Resize modes: "official" is the above. "antialias" changes only the model-side image downscales
(to S x S, the c x c global view and the single view) to antialiased ones, which alias less on large
photos; the mapper's Pillow resize (already antialiased when it shrinks) and every probability
resize are the same in both modes.
"""
from __future__ import annotations

import inspect
import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from escnet.data.images import resize_rgb
from escnet.data.transforms import shortest_edge_size
from escnet.inference.options import RESIZE_MODES
from escnet.models.catseg import FROM_CONFIG

SLIDING_OVERLAP = 0.333  # inference_sliding_window(overlap=0.333); int(384 * (1 - 0.333)) = 256
MAX_SIZE_FACTOR = 4  # INPUT.MAX_SIZE_TEST 2560 = 4 x MIN_SIZE_TEST 640
SIZE_DIVISIBILITY = 32  # cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY
NATIVE_UPSAMPLING = 4  # both decoders end at 4 x the CLIP token grid (two x2 transposed convolutions)


def sliding_geometry(crop: int) -> tuple[int, int, tuple[int, ...]]:
    """(side S, stride s, crop offsets) of the sliding window for crop c: S = c + s, offsets 0, s."""
    stride = int(crop * (1 - SLIDING_OVERLAP))
    return crop + stride, stride, (0, stride)


def check_resize(resize: str) -> str:
    if resize not in RESIZE_MODES:
        raise ValueError(f"unknown resize {resize!r}; choose one of {', '.join(RESIZE_MODES)}")
    return resize


def mapper_size(height: int, width: int, crop: int) -> tuple[int, int]:
    """(h', w') of the data mapper's ResizeShortestEdge for a model with crop c (rule 1)."""
    side = sliding_geometry(crop)[0]
    return shortest_edge_size(height, width, side, MAX_SIZE_FACTOR * side)


def mapper_resize(rgb: np.ndarray, crop: int) -> torch.Tensor:
    """The data mapper's test-time resize (rule 1): uint8 (H, W, 3) -> float (3, h', w') in 0..255."""
    resized = resize_rgb(rgb, mapper_size(rgb.shape[0], rgb.shape[1], crop))  # Pillow bilinear, uint8
    return torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1).float()


def _resize_image(image: torch.Tensor, size: tuple[int, int], resize: str) -> torch.Tensor:
    """Bilinear, align_corners=False resize of images (N, C, H, W); "antialias" antialiases shrinking."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    shrinks = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False,
                         antialias=resize == "antialias" and shrinks)


def resize_probs(probs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Plain bilinear, align_corners=False resize of (N, T, h, w): every probability resize."""
    if tuple(probs.shape[-2:]) == tuple(size):
        return probs
    return F.interpolate(probs, size=size, mode="bilinear", align_corners=False)


def _upsampling_matrix(n: int, side: int) -> torch.Tensor:
    """(side, n) float64: the 1-D operator of a bilinear, align_corners=False resize from n to side."""
    eye = torch.eye(n, dtype=torch.float64).view(n, 1, n, 1)
    return F.interpolate(eye, size=(side, 1), mode="bilinear", align_corners=False)[:, 0, :, 0].T


def model_logits(model, views: torch.Tensor, text: torch.Tensor, class_chunk: Optional[int],
                 class_truncation=FROM_CONFIG, **options) -> torch.Tensor:
    """model(views, text, class_chunk=..., **options) -> logits (N, T, h, w); class_truncation (CAT-Seg's
    top-k, escnet.models.catseg.CATSeg.forward) is passed only when given, so a model without one
    (ESC-Net) is called as it takes it."""
    if class_truncation != FROM_CONFIG:
        options["class_truncation"] = class_truncation
    return model(views, text, class_chunk=class_chunk, **options)


def native_logits(model, views: torch.Tensor, text: torch.Tensor, class_chunk: Optional[int],
                  class_truncation=FROM_CONFIG) -> torch.Tensor:
    """The model's logits (N, T, n, n) at its native resolution, before its own resize to the view.

    A model whose forward takes `upsample=False` returns them directly. Otherwise the model's final
    step, a bilinear (align_corners=False) upsampling from n x n to the view's side, is undone: an
    upsampling operator U (side, n) has full column rank, so pinv(U) U = I and the native logits are
    pinv(U) L pinv(U)^T up to float32 rounding (about 1e-6 of the logits' size).
    """
    if "upsample" in inspect.signature(model.forward).parameters:
        return model_logits(model, views, text, class_chunk, class_truncation, upsample=False).float()
    logits = model_logits(model, views, text, class_chunk, class_truncation).float()
    clip = model.cfg.clip
    n, side = NATIVE_UPSAMPLING * (clip.image_size // clip.patch_size), views.shape[-1]
    if side == n:
        return logits
    inverse = torch.linalg.pinv(_upsampling_matrix(n, side)).to(logits)  # (n, side)
    return torch.einsum("ih,nthw,jw->ntij", inverse, logits, inverse)


# Each protocol in three steps, so that the views of several images go through the model as one
# batch (Segmenter.segment with a list): views of one image -> probabilities of a batch of views ->
# merge of one image's view probabilities.


def single_views(model, image: torch.Tensor, resize: str = "official") -> tuple[torch.Tensor, tuple[int, int]]:
    """Single view (rule 3): image (3, h', w') float 0..255 from `mapper_resize` -> the padded,
    resized view (1, 3, s, s) (s = CLIP's input side) and (h', w') for `merge_single`."""
    check_resize(resize)
    _, height, width = image.shape
    padded_h = math.ceil(height / SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY
    padded_w = math.ceil(width / SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY
    mean = torch.tensor(model.cfg.pixel_mean, dtype=image.dtype, device=image.device).view(3, 1, 1)
    padded = mean.expand(3, padded_h, padded_w).clone()
    padded[:, :height, :width] = image
    side = model.cfg.clip.image_size
    return _resize_image(padded[None], (side, side), resize), (height, width)


def single_probabilities(model, views: torch.Tensor, text: torch.Tensor, class_chunk: Optional[int],
                         class_truncation=FROM_CONFIG) -> torch.Tensor:
    """views (N, 3, s, s) -> sigmoid of the native logits (N, T, n, n), float32 (the official order:
    sigmoid first, resizing later). class_truncation: see `model_logits`."""
    return native_logits(model, views, text, class_chunk, class_truncation).float().sigmoid()


def merge_single(probs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """probs (1, T, n, n) of one image -> (T, min(h', n), min(w', n)), to be resized to (H, W)."""
    height, width = size
    return probs[0, :, :height, :width]


def sliding_views(model, image: torch.Tensor, resize: str = "official") -> tuple[torch.Tensor, int]:
    """CAT-Seg's sliding window (rule 2): image (3, h', w') float 0..255 from `mapper_resize` ->
    views (5, 3, c, c): the 2 x 2 crops of the S x S resize, then the global view; and c."""
    check_resize(resize)
    crop = model.cfg.crop_size
    side, _, offsets = sliding_geometry(crop)
    square = _resize_image(image[None], (side, side), resize)[0]
    crops = [square[:, y:y + crop, x:x + crop] for y in offsets for x in offsets]
    return torch.stack(crops + [_resize_image(image[None], (crop, crop), resize)[0]]), crop


def sliding_probabilities(model, views: torch.Tensor, text: torch.Tensor, class_chunk: Optional[int],
                          class_truncation=FROM_CONFIG) -> torch.Tensor:
    """views (N, 3, c, c) -> sigmoid probabilities (N, T, c, c), float32. class_truncation: see `model_logits`."""
    logits = model_logits(model, views, text, class_chunk, class_truncation).float()
    return resize_probs(logits, tuple(views.shape[-2:])).sigmoid()


def merge_sliding(probs: torch.Tensor, crop: int) -> torch.Tensor:
    """probs (5, T, c, c) of one image -> (T, S, S): crops averaged where they overlap, then averaged
    with the global view resized to S x S; to be resized to (H, W)."""
    side, _, offsets = sliding_geometry(crop)
    total = probs.new_zeros((probs.shape[1], side, side))
    count = probs.new_zeros((1, side, side))
    for k, (y, x) in enumerate((y, x) for y in offsets for x in offsets):
        total[:, y:y + crop, x:x + crop] += probs[k]
        count[:, y:y + crop, x:x + crop] += 1
    global_view = resize_probs(probs[-1:], (side, side))[0]
    return (total / count + global_view) / 2


# protocol -> (views of one image, probabilities of a batch of views, merge of one image's views)
PROTOCOL_STEPS = {"sliding": (sliding_views, sliding_probabilities, merge_sliding),
                  "single": (single_views, single_probabilities, merge_single)}


def predict(protocol: str, model, image: torch.Tensor, text: torch.Tensor, class_chunk: Optional[int] = None,
            resize: str = "official", class_truncation=FROM_CONFIG) -> torch.Tensor:
    """One image (3, h', w') from `mapper_resize` through `protocol` -> probabilities (T, h'', w'')."""
    make_views, probabilities, merge = PROTOCOL_STEPS[protocol]
    views, context = make_views(model, image, resize)
    return merge(probabilities(model, views, text, class_chunk, class_truncation), context)


def predict_single(model, image: torch.Tensor, text: torch.Tensor, class_chunk: Optional[int] = None,
                   resize: str = "official", class_truncation=FROM_CONFIG) -> torch.Tensor:
    """Single view (rule 3) -> probabilities (T, min(h', n), min(w', n)), to be resized to (H, W)."""
    return predict("single", model, image, text, class_chunk, resize, class_truncation)


def predict_sliding(model, image: torch.Tensor, text: torch.Tensor, class_chunk: Optional[int] = None,
                    resize: str = "official", class_truncation=FROM_CONFIG) -> torch.Tensor:
    """Sliding window (rule 2) -> probabilities (T, S, S), to be resized to (H, W)."""
    return predict("sliding", model, image, text, class_chunk, resize, class_truncation)


PROTOCOL_FUNCTIONS = {"sliding": predict_sliding, "single": predict_single}
