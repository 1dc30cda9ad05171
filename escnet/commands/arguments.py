"""Argument groups shared by the commands, declared once (names, choices and defaults from
escnet.inference.options, the ones the Segmenter takes). Torch-free: building the parser imports it.

    add_inference_options(parser)                 # --protocol --resize --class-mode --no-text-cache
    add_inference_options(parser, precision=True) # ... and --half --memory-budget --max-side --backend
    add_runtime_options(parser)                   # --device --threads
    segmenter_options(args)                       # -> the Segmenter.from_pretrained keywords they give
"""
from __future__ import annotations

import argparse
import math

from escnet.data.images import MAX_SIDE
from escnet.inference.options import (BACKEND_HELP, BACKENDS, CLASS_MODES, DEFAULT_MEMORY_BUDGET_MB, MIN_MAX_SIDE,
                                      PROTOCOLS, RESIZE_MODES, TEXT_CACHE_HELP)
from escnet.runtime import DEVICES, THREADS_HELP

PROTOCOL_HELP = "sliding: CAT-Seg's sliding window, 4 crops + a global view (the paper's, default); single: one resized view"
RESIZE_HELP = "official: CAT-Seg's evaluation resizes exactly (default); antialias: antialiased model-side downscales"
CLASS_MODE_HELP = ("exact: score every class (default, bounded memory); top256: CAT-Seg's truncation for large "
                   "vocabularies, the mode that reproduces its published ADE-847 / PC-459 numbers (CAT-Seg models)")
MODEL_HELP = ("checkpoint folder or file, a named model (`escnet models`, e.g. catseg-vitl14: fetched from the "
              "Hugging Face Hub once) or a Hub id (default: the bundled model)")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def max_side(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < MIN_MAX_SIDE:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_MAX_SIDE} pixels, got {value}")
    return value


def add_inference_options(parser: argparse.ArgumentParser, precision: bool = False, text_cache: bool = True) -> None:
    """--protocol, --resize, --class-mode (and --no-text-cache); precision: also --half,
    --memory-budget, --max-side and --backend."""
    parser.add_argument("--protocol", choices=PROTOCOLS, default="sliding", help=PROTOCOL_HELP)
    parser.add_argument("--resize", choices=RESIZE_MODES, default="official", help=RESIZE_HELP)
    parser.add_argument("--class-mode", choices=CLASS_MODES, default="exact", help=CLASS_MODE_HELP)
    if precision:
        add_half_option(parser)
        parser.add_argument("--memory-budget", type=positive_float, default=DEFAULT_MEMORY_BUDGET_MB, metavar="MB",
                            help="per-class activation memory for exact mode; sets the class chunk (default %(default)s)")
        parser.add_argument("--max-side", type=max_side, default=MAX_SIDE,
                            help="images with a longer side are processed at this size and their labels "
                                 "upsampled back (default %(default)s)")
        parser.add_argument("--backend", choices=BACKENDS, default="eager", help=BACKEND_HELP)
    if text_cache:
        parser.add_argument("--no-text-cache", action="store_true", help=TEXT_CACHE_HELP)


def add_half_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--half", action="store_true", help="half-precision autocast (float16 on CUDA, bfloat16 on CPU)")


def add_runtime_options(parser: argparse.ArgumentParser, device: bool = True) -> None:
    """--device (auto: cuda if available, else mps, else cpu) and --threads."""
    if device:
        parser.add_argument("--device", choices=DEVICES, default="auto",
                            help="default: cuda if available, else mps, else cpu")
    parser.add_argument("--threads", type=int, default=None, help=THREADS_HELP)


def segmenter_options(args: argparse.Namespace) -> dict:
    """The Segmenter.from_pretrained keywords that the parsed inference options give (those present)."""
    options = {key: getattr(args, key) for key in ("protocol", "resize", "class_mode", "half", "max_side", "backend")
               if hasattr(args, key)}
    if hasattr(args, "memory_budget"):
        options["memory_budget_mb"] = args.memory_budget
    if hasattr(args, "no_text_cache"):
        options["text_cache"] = False if args.no_text_cache else None
    return options
