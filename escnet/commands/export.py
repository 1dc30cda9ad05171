"""`escnet export --format onnx`: the model's forward pass as an ONNX graph, checked with ONNX Runtime
(escnet.inference.export).

    escnet export --format onnx --model ckpt/ --classes "cat, dog, sky" --out catseg.onnx
    escnet export --format onnx --model ckpt/ --classes ade150 --text-input --out catseg.onnx

What is exported: views (N, 3, c, c) float RGB 0..255 (c = the model's crop size, N any) ->
sigmoid probabilities (N, T, c, c). The vocabulary is baked in as precomputed text features
(default), or with --text-input the (T, D) text features are a second input, T fixed to the
size of the vocabulary given at export (CAT-Seg's padding and top-k truncation depend on T).
The protocol around the model (resizing, the sliding window's crops and their merge, the final
argmax) is cheap array code and stays outside the graph: escnet.inference.segmenter's
`sliding_views` / `merge_sliding` say exactly what it does.

ONNX needs `pip install 'escnet[export]'` (onnx, onnxruntime; torch's exporter also uses
onnxscript). The exporter is torch.export-based; attention over more than 4 dimensions (CAT-Seg's
Swin windows) is written out as MatMul/Softmax by `_attention`, as ONNX's own translation only
takes 4-D inputs. After writing, the graph runs in ONNX Runtime on CPU on a fresh random batch
and the largest difference from PyTorch is printed (and must stay within --tolerance). What the
exporter reports that needs no action (torchvision's operators not registered, constant folding
skipped for multi-output nodes, torch-internal deprecations) is silenced; anything else is shown.

Both models export (ESC-Net's pseudo prompt generator has shapes that depend only on the
input's); a failure on an ESC-Net says what to use instead (escnet.inference.export.ESCNET_LIMITATION).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from escnet.commands.arguments import MODEL_HELP, add_runtime_options
from escnet.commands.policy import fail, load_segmenter


FORMATS = ("onnx",)


def add_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="export a model to ONNX (ESC-Net or CAT-Seg; needs escnet[export])",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="output format (default %(default)s)")
    parser.add_argument("--model", default=None, help=MODEL_HELP)
    parser.add_argument("--classes", required=True, help="the vocabulary to bake in (as `escnet segment --classes`)")
    parser.add_argument("--text-input", action="store_true",
                        help="make the (T, D) text features a graph input instead of constants")
    parser.add_argument("--out", required=True, type=Path, help="the .onnx file to write")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest ONNX Runtime vs PyTorch difference accepted (default %(default)s)")
    add_runtime_options(parser, device=False)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: they load torch, which building the parser (`escnet --help`) must not
    from escnet.data.vocab import VocabularyError, parse_vocabulary
    from escnet.inference.export import ExportError, check_onnx, export_onnx
    from escnet.runtime import set_threads

    set_threads(args.threads)
    try:
        entries = parse_vocabulary(args.classes)
        segmenter = load_segmenter(args.model, notice=False, device="cpu")
        text = segmenter.text_features(entries)
        path = export_onnx(segmenter.model, text, args.out, text_input=args.text_input)
        error = check_onnx(path, segmenter.model, text, text_input=args.text_input)
    except (ExportError, VocabularyError, FileNotFoundError, ValueError, OSError) as exc:
        fail(exc)
    print(f"wrote {path} ({len(entries)} classes, {'text input' if args.text_input else 'vocabulary baked in'}); "
          f"ONNX Runtime vs PyTorch on CPU: max |difference| {error:.2e}", file=sys.stderr)
    if error > args.tolerance:
        fail(f"the difference exceeds --tolerance {args.tolerance:g}")
    return 0
