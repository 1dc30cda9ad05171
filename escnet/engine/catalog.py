"""`escnet models` (the registry of named models; fetch one now) and `escnet push` (share a model).

    escnet models                          # name, kind, where it comes from, pinned or trust-on-first-use, cached
    escnet models --fetch catseg-vitl14    # download, verify and convert now (then usable offline)
    escnet push output/run/model me/escnet-vitb16-coco   # upload a model in escnet's format with its card
"""
from __future__ import annotations

import argparse
import sys

from escnet import registry
from escnet.errors import CommandError, one_line


def _cached(entry) -> str:
    from escnet import hub

    try:
        return "yes" if hub.is_cached(entry) else "no"
    except registry.ModelNotFoundError:  # huggingface_hub missing
        return "?"


def list_models(out=None) -> None:
    out = out or sys.stdout
    rows = [("name", "kind", "source", "integrity", "cached", "description")]
    for name, entry in registry.MODELS.items():
        integrity = "bundled" if entry.kind == "bundled" else ("pinned" if entry.pinned else "trust on first use")
        rows.append((name, entry.kind, entry.where, integrity, _cached(entry), entry.description))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1], file=out)
    aliases = ", ".join(f"{a} = {n}" for a, n in registry.ALIASES.items())
    print(f"\naliases: {aliases}. A Hub id (org/name) is accepted wherever a model or weights path is.", file=out)


def fetch(name: str, trust_new: bool = False):
    """Fetch (and convert) a registry entry now; returns the local path."""
    from escnet import hub

    entry = registry.get_entry(name)
    if entry is None:
        raise registry.ModelNotFoundError(f"unknown model {name!r}; `escnet models` lists the names")
    if entry.kind == "bundled":
        return registry.bundled_path(entry, name)
    if entry.kind in ("clip", "sam"):
        return hub.fetch_folder(entry, trust_new)
    return hub.fetch_model(entry, trust_new)


def _run_models(args: argparse.Namespace) -> int:
    if not args.fetch:
        list_models()
        return 0
    try:
        path = fetch(args.fetch, args.trust_new)
    except (FileNotFoundError, ValueError, OSError) as exc:  # WeightsError is a ValueError
        raise CommandError(one_line(exc)) from exc
    print(f"{args.fetch}: {path}")
    return 0


def _run_push(args: argparse.Namespace) -> int:
    from escnet import hub

    try:
        info = hub.push_to_hub(args.model_dir, args.repo_id, private=args.private)
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise CommandError(one_line(exc)) from exc
    print(f"uploaded {args.model_dir} to {getattr(info, 'commit_url', args.repo_id)}")
    return 0


def add_command(sub) -> None:
    p = sub.add_parser("models", help="list the named models (registry); --fetch NAME downloads one now")
    p.add_argument("--fetch", metavar="NAME", help="download, verify and convert this model now")
    p.add_argument("--trust-new", action="store_true",
                   help="accept a file whose sha256 differs from the one recorded at its first download")
    p.set_defaults(func=_run_models)
    p = sub.add_parser("push", help="upload a model in escnet's format (with its model card) to the Hugging Face Hub")
    p.add_argument("model_dir", help="folder with config.json + model.safetensors")
    p.add_argument("repo_id", help="Hub model repository, e.g. me/escnet-vitb16-coco (created if missing)")
    p.add_argument("--private", action="store_true")
    p.set_defaults(func=_run_push)
