"""The model's forward pass as an ONNX graph (`export_onnx`), checked with ONNX Runtime (`check_onnx`).

What is exported, what it needs and what cannot be exported yet are described with the command,
`escnet export` (escnet/commands/export.py, or `escnet export --help`).
"""
from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from escnet.fileio import atomic_write
from escnet.models.swin import window_attention_mask

INSTALL_HINT = "pip install 'escnet[export]'"
ESCNET_LIMITATION = (
    "an ESC-Net exports when its pseudo prompt generator's shapes depend only on the input's (every "
    "reading of this release; a model whose PPG options make them data-dependent does not). Closest "
    "exportable form: a CAT-Seg checkpoint (escnet export --model <catseg checkpoint>); any ESC-Net runs "
    "through PyTorch (escnet segment)"
)


class ExportError(RuntimeError):
    """A model or request that cannot be exported; the message says why and what can be."""


class FixedVocabulary(nn.Module):
    """The model with its vocabulary baked in: forward(images (N, 3, c, c) 0..255) -> probs (N, T, c, c)."""

    def __init__(self, model: nn.Module, text: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("text", text.detach().clone())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images, self.text).sigmoid()


class TextInput(nn.Module):
    """The model with text features as an input: forward(images (N, 3, c, c), text (T, D)) -> probs (N, T, c, c)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.model(images, text).sigmoid()


def _attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """aten.scaled_dot_product_attention for any rank >= 3, in ONNX ops: softmax(q k^T * scale [+ mask]) v."""
    import onnx_ir as ir
    from onnxscript import opset18 as op

    if is_causal or enable_gqa or dropout_p:
        raise ExportError("attention with is_causal, enable_gqa or dropout cannot be exported here")
    if scale is None:
        factor = op.Reciprocal(op.Sqrt(op.Cast(op.Shape(query, start=-1), to=ir.DataType.FLOAT)))
    else:
        factor = op.Constant(value_float=float(scale))
    rank = len(key.shape)
    key_t = op.Transpose(key, perm=list(range(rank - 2)) + [rank - 1, rank - 2])
    scores = op.Mul(op.MatMul(query, key_t), factor)
    if attn_mask is not None:
        if attn_mask.dtype == ir.DataType.BOOL:
            scores = op.Where(attn_mask, scores, op.Constant(value_float=float("-inf")))
        else:
            scores = op.Add(scores, attn_mask)
    return op.MatMul(op.Softmax(scores, axis=-1), value)


def _einsum(equation, tensors, path=None):
    """aten.einsum with torch's ellipsis broadcasting: an operand whose "..." covers fewer axes than
    another's (VLF's linear attention, escnet/models/swin.py: "...lhd,...hd->...lh") gets leading
    size-1 axes first, as ONNX Einsum requires every ellipsis to cover the same number of axes."""
    from onnxscript import opset18 as op

    inputs = equation.split("->")[0].split(",")
    tensors = list(tensors)
    covered = [len(t.shape) - len(spec.replace("...", "")) if "..." in spec else 0 for spec, t in zip(inputs, tensors)]
    most = max(covered)
    for i, (spec, count) in enumerate(zip(inputs, covered)):
        if "..." in spec and count < most:
            tensors[i] = op.Unsqueeze(tensors[i], op.Constant(value_ints=list(range(most - count))))
    return op.Einsum(*tensors, equation=equation)


# What the exporter says that a user cannot act on, silenced around the export (anything else it
# says is shown):
# - torch.onnx's registry: "torchvision is not installed. Skipping torchvision::nms" (and roi_align,
#   ...): it registers translations for torchvision's operators, which escnet's models do not use.
# - onnxscript's optimiser: "Skipping constant folding for op Split / LayerNormalization with multiple
#   outputs": those nodes stay in the graph as they are, computed by ONNX Runtime; nothing is lost.
# - torch.export's pytree (FutureWarning "isinstance(treespec, LeafSpec) is deprecated"): an
#   internal deprecation inside torch's own code, for torch's maintainers.
_QUIET_LOGGERS = ("torch.onnx._internal.exporter._registration", "onnxscript.optimizer._constant_folding")
_QUIET_WARNINGS = ((FutureWarning, r".*LeafSpec"),)


@contextlib.contextmanager
def _quiet_exporter():
    loggers = [logging.getLogger(name) for name in _QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        for category, message in _QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def _require_onnx() -> None:
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportError(f"ONNX export needs {', '.join(missing)}, which is not installed: {INSTALL_HINT}")


def export_onnx(model: nn.Module, text: torch.Tensor, path, text_input: bool = False,
                example_views: int = 2) -> Path:
    """Write `model` (ESC-Net or CAT-Seg, eval mode, CPU) with vocabulary features text (T, D)
    to path as ONNX (what the graph takes and gives: escnet/commands/export.py); the batch axis N is dynamic."""
    _require_onnx()
    model = copy.deepcopy(model).eval().cpu()
    crop = model.cfg.crop_size
    images = torch.rand(example_views, 3, crop, crop) * 255
    batch = torch.export.Dim("batch")
    if text_input:
        wrapper, args, names = TextInput(model), (images, text.float()), ["images", "text"]
        shapes = {"images": {0: batch}, "text": None}
    else:
        wrapper, args, names = FixedVocabulary(model, text.float()), (images,), ["images"]
        shapes = {"images": {0: batch}}
    wrapper.eval()  # a new module starts in training mode; the exporter warns about it
    # swin.window_attention_mask caches its tensors process-wide: tracing would leave fake
    # tensors in that cache, and every later forward of any CAT-Seg model would return them.
    window_attention_mask.cache_clear()
    wrapper.eval()  # a fresh wrapper module is in training mode, which the exporter warns about
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                wrapper, args, dynamo=True, input_names=names, output_names=["probs"], dynamic_shapes=shapes,
                custom_translation_table={torch.ops.aten.scaled_dot_product_attention.default: _attention,
                                          torch.ops.aten.einsum.default: _einsum},
                verbose=False,
            )
    except Exception as exc:
        why = f" ({ESCNET_LIMITATION})" if model.cfg.arch == "escnet" and getattr(model.cfg, "use_sam", False) else ""
        raise ExportError(f"the exporter failed on this {model.cfg.arch} model: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0]}{why}") from exc
    finally:
        window_attention_mask.cache_clear()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: program.save(str(tmp)))  # a full disk names `path`, leaves no partial file
    return path


def check_onnx(path, model: nn.Module, text: torch.Tensor, text_input: bool = False, views: int = 3,
               seed: int = 0) -> float:
    """Largest |ONNX Runtime - PyTorch| of the probabilities on `views` random views (CPU)."""
    import onnxruntime

    crop = model.cfg.crop_size
    images = torch.rand(views, 3, crop, crop, generator=torch.Generator().manual_seed(seed)) * 255
    with torch.no_grad():
        reference = model.eval()(images, text.float()).sigmoid().numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"images": images.numpy()}
    if text_input:
        feeds["text"] = text.float().numpy()
    output = session.run(["probs"], feeds)[0]
    return float(np.abs(output - reference).max())
