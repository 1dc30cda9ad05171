"""Open-vocabulary inference: the `Segmenter` a user touches, and the evaluation protocols.

    segmenter = Segmenter.from_pretrained("path/to/model_dir")
    result = segmenter.segment("photo.jpg", "building, edifice; sky; tree")
    result.labels          # (H, W) class ids at the photo's resolution
    result.overlay().show()
    result.save("out/", name="photo")

Protocols [CAT-Seg] (each returns sigmoid probabilities at its working resolution; the Segmenter
then resizes them to the image bilinearly, in class chunks, and takes the argmax):

- "sliding" (`predict_sliding`): CAT-Seg's evaluation. With crop c (384) the geometry is stride
  s = int(c * (1 - 0.333)) (256) and side S = c + s (640): the image is first resized so its short
  side is S (long side at most 4 S; antialiased, like detectron2's test-time ResizeShortestEdge),
  then bilinearly to S x S; the 2 x 2 crops of c at offsets {0, s} plus the short-side-resized
  image resized to c x c (the global view) go through the model as one batch of 5; logits are
  resized to c, passed through a sigmoid, the crops are averaged where they overlap, the global
  view is resized to S x S, and the result is (crops + global) / 2.
- "single" (`predict_single`): the image resized (antialiased) to c x c, one forward, sigmoid.

Class modes (reported in `SegmentationResult.info`):

- "exact": every class is scored. The model processes the classes in chunks of `class_chunk`,
  chosen from `memory_budget_mb` (`class_chunk_for_budget`); chunked and unchunked results agree.
- "top256": CAT-Seg's truncation for large vocabularies: per view, only the 256 classes with the
  highest raw CLIP cosine score are aggregated and the rest get logit -100. Needs a model whose
  config has `class_truncation` (CAT-Seg).

Large images: see escnet/data/images.py (`MAX_SIDE`): above it, the work happens at a reduced
working size and the label map is upsampled back with nearest neighbour.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from escnet.data.images import MAX_SIDE, ImageInput, load_image, resize_labels, resize_rgb, working_size
from escnet.data.vocab import VocabularySpec, display_name, parse_vocabulary
from escnet.engine import visualize
from escnet.errors import EscnetError, sanitize
from escnet.fileio import atomic_write_all

PROTOCOLS = ("sliding", "single")
CLASS_MODES = ("exact", "top256")
TOP_K = 256
SLIDING_OVERLAP = 0.333  # CAT-Seg's value; int(384 * (1 - 0.333)) = 256
DEFAULT_MEMORY_BUDGET_MB = 2048
# Estimated peak activation bytes per class, per view, per crop pixel (float32): the decoder's
# last stage holds ~48-64 channels at a quarter of the crop side plus GroupNorm/ReLU copies, and
# the logits are resized to the crop. It only sets the chunk size; it never changes the result.
_BYTES_PER_CLASS_PIXEL = 64
_TEXT_CACHE_SIZE = 16
# the smallest max_side: below the model's token grid a working image carries no detail (1 x 1 was accepted)
MIN_MAX_SIDE = 16

# name -> folder under escnet/assets/models/. The default is the tiny ESC-Net trained on the synthetic
# benchmark (configs/escnet_tiny_synthetic.toml): a demonstration model for synthetic scenes.
MODEL_NAMES = {"default": "escnet-synthetic-tiny", "escnet-synthetic-tiny": "escnet-synthetic-tiny"}


class ModelNotFoundError(EscnetError, FileNotFoundError):
    """A model path or name that does not resolve to a checkpoint."""


# ---------------------------------------------------------------------------------------------
# Protocols


def sliding_geometry(crop: int) -> tuple[int, int, tuple[int, ...]]:
    """(side S, stride s, crop offsets) of the sliding window for crop c: S = c + s, offsets 0, s."""
    stride = int(crop * (1 - SLIDING_OVERLAP))
    return crop + stride, stride, (0, stride)


def _resize(image: torch.Tensor, size: tuple[int, int], antialias: bool = False) -> torch.Tensor:
    """Bilinear, align_corners=False resize of (N, C, H, W); a no-op at the same size."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False,
                         antialias=antialias and (size[0] < image.shape[-2] or size[1] < image.shape[-1]))


