"""A synthetic open-vocabulary benchmark where a pixel's colour does not decide its class: grouping does.

Scenes of 128 x 128 pixels on the textured grey background of ``escnet.data.synthetic`` hold
1-3 *two-coloured* objects and 1-2 *one-coloured* objects (clutter). A two-coloured object is a
shape (circle, square, triangle, star, cross) cut by a random straight line into two parts, each at
least 30 % of it, painted in two different hues and brightness-textured. Its class is the pair of
hues in free text, in a fixed order ("red blue", "yellow green"); the one-coloured clutter is
"background". No objects overlap, so every object is wholly visible and its label is exact.

Why this needs grouping: every hue occurs in five pair classes and in the background clutter. A
red pixel (or a token that sees only red) may belong to "red orange", "red yellow", ... "red
purple" or to the background; only the other part of *the same object* says which. A per-pixel
classifier can at best spread its vote over the classes that contain the pixel's hue; a model
that groups the object's pixels (SAM's region aggregation from a point or mask prompt) can read
both hues.

Why names of hue pairs: a tiny CLIP trained from scratch learns hue words within a few hundred
steps (see escnet.data.synthetic); names of shapes it did not learn on a CPU budget. A pair name
is made of the words it learns fast, and its meaning is a property of the whole object.

Open vocabulary: 6 hues make 15 pair classes; three ("red green", "orange blue", "yellow purple",
which share no hue) never occur in training: *unseen* classes, new combinations of seen words.
Training scenes hold only seen pairs; validation scenes draw each two-coloured object from the seen
and the unseen pairs with equal probability, scored with all 16 names.

Layout: that of ``escnet.data.synthetic`` under ``$DETECTRON2_DATASETS/synthetic-grouping``
(`escnet prepare synthetic-grouping`): images/{train,val}, annotations_detectron2/{train,val},
classes.txt (background, 12 seen, 3 unseen), train_classes.txt, unseen_classes.txt. Every scene
is a pure function of (split, index).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np

from escnet.data.prepare import save_array
from escnet.data.synthetic import (BACKGROUND, HUES, SHAPES, Vocabulary, _background, _pattern, shape_mask,
                                   write_generated)

UNSEEN = ("red green", "orange blue", "yellow purple")
TEXTURES = ("gradient", "striped", "dotted", "checkered")
IMAGE_SIZE = 128
NUM_TRAIN = 2000
NUM_VAL = 300
FOLDER = "synthetic-grouping"
MIN_PART = 0.3  # each colour covers at least this fraction of a two-coloured object
_SPLIT_SEED = {"train": 0, "val": 1, "sam-train": 2, "sam-eval": 3}
_BASE_SEED = 20261202
_PLACEMENT_TRIES = 30


def vocabulary() -> Vocabulary:
    """16 names: background, the 12 seen hue pairs, the 3 unseen hue pairs (label id = index)."""
    pairs = [f"{a} {b}" for a, b in combinations(HUES, 2)]
    return Vocabulary((BACKGROUND, *(p for p in pairs if p not in UNSEEN)), UNSEEN)


@dataclass
class Scene:
    """One scene: image (S, S, 3) uint8, label (S, S) uint8 (class id), instances (S, S) int32
    (0 = no object, k = object k, clutter included), classes[k - 1] = class id of object k
    (0 for clutter)."""

    image: np.ndarray
    label: np.ndarray
    instances: np.ndarray
    classes: list[int]


def _hue_fill(rng: np.random.Generator, hue: str, size: int) -> np.ndarray:
    """(size, size, 3) float32: the hue at a random brightness, modulated by a random texture."""
    base = np.array(HUES[hue], np.float32) * rng.uniform(0.85, 1.1) * (1.0 + rng.normal(0, 0.03, 3)).astype(np.float32)
    texture = TEXTURES[rng.integers(len(TEXTURES))]
    return base * (1.0 + rng.uniform(0.08, 0.15) * _pattern(texture, rng, size)[..., None])


def _split(mask: np.ndarray, cx: float, cy: float, r: float, rng: np.random.Generator) -> np.ndarray:
    """A straight cut of `mask` -> (size, size) bool of the first part; both parts >= MIN_PART."""
    size = mask.shape[0]
    c = np.arange(size, dtype=np.float32) + 0.5
    ys, xs = np.meshgrid(c, c, indexing="ij")
    total = mask.sum()
    for attempt in range(10):
        theta = rng.uniform(0, math.pi)
        offset = rng.uniform(-0.35, 0.35) * r if attempt < 9 else 0.0
        side = (xs - cx) * math.cos(theta) + (ys - cy) * math.sin(theta) < offset
        part = mask & side
        if MIN_PART * total <= part.sum() <= (1 - MIN_PART) * total:
            return part
    return part  # a cut through the centre of these convex-ish shapes halves them


def _paste(local: np.ndarray, x0: int, y0: int, size: int) -> np.ndarray:
    """A (size, size) bool canvas with `local` (L, L) bool at column x0, row y0, clipped at the edges."""
    out = np.zeros((size, size), bool)
    n = local.shape[0]
    ya, yb, xa, xb = max(y0, 0), min(y0 + n, size), max(x0, 0), min(x0 + n, size)
    out[ya:yb, xa:xb] = local[ya - y0:yb - y0, xa - x0:xb - x0]
    return out


def render_scene(rng: np.random.Generator, pair_pool: list[str], names: tuple[str, ...], size: int = IMAGE_SIZE,
                 num_pairs: tuple[int, int] = (1, 3), num_clutter: tuple[int, int] = (1, 2)) -> Scene:
    """A scene with two-coloured objects drawn from `pair_pool` and one-coloured clutter (module docstring)."""
    hues = list(HUES)
    image = _background(rng, size)
    label = np.zeros((size, size), np.uint8)
    instances = np.zeros((size, size), np.int32)
    kinds = ["pair"] * int(rng.integers(num_pairs[0], num_pairs[1] + 1))
    kinds += ["clutter"] * int(rng.integers(num_clutter[0], num_clutter[1] + 1))
    classes: list[int] = []
    for kind in (kinds[i] for i in rng.permutation(len(kinds))):
        shape = SHAPES[rng.integers(len(SHAPES))]
        r = rng.uniform(0.14, 0.22) * size
        angle = rng.uniform(0, 2 * math.pi)
        # the outline is drawn once on a small canvas and moved by whole pixels: placement tries are cheap
        ext = int(math.ceil(1.7 * r))  # covers every outline (the cross reaches 1.63 r)
        frac = rng.uniform(0, 1, 2)
        local = shape_mask(shape, ext + frac[0], ext + frac[1], r, angle, 2 * ext + 1)
        for _ in range(_PLACEMENT_TRIES):
            ix, iy = rng.integers(math.ceil(1.2 * r), int(size - 1.2 * r), 2, endpoint=True)
            cx, cy = ix + frac[0], iy + frac[1]
            mask = _paste(local, ix - ext, iy - ext, size)
            # no overlap, and a pixel of gap, so every object is whole and separate
            near = np.zeros_like(mask)
            near[1:] |= mask[:-1]
            near[:-1] |= mask[1:]
            near[:, 1:] |= mask[:, :-1]
            near[:, :-1] |= mask[:, 1:]
            if mask.any() and not (instances[mask | near] > 0).any():
                break
        else:
            continue
        if kind == "pair":
            name = pair_pool[rng.integers(len(pair_pool))]
            first, second = name.split(" ")
            if rng.random() < 0.5:
                first, second = second, first
            part = _split(mask, cx, cy, r, rng)
            image[part] = _hue_fill(rng, first, size)[part]
            rest = mask & ~part
            image[rest] = _hue_fill(rng, second, size)[rest]
            class_id = names.index(name)
        else:
            image[mask] = _hue_fill(rng, hues[rng.integers(len(hues))], size)[mask]
            class_id = 0
        label[mask] = class_id
        classes.append(class_id)
        instances[mask] = len(classes)
    return Scene(np.clip(np.round(image), 0, 255).astype(np.uint8), label, instances, classes)


def scene(split: str, index: int, size: int = IMAGE_SIZE) -> Scene:
    """Scene `index` of `split`: "train" and "sam-train" use seen pairs only; "val" and "sam-eval"
    half seen, half unseen (the SAM pretraining splits are disjoint from the benchmark's scenes)."""
    if split not in _SPLIT_SEED:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(_SPLIT_SEED)}")
    vocab = vocabulary()
    rng = np.random.default_rng([_BASE_SEED, _SPLIT_SEED[split], index])
    seen = list(vocab.seen[1:])
    pool = seen if split in ("train", "sam-train") else seen + list(vocab.unseen) * (len(seen) // len(vocab.unseen))
    return render_scene(rng, pool, vocab.all, size)


def _write_one(job: tuple[str, int, Path, Path, int, bool]) -> str:
    split, index, image_dir, label_dir, size, force = job
    image_path, label_path = image_dir / f"{index:06d}.png", label_dir / f"{index:06d}.png"
    if not force and image_path.exists() and label_path.exists():
        return "skipped"
    s = scene(split, index, size)
    save_array(s.image, image_path, "PNG")
    save_array(s.label, label_path, "PNG")
    return "written"


def prepare_synthetic_grouping(root: Path, workers: int = 1, force: bool = False, num_train: int = NUM_TRAIN,
                               num_val: int = NUM_VAL, size: int = IMAGE_SIZE) -> dict:
    """Write the benchmark under root/synthetic-grouping (module docstring); returns a summary."""
    return write_generated(Path(root) / FOLDER, vocabulary(), _write_one, workers, force, num_train, num_val, size)
