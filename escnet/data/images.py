"""Reading user images into one canonical form: a uint8 RGB array (H, W, 3).

Accepted inputs (`load_image`):

- a path (str or Path) to any file Pillow can decode; the whole file is decoded up front, so a
  truncated or corrupt file fails here with an `ImageError` that names it; multi-frame files
  (GIF, TIFF) give their first frame;
- a PIL image, in any mode (an empty (0 x 0) or closed image is an `ImageError`);
- a numpy array (H, W), (H, W, 1), (H, W, 3) or (H, W, 4): uint8 as is; bool as 0/255; uint16
  scaled from 0..65535; other integer types must already lie in 0..255; floating point must lie
  in [0, 1] (scikit-image's convention).

Modes: EXIF orientation is applied (photos come out upright). Images with transparency (RGBA, LA,
PA, La / RGBa (premultiplied), P or L/RGB with a transparent colour) are composited over white, since the colour under a
transparent pixel is arbitrary. 16-bit grey (I;16*) is scaled from its full range 0..65535;
32-bit integer (I) and float (F) images have no fixed range and are stretched from their minimum
to their maximum. CMYK, YCbCr, HSV, palette and 1-bit images are converted with Pillow.

Size policy:

- Very large images: the model always sees a small resized copy, but the soft (bilinear) resize of
  the class probabilities back to the image costs T x H x W. Images whose long side exceeds
  `MAX_SIDE` (4096) are therefore processed at a working size with that long side (`working_size`,
  antialiased `resize_rgb`), and the final label map is brought back to the full resolution with
  nearest-neighbour upsampling (`resize_labels`). Pillow's decompression-bomb limit (about 179
  megapixels) still applies to files and is reported as an `ImageError`.
- Pixel limit: `load_image` refuses an image of more than `max_pixels` pixels (default
  DEFAULT_MAX_PIXELS = 40 megapixels, the demo's; ``max_pixels=`` of `Segmenter`, ``--max-pixels``
  of `escnet segment`; None turns it off) with an `ImageError` naming the size and the limit. For
  a file the size is read from its header, before anything is decoded, and Pillow's
  DecompressionBombWarning is not shown (the limit replaces it).
- Tiny images (down to 1 x 1) need no special path: every protocol resizes to the model's crop,
  and the label map stays at the input's resolution; overlays are enlarged for display
  (escnet/engine/visualize.py) so their legend stays legible.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from escnet.errors import EscnetError, shown_path

MAX_SIDE = 4096
DEFAULT_MAX_PIXELS = 40_000_000  # the demo's default; a 169 Mpx image cost 7.5 GB and 94 s

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]

_HIGH_DEPTH_16 = ("I;16", "I;16B", "I;16L", "I;16N")


class ImageError(EscnetError, ValueError):
    """An input that cannot be turned into an RGB image (the message names the file or array)."""


def check_pixels(width: int, height: int, max_pixels: int | None, name: str) -> None:
    """ImageError when width x height exceeds max_pixels (None: no limit), naming the limit and how to raise it."""
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(f"{name}: the image has {width} x {height} = {width * height:,} pixels, over the limit of "
                         f"{max_pixels:,} (raise it with --max-pixels, or max_pixels= of Segmenter / load_image)")


def load_image(source: ImageInput, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a path, PIL image or array into a uint8 RGB array (H, W, 3) (module docstring); an image
    of more than max_pixels pixels is an ImageError (for a file, read from its header before decoding)."""
    if isinstance(max_pixels, bool) or not (max_pixels is None or (isinstance(max_pixels, int) and max_pixels > 0)):
        raise ValueError(f"max_pixels must be a positive integer or None, got {max_pixels!r}")
    if isinstance(source, (str, os.PathLike)):
        return _from_file(Path(source), max_pixels)
    if isinstance(source, Image.Image):
        if source.width and source.height:
            check_pixels(source.width, source.height, max_pixels, "the PIL image")
        return _from_pil(source, "the PIL image")
    if isinstance(source, np.ndarray):
        if source.ndim >= 2:
            check_pixels(source.shape[1], source.shape[0], max_pixels, f"array of shape {tuple(source.shape)}")
        return _from_array(source)
    raise ImageError(f"expected a file path, a PIL image or a numpy array, got {type(source).__name__}")


