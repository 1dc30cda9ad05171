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
import sys
from pathlib import Path


from escnet.commands.arguments import MODEL_HELP, add_inference_options, add_runtime_options, segmenter_options
from escnet.commands.policy import EXIT_FAILED, fail, load_segmenter
from escnet.data.images import DEFAULT_MAX_PIXELS
from escnet.data.vocab import VocabularyError, known_benchmarks, parse_vocabulary
from escnet.errors import one_line, shown_path
from escnet.fileio import check_out_folder
from escnet.inference.folder import FolderRun, ResumeError, image_files, run_jobs, run_settings, unique_names
from escnet.inference.outputs import FORMAT_HELP, parse_formats
from escnet.progress import note
from escnet.runtime import resolve_device, set_threads, setup_runtime


def add_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment images with an open vocabulary",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders of images")
    parser.add_argument("--classes", required=True, help=f"the vocabulary (see above); benchmark names: {known_benchmarks()}")
    parser.add_argument("--model", default=None, help=MODEL_HELP)
    parser.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    add_inference_options(parser, precision=True)
    add_runtime_options(parser)
    parser.add_argument("--batch-size", type=int, default=1, metavar="N",
                        help="images whose views go through the model together (default %(default)s)")
    parser.add_argument("--format", default="png", help=f"comma-separated output formats. {FORMAT_HELP}")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                        help="larger images are refused, from their header before decoding (default %(default)s)")
    parser.add_argument("--resume", action="store_true",
                        help="skip images whose outputs in --out are complete (a run interrupted, or one "
                             "over torchrun processes: see docs/deploy.md); the settings must match those in --out's escnet-run/manifest.json")
    parser.set_defaults(func=run)


def _collect(inputs: list[str], out_dir: Path) -> tuple[list[Path], list[str]]:
    files, problems = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = image_files(path, exclude=out_dir)
            if not found:
                problems.append(f"{shown_path(item)}: folder contains no image files")
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            problems.append(f"{shown_path(item)}: no such file or folder")
    return files, problems


def run(args: argparse.Namespace) -> int:
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
        fail(exc)
    check_out_folder(args.out)  # before the model is loaded, not once per image after it
    files, failures = _collect(args.inputs, args.out)
    for problem in failures:
        print(f"error: {problem}", file=sys.stderr)
    if not files:
        fail("no images to segment")
    # loads torch, which building the parser (`escnet --help`) must not
    runtime = setup_runtime(device)  # torchrun: joins the process group, cuda:LOCAL_RANK on GPUs
    segmenter = load_segmenter(args.model, device=runtime.device, max_pixels=args.max_pixels, **segmenter_options(args))

    def report(path: Path, exc: Exception) -> None:  # one bad image must not end the run
        shown = shown_path(path)
        message = one_line(exc) if shown in str(exc) else f"{shown}: {type(exc).__name__}: {one_line(exc)}"
        note(f"error: {message}")
        failures.append(message)

    jobs = list(zip(files, unique_names(files)))
    # torchrun: this process's share of the jobs (escnet.inference.folder), less those done (--resume)
    try:
        run = FolderRun.start(args.out, jobs, formats, run_settings(segmenter, vocabulary, formats), resume=args.resume)
    except ResumeError as exc:
        fail(exc)
    run_jobs(segmenter, run, vocabulary, batch_size=args.batch_size, on_error=lambda path, exc: report(path, exc) or failures[-1])
    manifest = run.finish()
    runtime.close()
    done = run.counts["done"]
    if manifest is not None and run.world_size > 1:
        print(f"{run.world_size} processes: {manifest['this_run']}", file=sys.stderr)
    if run.counts["skipped"]:
        print(f"skipped {run.counts['skipped']} image(s) whose outputs exist (--resume)", file=sys.stderr)
    if len(jobs) == 1 and failures:
        return EXIT_FAILED  # one input: its one error line says it all
    print(f"segmented {done} of {len(run.todo) + run.counts['skipped']} image(s) into {shown_path(args.out)}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} input(s) failed:", file=sys.stderr)
        for problem in failures:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_FAILED
    return 0