def _shortest_edge_size(height: int, width: int, short: int, max_long: int) -> tuple[int, int]:
    # detectron2's ResizeShortestEdge rule (rounding included).
    scale = short / min(height, width)
    if max(height, width) * scale > max_long:
        scale = max_long / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def _probabilities(model, views: torch.Tensor, text: torch.Tensor, class_chunk: Optional[int]) -> torch.Tensor:
    """views (N, 3, c, c) -> sigmoid probabilities (N, T, c, c), float32."""
    logits = model(views, text, class_chunk=class_chunk)
    logits = _resize(logits.float(), tuple(views.shape[-2:]))
    return logits.sigmoid_()


def predict_single(model, image: torch.Tensor, text: torch.Tensor, class_chunk: Optional[int] = None) -> torch.Tensor:
    """Single view. image (3, H, W) float RGB 0..255, text (T, D) -> probabilities (T, c, c)."""
    crop = model.cfg.crop_size
    view = _resize(image[None], (crop, crop), antialias=True)
    return _probabilities(model, view, text, class_chunk)[0]


def predict_sliding(model, image: torch.Tensor, text: torch.Tensor, class_chunk: Optional[int] = None) -> torch.Tensor:
    """CAT-Seg's sliding window (module docstring). image (3, H, W) float RGB 0..255, text (T, D)
    -> probabilities (T, S, S) with S = crop + stride (640 for crop 384)."""
    crop = model.cfg.crop_size
    side, stride, offsets = sliding_geometry(crop)
    short = _resize(image[None], _shortest_edge_size(*image.shape[-2:], side, 4 * side), antialias=True)
    square = _resize(short, (side, side))[0]
    crops = [square[:, y:y + crop, x:x + crop] for y in offsets for x in offsets]
    views = torch.stack(crops + [_resize(short, (crop, crop))[0]])
    probs = _probabilities(model, views, text, class_chunk)

    total = probs.new_zeros((probs.shape[1], side, side))
    count = probs.new_zeros((1, side, side))
    for k, (y, x) in enumerate((y, x) for y in offsets for x in offsets):
        total[:, y:y + crop, x:x + crop] += probs[k]
        count[:, y:y + crop, x:x + crop] += 1
    global_view = _resize(probs[-1:], (side, side))[0]
    return (total / count + global_view) / 2


_PROTOCOL_FUNCTIONS = {"sliding": predict_sliding, "single": predict_single}


