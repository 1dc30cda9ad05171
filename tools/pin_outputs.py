"""Pinned outputs: small reference files of what escnet's models compute, checked by
tests/test_pinned_outputs.py to 1e-4, regenerated ONLY by this command, which also records why.

    python tools/pin_outputs.py --why "reason the numbers change" [CASE ...]   # rewrite, log in CHANGELOG.md
    python tools/pin_outputs.py --check [CASE ...]                          # compare only, write nothing

Each case (CASES) is a seeded computation on CPU (one thread, float32) returning named arrays; its file is
tests/pinned/<case>.npz. Regenerating appends one line per case to CHANGELOG.md (repo root), section
"Pinned outputs": date, case, the largest change against the previous file, the commit, torch's version
and the reason given. A model change that moves a pinned number therefore shows in review twice: a
binary file diff and a changelog line saying why.

Cases in PENDING are not pinned yet (no file; the test accepts that and says so); pin them with this
command and remove them from PENDING in the same commit.
"""
from __future__ import annotations

import argparse
import datetime
import io
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PINNED_DIR = REPO / "tests" / "pinned"
CHANGELOG = REPO / "CHANGELOG.md"
SECTION = "## Pinned outputs"
TOLERANCE = 1e-4  # absolute, on logits and probabilities; integer arrays (labels) must be equal


def _setup():
    """torch, imported late (--help needs none). Cases change no global state: the test runs them in
    its own process. Thread counts change float sums by ~1e-6, far below TOLERANCE."""
    import torch

    return torch


def _inputs(torch, embed_dim: int, t: int, b: int = 2, size: int = 96, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(b, 3, size, size, generator=gen) * 255
    text = torch.nn.functional.normalize(torch.randn(t, embed_dim, generator=gen), dim=-1)
    return images, text


def catseg_tiny() -> dict[str, np.ndarray]:
    """Tiny CAT-Seg (seed 0, padding tokens drawn so they matter), eval, 2 random 96 px images: native
    logits (B, T, 24, 24) with T = 5 (padded to pad_len 8) and T = 11 (top-8 truncation, -100 elsewhere)."""
    torch = _setup()
    from escnet.models.catseg import CATSeg, CATSegConfig

    torch.manual_seed(0)
    model = CATSeg(CATSegConfig.preset("tiny")).eval()
    with torch.no_grad():
        for layer in model.transformer.layers:
            layer.attention.padding_tokens.normal_()
            layer.attention.padding_guidance.normal_()
        out = {}
        for t in (5, 11):
            images, text = _inputs(torch, model.cfg.clip.embed_dim, t, seed=t)
            out[f"logits_t{t}"] = model(images, text, upsample=False).numpy()
    return out


def escnet_tiny() -> dict[str, np.ndarray]:
    """Tiny ESC-Net in the default (paper) reading, seed 0, eval, 2 random 96 px images, T = 5:
    native logits (B, T, 24, 24), and what PPG gave each ESC block n (records of return_ppg=True):
    the binary mask `fg{n}` (B, T, g, g), the regions `regions{n}` (B, T, g, g), the point labels
    `labels{n}` (B, T, K) and the points `points{n}` (B, T, K, 2). The logits move little with the
    pseudo prompts of a random-weight model (alpha 0.65 -> 0.6: 1.6e-4); the records move at once."""
    torch = _setup()
    from escnet.models.escnet import ESCNet, ESCNetConfig

    torch.manual_seed(0)
    model = ESCNet(ESCNetConfig.preset("tiny")).eval()
    images, text = _inputs(torch, model.cfg.clip.embed_dim, 5, seed=5)
    with torch.no_grad():
        logits, records = model(images, text, upsample=False, return_ppg=True)
    out = {"logits_t5": logits.numpy()}
    for n, r in enumerate(records, 1):
        out.update({f"fg{n}": r.foreground.numpy().astype(np.int64), f"regions{n}": r.regions.numpy().astype(np.int64),
                    f"labels{n}": r.labels.numpy().astype(np.int64), f"points{n}": r.points.numpy()})
    return out


def bundled_example() -> dict[str, np.ndarray]:
    """The bundled model on the bundled example scene with its 13-class vocabulary, single-view
    protocol: labels (128, 128) and probabilities (13, 32, 32) (every 4th pixel of (13, 128, 128))."""
    _setup()
    from importlib import resources

    from escnet.inference.segmenter import Segmenter

    folder = resources.files("escnet") / "assets" / "examples"
    names = [n for n in (folder / "synthetic_scene.txt").read_text().splitlines() if n]
    seg = Segmenter.from_pretrained(device="cpu", protocol="single")
    result = seg.segment(str(folder / "synthetic_scene.png"), names, return_probs=True)
    return {"labels": np.asarray(result.labels).astype(np.int64), "probs_every4": result.probs[:, ::4, ::4].copy()}


CASES = {"catseg_tiny": catseg_tiny, "escnet_tiny": escnet_tiny, "bundled_example": bundled_example}
PENDING: dict[str, str] = {}  # case -> why it is not pinned yet (none today)


def path_of(case: str, folder: Path = PINNED_DIR) -> Path:
    return folder / f"{case}.npz"


def load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def compare(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray]) -> list[str]:
    """Problems (empty: equal within TOLERANCE): missing or extra arrays, shapes, dtypes, values."""
    problems = []
    if sorted(expected) != sorted(actual):
        return [f"arrays {sorted(actual)} != pinned {sorted(expected)}"]
    for name, want in expected.items():
        got = actual[name]
        if got.shape != want.shape or got.dtype != want.dtype:
            problems.append(f"{name}: {got.dtype}{list(got.shape)} != pinned {want.dtype}{list(want.shape)}")
        elif np.issubdtype(want.dtype, np.integer):
            if not np.array_equal(got, want):
                problems.append(f"{name}: {int((got != want).sum())} of {want.size} values differ")
        else:
            diff = float(np.abs(got.astype(np.float64) - want).max()) if want.size else 0.0
            if not diff <= TOLERANCE:
                problems.append(f"{name}: max |difference| {diff:.3g} > {TOLERANCE:g}")
    return problems


