"""`escnet models`: the registry of named models; fetch one now.

    escnet models                          # name, kind, where it comes from, pinned or trust-on-first-use, cached
    escnet models --fetch catseg-vitl14    # download, verify and convert now (then usable offline)
"""
from __future__ import annotations

import argparse
import sys

from escnet import registry
from escnet.commands.policy import fail


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
    """Fetch (and convert) a registry entry now; returns the local path (escnet.hub.resolve)."""
    from escnet import hub

    return hub.resolve(name, None, trust_new)


def _run_models(args: argparse.Namespace) -> int:
    if not args.fetch:
        list_models()
        return 0
    try:
        path = fetch(args.fetch, args.trust_new)
    except (FileNotFoundError, ValueError, OSError) as exc:  # WeightsError is a ValueError
        fail(exc)
    print(f"{args.fetch}: {path}")
    return 0


def add_command(sub) -> None:
    p = sub.add_parser("models", help="list the named models (registry); --fetch NAME downloads one now")
    p.add_argument("--fetch", metavar="NAME", help="download, verify and convert this model now")
    p.add_argument("--trust-new", action="store_true",
                   help="accept a file whose sha256 differs from the one recorded at its first download")
    p.set_defaults(func=_run_models)
