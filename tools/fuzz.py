"""Fuzz `Segmenter.segment` with random images and vocabularies; count inputs tried and failures.

    OMP_NUM_THREADS=1 python tools/fuzz.py --n 10000 [--seed 0] [--show 10]

Every input is an image (a numpy array of a random dtype / shape / value range, a PIL image of a
random mode, or a file of a random format, often truncated or with bytes overwritten; sizes include
empty sides, 1-pixel sides and extreme aspect ratios such as 1 x 1281 and 5000 x 1, the kind that
found issue 24's item 7), a protocol (single or sliding) and a
vocabulary (random unicode names with whitespace, control characters, BOMs, separators, long names).
An input passes when `segment` returns labels of the image's size with ids in [0, T), or raises one
of the package's named errors (`escnet.errors.EscnetError`: ImageError, VocabularyError, ...).
Anything else (another exception, a wrong result) is a failure. The model is a tiny random ESC-Net
(48 px views), so the run measures robustness, not accuracy. Exit status 1 if anything failed.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
from PIL import Image

MODES = ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "F", "LA", "La", "PA", "RGBX", "RGBa",
         "I;16", "I;16L", "I;16B", "I;16N"]
FORMATS = ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "DDS", "TGA", "ICO", "PPM"]
DTYPES = [np.uint8, np.uint16, np.int8, np.int32, np.int64, np.bool_, np.float16, np.float32, np.float64]
ALPHABET = ["a", "b", "z", " ", "  ", "\t", "\n", ",", ";", "\ufeff", "\x1b[31m", "\x00", "é", "猫", "🐈", "{}", "&amp;",
            ".txt", "ade150", "-", "'s"]


def _size(rng: random.Random) -> tuple[int, int]:
    pick = rng.random()
    if pick < 0.05:
        return rng.choice([(0, 0), (0, 5), (5, 0)])
    if pick < 0.15:
        return rng.randint(1, 3), rng.randint(1, 3)
    if pick < 0.35:  # a 1-pixel side or an extreme aspect ratio (1 x 1281, 5000 x 1, 3 x 2000, ...)
        thin, long = rng.choice([1, 1, 2, 3]), rng.choice([rng.randint(65, 400), rng.randint(400, 6000)])
        return (thin, long) if rng.random() < 0.5 else (long, thin)
    return rng.randint(1, 64), rng.randint(1, 64)


def random_array(rng: random.Random, nprng: np.random.Generator) -> np.ndarray:
    h, w = _size(rng)
    shape = rng.choice([(h, w), (h, w, 1), (h, w, 3), (h, w, 4), (3, h, w), (h, w, 2), (h,)])
    dtype = rng.choice(DTYPES)
    if np.issubdtype(dtype, np.floating):
        scale = rng.choice([1.0, 1.0, 255.0, -1.0])
        array = (nprng.random(shape) * scale).astype(dtype)
        if rng.random() < 0.1 and array.size:
            array.flat[0] = rng.choice([np.nan, np.inf])
        return array
    if dtype == np.bool_:
        return nprng.random(shape) < 0.5
    info = np.iinfo(dtype)
    high = rng.choice([255, int(info.max)])
    return nprng.integers(max(int(info.min), -5) if rng.random() < 0.1 else 0, high, shape, endpoint=True).astype(dtype)


def random_pil(rng: random.Random, nprng: np.random.Generator) -> Image.Image:
    w, h = _size(rng)
    rgb = Image.fromarray(nprng.integers(0, 256, (max(h, 1), max(w, 1), 3), dtype=np.uint8))
    mode = rng.choice(MODES)
    try:
        image = rgb.convert(mode) if (h and w) else Image.new(mode, (w, h))
    except ValueError:
        image = Image.new(mode, (w, h))
    if rng.random() < 0.1 and mode in ("L", "RGB", "P"):
        image.info["transparency"] = 0 if mode != "RGB" else (0, 0, 0)
    if rng.random() < 0.03:
        image.close()
    return image


def random_file(rng: random.Random, nprng: np.random.Generator, folder: Path, index: int) -> Path:
    w, h = (rng.randint(1, 48), rng.randint(1, 48)) if rng.random() < 0.8 else _size(rng)
    w, h = max(w, 1), max(h, 1)
    if max(w, h) > 16383:  # WEBP's / DDS's largest side
        w, h = min(w, 16383), min(h, 16383)
    fmt = rng.choice(FORMATS)
    image = Image.fromarray(nprng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    if fmt in ("PNG", "TIFF", "WEBP") and rng.random() < 0.3:
        image = image.convert(rng.choice(["RGBA", "L", "LA", "P", "I;16"] if fmt != "WEBP" else ["RGBA", "L"]))
    buf = io.BytesIO()
    try:
        image.save(buf, format=fmt)
    except (OSError, ValueError, KeyError):
        image.convert("RGB").save(buf, format=fmt)
    data = bytearray(buf.getvalue())
    action = rng.random()
    if action < 0.3:
        data = data[: rng.randint(0, len(data))]
    elif action < 0.7:
        for _ in range(rng.randint(1, 16)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
    path = folder / f"input_{index}.{fmt.lower()}"
    path.write_bytes(bytes(data))
    return path


def random_vocabulary(rng: random.Random):
    def name() -> str:
        pick = rng.random()
        if pick < 0.05:
            return "x" * rng.randint(100, 5000)
        if pick < 0.35:  # hostile: separators, control characters, BOMs, empty
            return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 6)))
        word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(1, 10)))
        return word + rng.choice(["", "", " " + rng.choice(ALPHABET), "  x"])

    names = [name() for _ in range(rng.randint(0 if rng.random() < 0.05 else 1, 6))]
    pick = rng.random()
    if pick < 0.5:
        return names
    if pick < 0.6:
        return [[name(), name()] for _ in range(rng.randint(1, 3))]
    return ", ".join(names) if pick < 0.85 else "; ".join(names)


def tiny_segmenter():
    import torch

    from escnet.inference.segmenter import Segmenter
    from escnet.models.clip import CLIPConfig
    from escnet.models.factory import create_model

    torch.manual_seed(0)
    clip = dataclasses.replace(CLIPConfig.preset("tiny"), image_size=48, patch_size=12)
    model = create_model("escnet", "tiny", clip=clip, crop_size=48, window=2)
    return Segmenter(model, device="cpu", protocol="single")


def check_one(segmenter, image, vocabulary, protocol: str = "single") -> str:
    """'ok', the name of the package error raised, or raises AssertionError / any unexpected exception."""
    from escnet.data.images import load_image
    from escnet.errors import EscnetError

    try:
        result = segmenter.segment(image, vocabulary, protocol=protocol)
    except EscnetError as exc:
        return type(exc).__name__
    expected = load_image(image).shape[:2]
    labels = np.asarray(result.labels)
    assert labels.shape == expected, f"labels {labels.shape} for an image of {expected}"
    assert labels.min() >= 0 and labels.max() < len(result.classes), "label ids outside [0, T)"
    return "ok"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="inputs to try")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show", type=int, default=10, help="failures to print in full")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    segmenter = tiny_segmenter()
    counts = {"ok": 0, "failure": 0}
    named: dict[str, int] = {}
    kinds = {"array": 0, "pil": 0, "file": 0}
    failures = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.n):
            rng, nprng = random.Random(args.seed * 1_000_003 + i), np.random.default_rng([args.seed, i])
            kind = rng.choice(list(kinds))
            kinds[kind] += 1
            try:
                image = {"array": lambda: random_array(rng, nprng), "pil": lambda: random_pil(rng, nprng),
                         "file": lambda: random_file(rng, nprng, Path(tmp), i)}[kind]()  # noqa: B023
                vocabulary = random_vocabulary(rng)
                protocol = rng.choice(["single", "single", "sliding"])
            except Exception as exc:  # noqa: BLE001 - the generator itself failed: not the package's fault
                print(f"input {i}: generator error {exc!r}", file=sys.stderr)
                continue
            try:
                outcome = check_one(segmenter, image, vocabulary, protocol)
                if outcome == "ok":
                    counts["ok"] += 1
                else:
                    named[outcome] = named.get(outcome, 0) + 1
            except Exception as exc:  # noqa: BLE001 - every escape is a finding
                counts["failure"] += 1
                failures.append((i, kind, f"{type(exc).__name__}: {exc}"[:300], traceback.format_exc()))
            if isinstance(image, Path):
                image.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    for i, kind, message, trace in failures[: args.show]:
        print(f"--- input {i} ({kind}): {message}\n{trace}", file=sys.stderr)
    causes: dict[str, int] = {}
    for _, _, message, _ in failures:
        cause = message.split(":")[0]
        causes[cause] = causes.get(cause, 0) + 1
    print(json.dumps({"inputs": args.n, "seed": args.seed, **kinds, **counts, "named_errors": named,
                      "failure_types": causes, "seconds": round(seconds, 1)}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