def max_change(old: dict[str, np.ndarray] | None, new: dict[str, np.ndarray]) -> str:
    if old is None:
        return "new"
    if sorted(old) != sorted(new) or any(old[k].shape != new[k].shape for k in new):
        return "arrays changed"
    parts = []
    for k in sorted(new):
        if np.issubdtype(new[k].dtype, np.integer):
            parts.append(f"{k}: {int((old[k] != new[k]).sum())} values changed")
        else:
            parts.append(f"{k}: max |change| {float(np.abs(old[k].astype(np.float64) - new[k]).max()):.3g}")
    return "; ".join(parts)


def _commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def append_changelog(path: Path, lines: list[str]) -> None:
    """Append lines at the end of the "Pinned outputs" section (created if absent)."""
    text = path.read_text() if path.exists() else "# Changelog\n"
    if SECTION not in text:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\nWhy a pinned output (tests/pinned/, tools/pin_outputs.py) changed; newest last.\n\n"
    start = text.index(SECTION) + len(SECTION)
    following = text.find("\n## ", start)
    end = len(text) if following < 0 else following + 1
    body = text[:end].rstrip("\n") + "\n"
    if not body.splitlines()[-1].startswith("- "):
        body += "\n"  # a blank line between the section's intro and its first entry
    body += "".join(line + "\n" for line in lines)
    rest = text[end:]
    path.write_text(body + ("\n" + rest if rest else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", help=f"cases (default: every pinned one); known: {', '.join(CASES)}")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--why", help="regenerate, and record this reason in CHANGELOG.md")
    what.add_argument("--check", action="store_true", help="compare with the pinned files; write nothing")
    parser.add_argument("--out-dir", type=Path, default=PINNED_DIR, help=argparse.SUPPRESS)
    parser.add_argument("--changelog", type=Path, default=CHANGELOG, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    if args.why is not None and not args.why.strip():
        parser.error("--why needs a reason")
    cases = args.cases or [c for c in CASES if c not in PENDING or path_of(c, args.out_dir).exists()]

    if args.check:
        failed = 0
        for case in cases:
            path = path_of(case, args.out_dir)
            if not path.exists():
                print(f"{case}: not pinned ({path} missing)")
                failed += 1
                continue
            problems = compare(load(path), CASES[case]())
            print(f"{case}: " + ("ok" if not problems else "; ".join(problems)))
            failed += bool(problems)
        return int(failed > 0)

    import torch

    torch.set_num_threads(1)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    today = datetime.date.today().isoformat()
    lines = []
    for case in cases:
        path = path_of(case, args.out_dir)
        old = load(path) if path.exists() else None
        new = CASES[case]()
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **new)
        path.write_bytes(buffer.getvalue())
        change = max_change(old, new)
        lines.append(f"- {today} `{case}` ({change}; at {_commit()}, torch {torch.__version__}): {args.why.strip()}")
        print(f"{case}: wrote {path} ({path.stat().st_size} bytes; {change})")
    append_changelog(args.changelog, lines)
    print(f"recorded in {args.changelog}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