def class_chunk_for_budget(num_classes: int, crop: int, views: int, memory_budget_mb: Optional[float]) -> Optional[int]:
    """Classes per model pass so that the per-class activations stay within the budget; None
    (one pass) when everything fits or no budget is set."""
    if memory_budget_mb is None:
        return None
    per_class = views * crop * crop * _BYTES_PER_CLASS_PIXEL
    chunk = max(1, int(memory_budget_mb * 2**20 // per_class))
    return None if chunk >= num_classes else chunk


def upsample_argmax(probs: torch.Tensor, size: tuple[int, int], chunk: int, keep: bool = False):
    """Bilinear resize of probabilities (T, h, w) to size = (H, W) and argmax over classes, done in
    chunks of `chunk` classes (resizing acts per class, so chunking is exact; ties go to the lower
    id, as torch.argmax). Returns labels (H, W) long and, if keep, the resized (T, H, W) probs."""
    best = labels = None
    kept = []
    for start in range(0, probs.shape[0], chunk):
        part = _resize(probs[None, start:start + chunk], size)[0]
        score, index = part.max(dim=0)
        if best is None:
            best, labels = score, index
        else:
            better = score > best
            best = torch.where(better, score, best)
            labels = torch.where(better, index + start, labels)
        if keep:
            kept.append(part.cpu())
    return labels, (torch.cat(kept) if keep else None)


# ---------------------------------------------------------------------------------------------
# Result


@dataclass
class SegmentationResult:
    """labels (H, W) int32 ids into `classes`, at the input image's resolution; classes: the
    vocabulary entries ("building, edifice"); image (H, W, 3) uint8 the input as segmented;
    probs (T, h, w) float32 sigmoid probabilities if requested, at the image's resolution or, for
    images above the size limit, at info["working_size"]; info: how the result was made."""

    labels: np.ndarray
    classes: list[str]
    image: np.ndarray
    probs: Optional[np.ndarray] = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        """Display names (first synonyms), one per class."""
        return [display_name(entry) for entry in self.classes]

    def fractions(self) -> np.ndarray:
        """Fraction of the image's pixels given to each class, (T,), summing to 1."""
        counts = np.bincount(self.labels.reshape(-1), minlength=len(self.classes))
        return counts / counts.sum()

    def overlay(self, alpha: float = 0.5, legend: bool = True) -> Image.Image:
        """The image with class colours blended in and a legend of the classes present."""
        return visualize.overlay(self.image, self.labels, self.names, alpha=alpha, legend=legend)

    def label_image(self) -> Image.Image:
        """The label map as a PNG-ready image whose pixel values are the class ids."""
        return visualize.label_image(self.labels, len(self.classes))

    def to_dict(self) -> dict[str, Any]:
        fractions = self.fractions()
        return {
            "size": [int(self.labels.shape[0]), int(self.labels.shape[1])],
            "classes": [
                {"id": i, "name": display_name(entry), "entry": entry, "fraction": float(fractions[i])}
                for i, entry in enumerate(self.classes)
            ],
            "info": self.info,
        }

    def save(self, directory: Union[str, os.PathLike], name: str = "segmentation") -> dict[str, Path]:
        """Write <name>_overlay.png, <name>_labels.png and <name>.json into directory. All three
        are rendered before anything is written, and each appears by an atomic rename, so a
        failure leaves no partial output."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        payloads = {
            directory / f"{name}_overlay.png": self.overlay(),
            directory / f"{name}_labels.png": self.label_image(),
            directory / f"{name}.json": json.dumps(self.to_dict(), indent=2) + "\n",
        }
        atomic_write_all({
            path: (lambda tmp, text=payload: tmp.write_text(text, encoding="utf-8")) if isinstance(payload, str)
            else (lambda tmp, image=payload: image.save(tmp, format="PNG"))
            for path, payload in payloads.items()
        })
        return {kind: path for kind, path in zip(("overlay", "labels", "json"), payloads)}


# ---------------------------------------------------------------------------------------------
# Segmenter


def resolve_device(device: Union[str, torch.device, None]) -> torch.device:
    """"auto" (or None) -> cuda if available else cpu; "cuda" without a GPU is an error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"unknown device {str(device)!r}; use cpu, cuda or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is available; use --device cpu or auto")
    return device


def resolve_model_path(path_or_name: Union[str, os.PathLike, None]) -> Path:
    """A checkpoint path (folder with model.safetensors + config.json, or a file), or a bundled
    model name (None = "default") -> an existing path."""
    name = "default" if path_or_name is None else str(path_or_name)
    if name in MODEL_NAMES and not Path(name).exists():
        bundled = resources.files("escnet") / "assets" / "models" / MODEL_NAMES[name]
        if not bundled.is_dir():
            raise ModelNotFoundError(
                f"the bundled model {name!r} is not part of this installation (looked in {bundled}); "
                "pass a checkpoint path instead"
            )
        return Path(str(bundled))
    path = Path(name)
    if not path.exists():
        raise ModelNotFoundError(f"model path {name!r} does not exist")
    return path


class Segmenter:
    """Wraps a model (ESC-Net or CAT-Seg) for segmenting images with any vocabulary.

    protocol: "sliding" (default, CAT-Seg's evaluation) or "single"; class_mode: "exact" or
    "top256"; memory_budget_mb bounds per-class activation memory in exact mode (None: one pass);
    max_side: the large-image limit; half: float16 autocast on CUDA (bfloat16 on CPU).
    Text features are cached per vocabulary, so a folder of images encodes its classes once.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        device: Union[str, torch.device, None] = "auto",
        half: bool = False,
        protocol: str = "sliding",
        class_mode: str = "exact",
        memory_budget_mb: Optional[float] = DEFAULT_MEMORY_BUDGET_MB,
        max_side: int = MAX_SIDE,
    ):
        _check_choice("protocol", protocol, PROTOCOLS)
        _check_choice("class_mode", class_mode, CLASS_MODES)
        if isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < MIN_MAX_SIDE:
            raise ValueError(f"max_side must be an integer >= {MIN_MAX_SIDE}, got {max_side!r}")
        if memory_budget_mb is not None and not (isinstance(memory_budget_mb, (int, float))
                                                 and math.isfinite(memory_budget_mb) and memory_budget_mb > 0):
            raise ValueError(f"memory_budget_mb must be a finite number > 0 (or None), got {memory_budget_mb!r}")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.half = half
        self.protocol = protocol
        self.class_mode = class_mode
        self.memory_budget_mb = memory_budget_mb
        self.max_side = max_side
        self.checkpoint: Optional[str] = None  # where the model came from, recorded in results
        self._text_cache: OrderedDict[tuple[str, ...], torch.Tensor] = OrderedDict()
        self._text_lock = threading.Lock()  # the demo serves requests from several threads
        if class_mode == "top256":
            self._check_truncation()

    @classmethod
    def from_pretrained(
        cls, path_or_name: Union[str, os.PathLike, None] = None, device="auto", **options
    ) -> "Segmenter":
        """Load a saved checkpoint (escnet.models.factory.load_pretrained) or a bundled model."""
        from escnet.models.factory import load_pretrained

        path = resolve_model_path(path_or_name)
        notice = path / "NOTICE.txt" if path.is_dir() else None
        if notice is not None and notice.is_file():  # e.g. the bundled model says what it is for
            text = sanitize(notice.read_text(encoding="utf-8", errors="replace")[:4000]).strip()
            warnings.warn(f"{path.name}: {text}", stacklevel=2)
        segmenter = cls(load_pretrained(path), device=device, **options)
        segmenter.checkpoint = str(path)
        return segmenter

    def _autocast(self):
        if not self.half:
            return contextlib.nullcontext()
        dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype)

    def text_features(self, entries: list[str]) -> torch.Tensor:
        """(T, D) text features of the vocabulary entries, cached by the entry tuple."""
        key = tuple(entries)
        with self._text_lock:
            if key in self._text_cache:
                self._text_cache.move_to_end(key)
                return self._text_cache[key]
            with torch.no_grad(), self._autocast():
                feats = self.model.encode_text(list(entries)).float()
            self._text_cache[key] = feats
            if len(self._text_cache) > _TEXT_CACHE_SIZE:
                self._text_cache.popitem(last=False)
        return feats

    def _check_truncation(self) -> None:
        if not hasattr(self.model.cfg, "class_truncation"):
            raise ValueError(
                f"class_mode 'top256' needs a model with CAT-Seg's class truncation; this "
                f"{getattr(self.model.cfg, 'arch', type(self.model).__name__)} model supports class_mode 'exact' only"
            )

    @contextlib.contextmanager
    def _truncation(self, class_mode: str):
        cfg = self.model.cfg
        if class_mode == "top256":
            self._check_truncation()
        elif not hasattr(cfg, "class_truncation"):
            yield
            return
        previous = cfg.class_truncation
        cfg.class_truncation = TOP_K if class_mode == "top256" else None
        try:
            yield
        finally:
            cfg.class_truncation = previous

    def segment(
        self,
        image: ImageInput,
        classes: VocabularySpec,
        protocol: Optional[str] = None,
        class_mode: Optional[str] = None,
        return_probs: bool = False,
    ) -> SegmentationResult:
        """Segment one image (path, PIL image or array) with a vocabulary (any form accepted by
        escnet.data.vocab.parse_vocabulary). protocol / class_mode override the defaults."""
        protocol = _check_choice("protocol", protocol or self.protocol, PROTOCOLS)
        class_mode = _check_choice("class_mode", class_mode or self.class_mode, CLASS_MODES)
        entries = parse_vocabulary(classes)
        rgb = load_image(image)
        height, width = rgb.shape[:2]
        work = working_size(height, width, self.max_side)

        text = self.text_features(entries)
        crop = self.model.cfg.crop_size
        views = 5 if protocol == "sliding" else 1
        scored = min(len(entries), TOP_K) if class_mode == "top256" else len(entries)
        class_chunk = class_chunk_for_budget(scored, crop, views, self.memory_budget_mb)

        pixels = torch.from_numpy(resize_rgb(rgb, work)).to(self.device).permute(2, 0, 1).float()
        with torch.no_grad(), self._autocast(), self._truncation(class_mode):
            probs = _PROTOCOL_FUNCTIONS[protocol](self.model, pixels, text, class_chunk)
        budget = self.memory_budget_mb or DEFAULT_MEMORY_BUDGET_MB
        resize_chunk = max(1, int(budget * 2**20 // (work[0] * work[1] * 4 * 3)))
        labels, full_probs = upsample_argmax(probs, work, resize_chunk, keep=return_probs)

        labels = labels.to(torch.int32).cpu().numpy()
        if work != (height, width):
            labels = resize_labels(labels, (height, width))
        info = {
            "model": getattr(self.model.cfg, "arch", type(self.model).__name__),
            "checkpoint": self.checkpoint,
            "protocol": protocol,
            "class_mode": class_mode,
            "truncated": class_mode == "top256" and len(entries) > TOP_K,
            "class_chunk": class_chunk,
            "crop_size": crop,
            "working_size": list(work),
            "device": str(self.device),
            "half": self.half,
        }
        return SegmentationResult(
            labels=labels,
            classes=entries,
            image=rgb,
            probs=full_probs.numpy() if full_probs is not None else None,
            info=info,
        )


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")
    return value
