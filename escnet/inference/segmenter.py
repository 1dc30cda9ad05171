"""Open-vocabulary inference: the `Segmenter` a user touches, and the evaluation protocols.

    segmenter = Segmenter.from_pretrained("path/to/model_dir")
    result = segmenter.segment("photo.jpg", "building, edifice; sky; tree")
    result.labels          # (H, W) class ids at the photo's resolution
    result.overlay().show()
    result.save("out/", name="photo")

Protocols [CAT-Seg]: escnet/inference/protocol.py reproduces CAT-Seg's official evaluation step by
step (detectron2's test-time resize, padding, model-side resizes, crop geometry, sigmoid / averaging
order); the Segmenter resizes its probabilities to the image bilinearly, in class chunks, and takes
the argmax, the last step of detectron2's sem_seg_postprocess.

- "sliding" (`predict_sliding`): CAT-Seg's evaluation: the short side to S = 640, the image resized
  to S x S, four 384 crops at stride 256 plus one global 384 view, averaged.
- "single" (`predict_single`): the image padded to a multiple of 32 and resized to CLIP's input.
- resize "official" (default) or "antialias" (antialiased model-side image downscales); reported in
  `SegmentationResult.info`.

Class modes (reported in `SegmentationResult.info`):

- "exact": every class is scored. The model processes the classes in chunks of `class_chunk`,
  chosen from `memory_budget_mb` (`class_chunk_for_budget`); chunked and unchunked results agree.
- "top256": CAT-Seg's truncation for large vocabularies: per view, only the 256 classes with the
  highest raw CLIP cosine score are aggregated and the rest get logit -100. Needs a model whose
  config has `class_truncation` (CAT-Seg). This is the mode that reproduces CAT-Seg's published
  ADE-847 / PC-459 numbers; "exact" is the better-defined answer.

Large images: see escnet/data/images.py (`MAX_SIDE`): above it, the probabilities are resized to a
reduced working size (the model's input is still made from the full image) and the label map is
upsampled back with nearest neighbour.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from PIL import Image

from escnet.data.images import DEFAULT_MAX_PIXELS, MAX_SIDE, ImageInput, load_image, resize_labels, working_size
from escnet.data.vocab import VocabularySpec, display_name, parse_vocabulary
from escnet.inference import visualize
from escnet.inference.options import (CLASS_MODES, DEFAULT_MEMORY_BUDGET_MB, MIN_MAX_SIDE, PROTOCOLS, RESIZE_MODES,
                                      TOP_K)
from escnet.inference.protocol import PROTOCOL_STEPS, mapper_resize, resize_probs
from escnet.models.catseg import FROM_CONFIG
from escnet.inference.text_cache import TextCache, enabled_by_env
from escnet.hub import resolve_model_path  # noqa: F401 - part of this module's API
from escnet.registry import ModelNotFoundError  # noqa: F401 - part of this module's API
from escnet.errors import sanitize
from escnet.fileio import atomic_write_all
from escnet.runtime import resolve_device

# Estimated peak activation bytes per class, per view, per crop pixel (float32): the decoder's
# last stage holds ~48-64 channels at a quarter of the crop side plus GroupNorm/ReLU copies, and
# the logits are resized to the crop. It only sets the chunk size; it never changes the result.
_BYTES_PER_CLASS_PIXEL = 64
_TEXT_CACHE_SIZE = 16

def model_description(path: Union[str, os.PathLike]) -> Optional[str]:
    """The text of a checkpoint folder's NOTICE.txt (what the model is for), else None."""
    notice = Path(path) / "NOTICE.txt"
    if not notice.is_file():
        return None
    return " ".join(sanitize(notice.read_text(encoding="utf-8", errors="replace")[:4000]).split())


