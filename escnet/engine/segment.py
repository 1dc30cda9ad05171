"""`escnet segment`: segment images or folders of images with any vocabulary.

    escnet segment photo.jpg photos/ --classes "cat, dog, sky" --model ckpt/ --out results/

For every image it writes <name>_overlay.png (colours and a legend), <name>_labels.png (pixel
values = class ids; a palette PNG up to 256 classes) and <name>.json (classes, pixel fractions,
scores, how the result was made); --format masks,coco adds per-class mask PNGs with a
pipeline-style listing and COCO RLE JSON (see --help of --format). Images are read one batch at
a time and their views go through the model together (--batch-size). Folders are read non-recursively, taking the files whose extension
Pillow knows. A file that cannot be read is reported and skipped; the run goes on, prints a
summary and exits with status 1 if anything failed; an unusable vocabulary or model ends it before any
image is read (status 1, one line; --debug shows the traceback).

--classes: "cat, dog, sky" (each comma-separated item is a class), "building, edifice; sky"
(";" separates classes when present, commas are then synonyms), a .txt file (one class per
line, commas are synonyms), a .json list, or a benchmark name (ade150, coco-stuff, ...: the list
is in the --classes help).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from PIL import Image

from escnet.data.images import DEFAULT_MAX_PIXELS, MAX_SIDE, load_image
from escnet.data.vocab import VocabularyError, known_benchmarks, parse_vocabulary
from escnet.engine.options import (CLASS_MODES, DEFAULT_MEMORY_BUDGET_MB, MIN_MAX_SIDE, PROTOCOLS, RESIZE_MODES,
                                   TEXT_CACHE_HELP)
from escnet.engine.outputs import FORMAT_HELP, parse_formats, save_outputs
from escnet.errors import CommandError, one_line, shown_path
from escnet.fileio import check_out_folder
from escnet.progress import note, progress
from escnet.runtime import DEVICES, THREADS_HELP, resolve_device, set_threads


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _max_side(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < MIN_MAX_SIDE:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_MAX_SIDE} pixels, got {value}")
    return value


def add_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment images with an open vocabulary",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders of images")
    parser.add_argument("--classes", required=True, help=f"the vocabulary (see above); benchmark names: {known_benchmarks()}")
    parser.add_argument("--model", default=None, help="checkpoint folder or file, a named model (`escnet models`, e.g. catseg-vitl14: "
                             "fetched from the Hugging Face Hub once) or a Hub id (default: the bundled model)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="sliding",
                        help="sliding: CAT-Seg's 4 crops + global view (default); single: one resized view")
    parser.add_argument("--resize", choices=RESIZE_MODES, default="official",
                        help="official: CAT-Seg's evaluation resizes exactly (default); antialias: antialiased downscales")
    parser.add_argument("--class-mode", choices=CLASS_MODES, default="exact",
                        help="exact: score every class (default); top256: CAT-Seg's truncation (CAT-Seg models)")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--half", action="store_true",
                        help="half-precision autocast (float16 on CUDA, bfloat16 on CPU)")
    parser.add_argument("--memory-budget", type=_positive_float, default=DEFAULT_MEMORY_BUDGET_MB, metavar="MB",
                        help="per-class activation memory for exact mode; sets the class chunk (default %(default)s)")
    parser.add_argument("--max-side", type=_max_side, default=MAX_SIDE,
                        help="images with a longer side are processed at this size and their labels "
                             "upsampled back (default %(default)s)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                        help="larger images are refused, from their header before decoding (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=1, metavar="N",
                        help="images whose views go through the model together (default %(default)s)")
    parser.add_argument("--format", default="png", help=f"comma-separated output formats. {FORMAT_HELP}")
    parser.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    parser.add_argument("--no-text-cache", action="store_true", help=TEXT_CACHE_HELP)
    parser.set_defaults(func=run)


def _image_files(folder: Path, out_dir: Path) -> list[Path]:
    extensions = {ext.lower() for ext in Image.registered_extensions()}
    out_dir = out_dir.resolve()
    return sorted(
        path for path in folder.iterdir()
        if path.is_file() and path.suffix.lower() in extensions and path.resolve().parent != out_dir
    )


def _collect(inputs: list[str], out_dir: Path) -> tuple[list[Path], list[str]]:
    files, problems = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = _image_files(path, out_dir)
            if not found:
                problems.append(f"{shown_path(item)}: folder contains no image files")
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            problems.append(f"{shown_path(item)}: no such file or folder")
    return files, problems


def _unique_names(files: list[Path]) -> list[str]:
    """Output base names, unique across all inputs (case-insensitively, for case-insensitive file
    systems): the file stem, or the first free stem_2, stem_3, ... when it is taken, so d1/a.png,
    d1/a_2.png and d2/a.png become a, a_2 and a_3."""
    used: set[str] = set()
    names = []
    for path in files:
        name, count = path.stem, 1
        while name.casefold() in used:
            count += 1
            name = f"{path.stem}_{count}"
        used.add(name.casefold())
        names.append(name)
    return names


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: they load torch, which building the parser (`escnet --help`) must not
    from escnet.engine.inference import Segmenter, model_notice
    from escnet.weights.common import WeightsError

    try:
        vocabulary = parse_vocabulary(args.classes)
        device = resolve_device(args.device)
        formats = parse_formats(args.format)
        if args.max_pixels < 1:
            raise ValueError(f"--max-pixels must be at least 1, got {args.max_pixels}")
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
        set_threads(args.threads)
    except (VocabularyError, ValueError) as exc:
        raise CommandError(one_line(exc)) from exc
    check_out_folder(args.out)  # before the model is loaded, not once per image after it
    files, failures = _collect(args.inputs, args.out)
    for problem in failures:
        print(f"error: {problem}", file=sys.stderr)
    if not files:
        print("escnet segment: error: no images to segment", file=sys.stderr)
        return 1
    try:
        segmenter = Segmenter.from_pretrained(
            args.model, device=device, half=args.half, protocol=args.protocol, resize=args.resize,
            class_mode=args.class_mode, memory_budget_mb=args.memory_budget, max_side=args.max_side,
            text_cache=False if args.no_text_cache else None, max_pixels=args.max_pixels,
        )
    except (FileNotFoundError, WeightsError, ValueError, OSError) as exc:
        raise CommandError(f"cannot use model: {one_line(exc)}") from exc

    notice = model_notice(segmenter)
    if notice:
        print(notice, file=sys.stderr)

    def report(path: Path, exc: Exception) -> None:  # one bad image must not end the run
        shown = shown_path(path)
        message = one_line(exc) if shown in str(exc) else f"{shown}: {type(exc).__name__}: {one_line(exc)}"
        note(f"error: {message}")
        failures.append(message)

    jobs = list(zip(files, _unique_names(files)))
    batches = [jobs[i:i + args.batch_size] for i in range(0, len(jobs), args.batch_size)]
    done = 0
    for batch in progress(batches, desc="segment", unit="batch"):
        loaded = []
        for path, name in batch:
            try:
                loaded.append((path, name, load_image(path, args.max_pixels)))
            except Exception as exc:
                report(path, exc)
        try:
            results = segmenter.segment([image for _, _, image in loaded], vocabulary, batch_size=len(loaded) or 1)
        except Exception as exc:
            for path, _, _ in loaded:
                report(path, exc)
            continue
        for (path, name, _), result in zip(loaded, results):
            try:
                save_outputs(result, args.out, name, formats, file_name=path.name)
                done += 1
            except Exception as exc:
                report(path, exc)
    print(f"segmented {done} of {len(files)} image(s) into {shown_path(args.out)}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} input(s) failed:", file=sys.stderr)
        for problem in failures:
            print(f"  {problem}", file=sys.stderr)
        return 1
    return 0
