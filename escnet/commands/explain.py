"""`escnet explain`: draw what the model computes on the way (the paper's Fig. 3 and Fig. 6).

    escnet explain photo.png --classes "cat, dog, sky" --model ckpt/ --out explain/

One forward of the image's single view with every class. Writes into --out:
fig3_NN_CLASS.png per drawn class (ESC-Net: one row per ESC block: the view with the block's
points, (a) the map the block gave the pseudo prompt generator, (b) the map its threshold read,
(c) the binary mask, (d) the k-means regions, (e) the map filtered by the regions with each
region's point, (f) the mask prompt), fig6.png (per drawn class: the correlation C0, the map after
each ESC block (CAT-Seg: each aggregator layer) and the prediction, each scaled to its own range)
and explain.json (per block: foreground pixels, valid regions, pixels per region, the points; the
maps' ranges). CAT-Seg has no pseudo prompts: it gets fig6.png and explain.json, and a one-line note.

--draw picks the classes drawn (default: those the prediction shows, largest first, at most 12);
every class of --classes is scored either way. docs/explain.md shows the pictures of the bundled model.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from escnet.commands.arguments import MODEL_HELP, add_runtime_options
from escnet.commands.policy import fail, load_segmenter
from escnet.data.images import DEFAULT_MAX_PIXELS
from escnet.data.vocab import VocabularyError, display_name, known_benchmarks, parse_vocabulary
from escnet.errors import shown_path
from escnet.fileio import check_out_folder
from escnet.runtime import resolve_device, set_threads


def add_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="draw the pseudo prompts (paper Fig. 3) and per-block class maps (Fig. 6) of one image",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("image", metavar="IMAGE", help="the image file")
    parser.add_argument("--classes", required=True, help=f"the vocabulary (as for `escnet segment`); benchmark names: "
                                                         f"{known_benchmarks()}")
    parser.add_argument("--model", default=None, help=MODEL_HELP)
    parser.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    parser.add_argument("--draw", default=None, metavar="NAMES",
                        help="comma-separated classes to draw (default: those the prediction shows, at most 12)")
    add_runtime_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        vocabulary = parse_vocabulary(args.classes)
        draw = [n.strip() for n in args.draw.split(",") if n.strip()] if args.draw is not None else None
        if draw is not None and not draw:
            raise ValueError("--draw names no class")
        known = {n.casefold() for e in vocabulary for n in (e, display_name(e))}
        missing = [n for n in draw or [] if n.casefold() not in known]
        if missing:
            raise ValueError(f"--draw: {', '.join(map(repr, missing))} not in the vocabulary")
        device = resolve_device(args.device)
        set_threads(args.threads)
    except (VocabularyError, ValueError) as exc:
        fail(exc)
    if not Path(args.image).is_file():
        fail(f"{shown_path(args.image)}: no such image file")
    check_out_folder(args.out)
    segmenter = load_segmenter(args.model, device=device, max_pixels=DEFAULT_MAX_PIXELS)  # loads torch
    from escnet.inference.explain import explain  # torch at import: not while building the parser

    try:
        result = explain(segmenter, args.image, vocabulary, draw=draw)
    except (VocabularyError, ValueError, OSError) as exc:  # a file that is no image, a class not in the vocabulary
        fail(exc)
    for note in result.notes:
        print(f"escnet explain: {note}", file=sys.stderr)
    paths = result.save(args.out)
    figures = sum(p.suffix == ".png" for p in paths)
    print(f"wrote {figures} figure(s) and explain.json for {len(result.drawn)} class(es) into {shown_path(args.out)}",
          file=sys.stderr)
    return 0
