"""`escnet push`: share a model.

    escnet push output/run/model me/escnet-vitb16-coco   # upload a model in escnet's format with its card
"""
from __future__ import annotations

import argparse

from escnet.commands.policy import fail


def _run_push(args: argparse.Namespace) -> int:
    from escnet import hub

    try:
        info = hub.push_to_hub(args.model_dir, args.repo_id, private=args.private)
    except (FileNotFoundError, ValueError, OSError) as exc:
        fail(exc)
    print(f"uploaded {args.model_dir} to {getattr(info, 'commit_url', args.repo_id)}")
    return 0


def add_command(sub) -> None:
    p = sub.add_parser("push", help="upload a model in escnet's format (with its model card) to the Hugging Face Hub")
    p.add_argument("model_dir", help="folder with config.json + model.safetensors")
    p.add_argument("repo_id", help="Hub model repository, e.g. me/escnet-vitb16-coco (created if missing)")
    p.add_argument("--private", action="store_true")
    p.set_defaults(func=_run_push)