def _from_file(path: Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    if not path.exists():
        raise ImageError(f"{shown_path(path)}: no such file")
    if path.is_dir():
        raise ImageError(f"{shown_path(path)}: is a directory, not an image file")
    try:
        with warnings.catch_warnings():  # Pillow's DecompressionBombWarning: our limit is checked instead
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
        with image:
            check_pixels(image.width, image.height, max_pixels, shown_path(path))  # from the header: nothing decoded yet
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image.load()
            return _from_pil(image, shown_path(path))
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{shown_path(path)}: not an image file (format not recognised)") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{shown_path(path)}: image too large to decode safely ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - a crafted file can break a decoder in any way (struct.error, IndexError, ...)
        raise ImageError(f"{shown_path(path)}: corrupt or truncated image ({type(exc).__name__}: {exc})") from None


def _over_white(rgba: np.ndarray) -> np.ndarray:
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _stretch(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, np.uint8)
    low, high = values[finite].min(), values[finite].max()
    scaled = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
    return np.rint(np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)).clip(0, 255).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=-1))


def _from_pil(image: Image.Image, name: str) -> np.ndarray:
    try:
        if image.width == 0 or image.height == 0:
            raise ImageError(f"{name}: the image is empty ({image.width} x {image.height})")
        return _pil_to_rgb(ImageOps.exif_transpose(image), name)
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. a closed image, or a mode Pillow cannot convert
        raise ImageError(f"{name}: cannot read PIL image of mode {image.mode!r} ({type(exc).__name__}: {exc})") from None


def _pil_to_rgb(image: Image.Image, name: str) -> np.ndarray:
    mode = image.mode
    if mode == "La":  # grey premultiplied by alpha: over white is grey + (255 - alpha)
        la = np.asarray(image).astype(np.float32)
        return _grey_to_rgb(np.clip(np.rint(la[..., 0] + 255.0 - la[..., 1]), 0, 255).astype(np.uint8))
    if mode in ("RGBA", "LA", "PA", "RGBa") or "transparency" in image.info:
        return _over_white(np.asarray(image.convert("RGBA")))
    if mode in _HIGH_DEPTH_16:
        grey = np.asarray(image).astype(np.float64) / 257.0
        return _grey_to_rgb(np.rint(grey).clip(0, 255).astype(np.uint8))
    if mode in ("I", "F"):
        return _grey_to_rgb(_stretch(np.asarray(image)))
    if mode == "RGB":
        return np.array(image, dtype=np.uint8)
    try:
        return np.array(image.convert("RGB"), dtype=np.uint8)
    except (ValueError, OSError) as exc:
        raise ImageError(f"{name}: cannot convert PIL mode {mode!r} to RGB ({exc})") from None


def _from_array(array: np.ndarray) -> np.ndarray:
    name = f"array of shape {tuple(array.shape)} and dtype {array.dtype}"
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        raise ImageError(f"{name}: looks channel-first (C, H, W); pass (H, W, C), e.g. array.transpose(1, 2, 0)")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))):
        raise ImageError(f"{name}: expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageError(f"{name}: the image is empty")
    array = _to_uint8(array, name)
    if array.ndim == 2:
        return _grey_to_rgb(array)
    if array.shape[-1] == 4:
        return _over_white(array)
    return np.ascontiguousarray(array)


def _to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:
        return np.rint(array.astype(np.float64) / 257.0).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        if array.min() < 0 or array.max() > 255:
            raise ImageError(f"{name}: integer values must lie in 0..255 (uint16 arrays are scaled from 0..65535)")
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageError(f"{name}: contains NaN or infinite values")
        if array.min() < 0.0 or array.max() > 1.0:
            raise ImageError(
                f"{name}: floating-point values must lie in [0, 1] (found {array.min():g}..{array.max():g}); "
                "divide 0..255 data by 255 or pass uint8"
            )
        return np.rint(array * 255.0).astype(np.uint8)
    raise ImageError(f"{name}: unsupported dtype")


def working_size(height: int, width: int, max_side: int = MAX_SIDE) -> tuple[int, int]:
    """The (H, W) an image is processed at: unchanged unless its long side exceeds max_side."""
    long_side = max(height, width)
    if long_side <= max_side:
        return height, width
    scale = max_side / long_side
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_rgb(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Antialiased (Pillow bilinear) resize of a uint8 (H, W, 3) array to size = (H', W')."""
    if image.shape[:2] == tuple(size):
        return image
    resized = Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.array(resized)


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map (H, W) to size = (H', W'), sampling pixel centres."""
    height, width = labels.shape
    rows = np.minimum(((np.arange(size[0]) + 0.5) * height / size[0]).astype(np.int64), height - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * width / size[1]).astype(np.int64), width - 1)
    return labels[rows[:, None], cols[None, :]]