def model_notice(segmenter: "Segmenter") -> Optional[str]:
    """The one plain line the CLI prints about a model that describes itself, else None."""
    if not segmenter.description:
        return None
    return f"note: model {Path(segmenter.checkpoint or 'in-memory').name}: {segmenter.description}"



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
    id, as torch.argmax). Returns labels (H, W) long, the winning probability of each pixel
    (H, W) and, if keep, the resized (T, H, W) probs (else None)."""
    best = labels = None
    kept = []
    for start in range(0, probs.shape[0], chunk):
        part = resize_probs(probs[None, start:start + chunk], size)[0]
        score, index = part.max(dim=0)
        if best is None:
            best, labels = score, index
        else:
            better = score > best
            best = torch.where(better, score, best)
            labels = torch.where(better, index + start, labels)
        if keep:
            kept.append(part.cpu())
    return labels, best, (torch.cat(kept) if keep else None)


def class_scores(labels: torch.Tensor, best: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class score (T,): the mean winning probability over the pixels labelled with the
    class (0 for a class that got no pixel). labels, best (H, W) from `upsample_argmax`."""
    flat = labels.reshape(-1)
    total = torch.zeros(num_classes, dtype=torch.float64, device=flat.device).index_add_(0, flat, best.reshape(-1).double())
    count = torch.bincount(flat, minlength=num_classes).double()
    return (total / count.clamp(min=1)).float()


# ---------------------------------------------------------------------------------------------
# Result


