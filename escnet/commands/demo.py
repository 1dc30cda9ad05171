"""`escnet demo`: serve the web demo (escnet/demo.py, whose docstring is this command's --help)."""
from __future__ import annotations

import argparse
import sys

from escnet import demo as library
from escnet.commands.arguments import MODEL_HELP, add_half_option, add_runtime_options
from escnet.commands.policy import fail, load_segmenter
from escnet.demo import INSTALL_HINT, PROTOCOL_CHOICES, DemoLimits, build_demo, import_gradio, launch_demo


def add_command(subparsers) -> None:
    defaults = DemoLimits()
    parser = subparsers.add_parser(
        "demo",
        help=f"web demo in the browser (needs {INSTALL_HINT})",
        description=library.__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default=None, help=MODEL_HELP)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default %(default)s)")
    parser.add_argument("--share", action="store_true", help="also open a public Gradio share link (needs internet)")
    add_runtime_options(parser)
    add_half_option(parser)
    parser.add_argument("--protocol", choices=[value for _, value in PROTOCOL_CHOICES], default="sliding",
                        help="protocol selected when the page opens (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency,
                        help="requests segmented at once (default %(default)s)")
    parser.add_argument("--queue-size", type=int, default=defaults.queue_size,
                        help="requests allowed to wait (default %(default)s)")
    parser.add_argument("--max-file-mb", type=float, default=defaults.max_file_mb,
                        help="largest upload in MB (default %(default)s)")
    parser.add_argument("--max-pixels", type=int, default=defaults.max_pixels,
                        help="largest image in pixels (default %(default)s)")
    parser.add_argument("--max-classes", type=int, default=defaults.max_classes,
                        help="largest vocabulary (default %(default)s)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from escnet.runtime import set_threads

    try:
        import_gradio()
    except ImportError as exc:
        fail(exc)
    for name in ("concurrency", "queue_size", "max_file_mb", "max_pixels", "max_classes"):
        if getattr(args, name) <= 0:
            fail(f"--{name.replace('_', '-')} must be positive")
    try:
        set_threads(args.threads)
    except ValueError as exc:
        fail(exc)
    limits = DemoLimits(max_file_mb=args.max_file_mb, max_pixels=args.max_pixels, max_classes=args.max_classes,
                        concurrency=args.concurrency, queue_size=args.queue_size)
    segmenter = load_segmenter(args.model, device=args.device, half=args.half, protocol=args.protocol)
    demo = build_demo(segmenter, limits)
    # quiet: Gradio's own banner advises "share=True in launch()", which is no use from the CLI.
    _, local_url, share_url = launch_demo(demo, limits, host=args.host, port=args.port, share=args.share,
                                          quiet=True, prevent_thread_lock=True)
    print(f"escnet demo: serving on {local_url}" + (f" and {share_url}" if share_url else "") +
          ("" if args.share else " (add --share for a public link)") + "; Ctrl+C stops it", file=sys.stderr)
    demo.block_thread()
    return 0