@dataclass
class SegmentationResult:
    """labels (H, W) int32 ids into `classes`, at the input image's resolution; classes: the
    vocabulary entries ("building, edifice"); image (H, W, 3) uint8 the input as segmented;
    scores (T,) float32: per class, the mean probability over the pixels labelled with it (0 when
    it got none); probs (T, h, w) float32 sigmoid probabilities if requested, at the image's
    resolution or, for images above the size limit, at info["working_size"]; info: how the result
    was made (with "model_description" where the checkpoint has one)."""

    labels: np.ndarray
    classes: list[str]
    image: np.ndarray
    scores: Optional[np.ndarray] = None
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
        return visualize.label_image(self.labels, len(self.classes), self.names)

    def to_dict(self) -> dict[str, Any]:
        fractions = self.fractions()
        return {
            "size": [int(self.labels.shape[0]), int(self.labels.shape[1])],
            "classes": [
                {"id": i, "name": display_name(entry), "entry": entry, "fraction": float(fractions[i]),
                 **({} if self.scores is None else {"score": float(self.scores[i])})}
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


class Segmenter:
    """Wraps a model (ESC-Net or CAT-Seg) for segmenting images with any vocabulary.

    protocol: "sliding" (default, CAT-Seg's evaluation) or "single"; resize: "official" (default,
    CAT-Seg's exact resizes) or "antialias" (escnet.inference.protocol); class_mode: "exact" or "top256"; memory_budget_mb bounds per-class activation memory in exact mode (None: one pass);
    max_side: the large-image limit; max_pixels: the largest image accepted (default 40 Mpx, None: no limit;
    a file's size is read from its header before decoding); half: float16 autocast on CUDA (bfloat16 on CPU).
    Text features are cached per vocabulary in memory, so a folder of images encodes its classes
    once, and on disk (escnet.inference.text_cache), so the next process does not encode them again;
    text_cache: False turns the disk cache off (None: on unless ESCNET_TEXT_CACHE=0).
    backend: "eager" or "compile" (torch.compile, escnet.inference.backends; `backend_info` reports it).
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
        resize: str = "official",
        text_cache: Optional[bool] = None,
        max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
        backend: str = "eager",
    ):
        _check_choice("protocol", protocol, PROTOCOLS)
        _check_choice("resize", resize, RESIZE_MODES)
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
        self.resize = resize
        self.class_mode = class_mode
        self.memory_budget_mb = memory_budget_mb
        self.max_side = max_side
        load_image(np.zeros((1, 1, 3), np.uint8), max_pixels)  # checks the value: a positive integer or None
        self.max_pixels = max_pixels
        self.checkpoint: Optional[str] = None  # where the model came from, recorded in results
        self.description: Optional[str] = None  # what the checkpoint says it is for (its NOTICE.txt)
        self._text_cache: OrderedDict[tuple[str, ...], torch.Tensor] = OrderedDict()
        self._text_lock = threading.Lock()  # the demo serves requests from several threads
        wanted = enabled_by_env() if text_cache is None else text_cache
        self.disk_text_cache = TextCache(self.model) if wanted and TextCache.supports(self.model) else None
        if class_mode == "top256":
            self._check_truncation()
        from escnet.inference.backends import apply_backend

        self.backend_info = apply_backend(self.model, backend)

    @classmethod
    def from_pretrained(
        cls, path_or_name: Union[str, os.PathLike, None] = None, device="auto", **options
    ) -> "Segmenter":
        """Load a saved checkpoint (escnet.lifecycle.load_pretrained) or a named model
        (escnet.registry: the bundled model, catseg-vitb16 / catseg-vitl14 from the Hugging Face Hub, ...).
        A checkpoint folder's NOTICE.txt (the bundled model has one) becomes `description`, which
        every result's info records and the CLI and demo show."""
        from escnet.lifecycle import load_pretrained

        path = resolve_model_path(path_or_name)
        segmenter = cls(load_pretrained(path), device=device, **options)
        segmenter.checkpoint = str(path)
        segmenter.description = model_description(path)
        if path_or_name is None:
            import warnings

            from escnet.errors import DemonstrationModelWarning

            warnings.warn(f"no model given: using the bundled {Path(path).name}. {segmenter.description or ''} "
                          "Pass a model, e.g. Segmenter.from_pretrained('catseg-vitl14') (`escnet models` lists them).",
                          DemonstrationModelWarning, stacklevel=2)
        return segmenter

    def _autocast(self):
        if not self.half:
            return contextlib.nullcontext()
        dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype)

    def _precision(self) -> str:
        """What the text features' bits depend on besides the weights: device type and autocast dtype."""
        return f"{self.device.type}/{'float16' if self.device.type == 'cuda' else 'bfloat16'}" if self.half \
            else f"{self.device.type}/float32"

    def text_features(self, entries: list[str]) -> torch.Tensor:
        """(T, D) text features of the vocabulary entries: from the in-memory cache (by the entry
        tuple), else the disk cache (`disk_text_cache`), else encoded (and stored in both)."""
        key = tuple(entries)
        with self._text_lock:
            if key in self._text_cache:
                self._text_cache.move_to_end(key)
                return self._text_cache[key]
            feats = disk_key = None
            if self.disk_text_cache is not None:
                disk_key = self.disk_text_cache.key(list(entries), self._precision())
                feats = self.disk_text_cache.load(disk_key, len(entries))
            if feats is None:
                with torch.no_grad(), self._autocast():
                    feats = self.model.encode_text(list(entries)).float()
                if disk_key is not None:
                    self.disk_text_cache.store(disk_key, feats)
            feats = feats.to(self.device)
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

    def _class_truncation(self, class_mode: str):
        """The forward's class_truncation for a class mode (an argument per call, so that threads with
        different modes can share the model): TOP_K for "top256"; for "exact", None (every class) on
        a model with CAT-Seg's truncation and nothing to pass (FROM_CONFIG) on one without."""
        if class_mode == "top256":
            self._check_truncation()
            return TOP_K
        return None if hasattr(self.model.cfg, "class_truncation") else FROM_CONFIG

    def segment(
        self,
        image: Union[ImageInput, list[ImageInput]],
        classes: VocabularySpec,
        protocol: Optional[str] = None,
        class_mode: Optional[str] = None,
        return_probs: bool = False,
        resize: Optional[str] = None,
        batch_size: int = 1,
    ) -> Union[SegmentationResult, list[SegmentationResult]]:
        """Segment one image (path, PIL image or array), or a list of them, with a vocabulary (any
        form accepted by escnet.data.vocab.parse_vocabulary). protocol / class_mode / resize override
        the defaults. A list gives a list of results; its images (of any sizes) go through the model
        batch_size at a time, and each result is the one that image alone gets."""
        protocol = _check_choice("protocol", protocol or self.protocol, PROTOCOLS)
        resize = _check_choice("resize", resize or self.resize, RESIZE_MODES)
        class_mode = _check_choice("class_mode", class_mode or self.class_mode, CLASS_MODES)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        entries = parse_vocabulary(classes)
        text = self.text_features(entries)
        if not isinstance(image, (list, tuple)):
            return self._segment_batch([load_image(image, self.max_pixels)], entries, text, protocol, class_mode, resize, return_probs)[0]
        results = []
        for start in range(0, len(image), batch_size):
            rgbs = [load_image(item, self.max_pixels) for item in image[start:start + batch_size]]
            results.extend(self._segment_batch(rgbs, entries, text, protocol, class_mode, resize, return_probs))
        return results

    __call__ = segment

    def _segment_batch(self, rgbs: list[np.ndarray], entries: list[str], text: torch.Tensor, protocol: str,
                       class_mode: str, resize: str, return_probs: bool) -> list[SegmentationResult]:
        """Images (H_i, W_i, 3) uint8 -> one result each; all their views in one model call."""
        make_views, probabilities, merge = PROTOCOL_STEPS[protocol]
        crop = self.model.cfg.crop_size
        works = [working_size(*rgb.shape[:2], self.max_side) for rgb in rgbs]
        truncation = self._class_truncation(class_mode)
        scored = min(len(entries), TOP_K) if class_mode == "top256" else len(entries)
        budget = self.memory_budget_mb or DEFAULT_MEMORY_BUDGET_MB
        with torch.no_grad():
            views, contexts = zip(*(make_views(self.model, mapper_resize(rgb, crop).to(self.device), resize)
                                    for rgb in rgbs))
            class_chunk = class_chunk_for_budget(scored, crop, sum(len(v) for v in views), self.memory_budget_mb)
            with self._autocast():
                probs = probabilities(self.model, torch.cat(views), text, class_chunk, truncation)
            results = []
            for rgb, work, part, context in zip(rgbs, works, probs.split([len(v) for v in views]), contexts):
                resize_chunk = max(1, int(budget * 2**20 // (work[0] * work[1] * 4 * 3)))
                labels, best, full_probs = upsample_argmax(merge(part, context), work, resize_chunk, keep=return_probs)
                scores = class_scores(labels, best, len(entries)).cpu().numpy()
                labels = labels.to(torch.int32).cpu().numpy()
                if work != rgb.shape[:2]:
                    labels = resize_labels(labels, rgb.shape[:2])
                results.append(SegmentationResult(
                    labels=labels, classes=entries, image=rgb, scores=scores,
                    probs=full_probs.numpy() if full_probs is not None else None,
                    info=self._info(protocol, class_mode, resize, len(entries), class_chunk, work),
                ))
        return results

    def observe_ppg(self, num_classes: int):
        """A context manager giving a PPGMeter (escnet.inference.ppg_metrics) hooked on this model's pseudo
        prompt generators while it is open (None for a model without them): what evaluations use to
        count PPG statistics of their own forwards; `meter.image_done(labels)` after each image."""
        from escnet.inference.ppg_metrics import PPGMeter

        return PPGMeter.attach(self, num_classes)

    def _info(self, protocol: str, class_mode: str, resize: str, num_classes: int, class_chunk, work) -> dict[str, Any]:
        info = {
            "model": getattr(self.model.cfg, "arch", type(self.model).__name__),
            "checkpoint": self.checkpoint,
            "protocol": protocol,
            "resize": resize,
            "class_mode": class_mode,
            "truncated": class_mode == "top256" and num_classes > TOP_K,
            "class_chunk": class_chunk,
            "crop_size": self.model.cfg.crop_size,
            "working_size": list(work),
            "device": str(self.device),
            "half": self.half,
            "backend": self.backend_info["backend"],
        }
        if self.description:
            info["model_description"] = self.description
        return info


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")
    return value
