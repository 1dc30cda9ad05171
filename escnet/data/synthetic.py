"""A synthetic open-vocabulary benchmark that a tiny ESC-Net learns on a CPU in minutes.

Scenes of 128 x 128 pixels hold 2-4 objects on a textured, low-saturation background. Each object
is a shape (circle, square, triangle, star, cross) with a surface texture (plain, striped, dotted,
checkered) in a colour; later objects occlude earlier ones and the label map records what is
visible. The class of an object is its colour, named in free text as a tone and a hue ("dark
red", "light blue"); shape and texture vary freely within a class. "background" is class 0.

Why colour names the class: a tiny CLIP trained from scratch learns what one pixel shows (hue,
lightness) in a few hundred steps, while shapes and textures need features over several pixels
or patches and took it thousands of steps in our trials (per-pixel accuracy stuck at chance for
those attributes after 600 steps), so a CPU benchmark over them would mostly measure the backbone.

Open vocabulary: 2 tones x 6 hues make 12 object classes. Three of them ("dark orange", "light
blue", "dark purple") never occur in the training split: they are *unseen* classes, new
combinations of words the model has seen ("dark red", "light orange", ...). Training images
contain only seen classes; validation images draw each object from the seen and the unseen classes
with equal probability, and the model is prompted with all 13 names.

Layout (detectron2 style, like the real benchmarks; `escnet prepare synthetic`), under
``$DETECTRON2_DATASETS/synthetic``::

    images/{train,val}/000000.png                 RGB scenes
    annotations_detectron2/{train,val}/000000.png label ids (uint8): the index into classes.txt
    classes.txt          all 13 classes: background, the 9 seen, then the 3 unseen
    train_classes.txt    the training vocabulary: background + the 9 seen (= classes.txt[:10])
    unseen_classes.txt   the 3 unseen classes

Every scene is a pure function of (split, index): re-runs and any number of workers give
identical files.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from escnet.data.prepare import (MARKER, atomic_write, mark_prepared, remove_stale_tmp, run_jobs, save_array,
                                 start_output, summarize)

HUES: dict[str, tuple[int, int, int]] = {
    "red": (210, 40, 40),
    "orange": (235, 130, 30),
    "yellow": (225, 200, 35),
    "green": (50, 160, 60),
    "blue": (45, 90, 210),
    "purple": (140, 60, 180),
}
TONES = ("dark", "light")
UNSEEN = ("dark orange", "light blue", "dark purple")
TEXTURES = ("plain", "striped", "dotted", "checkered")
SHAPES = ("circle", "square", "triangle", "star", "cross")
BACKGROUND = "background"
IMAGE_SIZE = 128
NUM_TRAIN = 2000
NUM_VAL = 300
FOLDER = "synthetic"
SPLITS = ("train", "val")
_SPLIT_SEED = {"train": 0, "val": 1, "example": 2}
_BASE_SEED = 20250611
_BACKGROUNDS = ("clouds", "gradient", "noise", "striped", "checkered")


@dataclass(frozen=True)
class Vocabulary:
    """Class names by role; `all` is the label order (label id = index into it)."""

    seen: tuple[str, ...]  # background first, then the seen object classes
    unseen: tuple[str, ...]

    @property
    def all(self) -> tuple[str, ...]:
        return self.seen + self.unseen


def vocabulary() -> Vocabulary:
    """The fixed vocabulary: 10 seen names (background + 9 objects) and the 3 unseen names."""
    names = [f"{tone} {hue}" for hue in HUES for tone in TONES]
    return Vocabulary((BACKGROUND, *(n for n in names if n not in UNSEEN)), UNSEEN)


def colour_of(name: str) -> np.ndarray:
    """RGB (3,) float32 of a class name: the hue darkened to 45% or mixed 45% with white."""
    tone, hue = name.split(" ")
    base = np.array(HUES[hue], np.float32)
    return base * 0.45 if tone == "dark" else base + (255.0 - base) * 0.45


# ---------------------------------------------------------------------------------------------
# drawing


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x), each (size, size)."""
    c = np.arange(size, dtype=np.float32) + 0.5
    return np.meshgrid(c, c, indexing="ij")


def polygon_mask(vertices: np.ndarray, size: int) -> np.ndarray:
    """Even-odd fill of a polygon given as (K, 2) (x, y) vertices -> (size, size) bool."""
    ys, xs = _grid(size)
    x0, y0 = vertices[:, 0], vertices[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    py, px = ys[..., None], xs[..., None]
    spans = (y0 > py) != (y1 > py)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = x0 + (py - y0) * (x1 - x0) / (y1 - y0)
    return (np.count_nonzero(spans & (px < x_cross), axis=-1) % 2) == 1


def _star(r: float) -> np.ndarray:
    angles = np.arange(10) * math.pi / 5 - math.pi / 2
    radii = np.where(np.arange(10) % 2 == 0, 1.25 * r, 0.5 * r)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], -1)


def _cross(r: float) -> np.ndarray:
    a, b = 0.38 * r, 1.15 * r  # arm half-width, arm length
    return np.array([[-a, -b], [a, -b], [a, -a], [b, -a], [b, a], [a, a], [a, b], [-a, b], [-a, a], [-b, a],
                     [-b, -a], [-a, -a]])


def _regular(n: int, r: float) -> np.ndarray:
    angles = np.arange(n) * 2 * math.pi / n - math.pi / 2
    return np.stack([r * np.cos(angles), r * np.sin(angles)], -1)


def shape_mask(shape: str, cx: float, cy: float, r: float, angle: float, size: int) -> np.ndarray:
    """(size, size) bool mask of `shape` centred at (cx, cy) with radius ~r, rotated by `angle`."""
    if shape == "circle":
        ys, xs = _grid(size)
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
    outline = {"square": lambda: _regular(4, 1.3 * r), "triangle": lambda: _regular(3, 1.45 * r),
               "star": lambda: _star(r), "cross": lambda: _cross(r)}
    if shape not in outline:
        raise ValueError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
    pts = outline[shape]()
    c, s = math.cos(angle), math.sin(angle)
    pts = pts @ np.array([[c, s], [-s, c]], dtype=np.float64) + np.array([cx, cy])
    return polygon_mask(pts, size)


def _pattern(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """A brightness modulation pattern (size, size) float32 around 0, roughly in [-1, 1]."""
    ys, xs = _grid(size)
    theta = rng.uniform(0, math.pi)
    along = xs * math.cos(theta) + ys * math.sin(theta)
    if kind == "striped":
        period = rng.uniform(6, 10)
        return np.where((along // (period / 2)) % 2 == 0, 1.0, -1.0).astype(np.float32)
    if kind == "checkered":
        cell = rng.uniform(4, 6)
        c, s = math.cos(theta), math.sin(theta)
        u, v = (xs * c + ys * s) // cell, (ys * c - xs * s) // cell
        return np.where((u + v) % 2 == 0, 1.0, -1.0).astype(np.float32)
    if kind == "dotted":
        period = rng.uniform(6, 9)
        dy, dx = (ys % period) - period / 2, (xs % period) - period / 2
        return np.where(dy * dy + dx * dx < (period * 0.28) ** 2, 1.0, -0.25).astype(np.float32)
    if kind == "gradient":
        return ((along - along.mean()) / (along.std() + 1e-6) * 0.6).astype(np.float32)
    if kind == "noise":
        return rng.normal(0, 0.5, (size, size)).astype(np.float32)
    if kind == "clouds":
        low = rng.normal(0, 1, (6, 6)).astype(np.float32)
        return np.asarray(Image.fromarray(low, mode="F").resize((size, size), Image.BICUBIC)) * 0.7
    if kind == "plain":
        return np.zeros((size, size), np.float32)
    raise ValueError(f"unknown pattern {kind!r}")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Textured, low-saturation background (size, size, 3) float32 in 0..255."""
    # grey with a faint tint: never as saturated as the palest object colour ("light green")
    grey = rng.uniform(70, 170)
    tint = rng.uniform(-6, 6, 3)
    amplitude = rng.uniform(8, 22)
    pattern = _pattern(_BACKGROUNDS[rng.integers(len(_BACKGROUNDS))], rng, size)
    return grey + tint + amplitude * pattern[..., None]


def _fill(rng: np.random.Generator, name: str, size: int) -> np.ndarray:
    """An object's fill (size, size, 3) float32: its class colour, brightness-modulated by a random
    texture (weakly enough that dark stays dark and light stays light)."""
    # a few percent per channel: enough variety, too little to move a hue towards its neighbour
    base = colour_of(name) * (1.0 + rng.normal(0, 0.03, 3)).astype(np.float32)
    texture = TEXTURES[rng.integers(len(TEXTURES))]
    kind = "gradient" if texture == "plain" else texture
    return base * (1.0 + rng.uniform(0.08, 0.15) * _pattern(kind, rng, size)[..., None])


def render_scene(rng: np.random.Generator, class_pool: list[str], names: tuple[str, ...], size: int = IMAGE_SIZE,
                 num_objects: tuple[int, int] = (2, 4)) -> tuple[np.ndarray, np.ndarray]:
    """One scene: image (size, size, 3) uint8 and label (size, size) uint8 (index into `names`,
    0 = background) with between num_objects[0] and num_objects[1] objects drawn from `class_pool`."""
    image = _background(rng, size)
    label = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(num_objects[0], num_objects[1] + 1))):
        name = class_pool[rng.integers(len(class_pool))]
        shape = SHAPES[rng.integers(len(SHAPES))]
        r = rng.uniform(0.12, 0.21) * size
        cx, cy = rng.uniform(0.6 * r, size - 0.6 * r, 2)
        mask = shape_mask(shape, cx, cy, r, rng.uniform(0, 2 * math.pi), size)
        image[mask] = _fill(rng, name, size)[mask]
        label[mask] = names.index(name)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), label


def scene(split: str, index: int, size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Scene `index` of `split` ("train": seen classes only; "val" / "example": half seen, half unseen)."""
    vocab = vocabulary()
    rng = np.random.default_rng([_BASE_SEED, _SPLIT_SEED[split], index])
    seen_objects = list(vocab.seen[1:])
    if split == "train":
        pool = seen_objects
    else:
        # the two groups equally often: each unseen name is repeated until the groups have the same size
        pool = seen_objects + list(vocab.unseen) * (len(seen_objects) // len(vocab.unseen))
    return render_scene(rng, pool, vocab.all, size)


# ---------------------------------------------------------------------------------------------
# dataset files (`escnet prepare synthetic`)


def _write_one(job: tuple[str, int, Path, Path, int, bool]) -> str:
    split, index, image_dir, label_dir, size, force = job
    image_path, label_path = image_dir / f"{index:06d}.png", label_dir / f"{index:06d}.png"
    if not force and image_path.exists() and label_path.exists():
        return "skipped"
    image, label = scene(split, index, size)
    save_array(image, image_path, "PNG")
    save_array(label, label_path, "PNG")
    return "written"


def prepare_synthetic(root: Path, workers: int = 1, force: bool = False, num_train: int = NUM_TRAIN,
                      num_val: int = NUM_VAL, size: int = IMAGE_SIZE) -> dict:
    """Write the benchmark under root/synthetic (module docstring); returns a summary."""
    return write_generated(Path(root) / FOLDER, vocabulary(), _write_one, workers, force, num_train, num_val, size)


def write_generated(folder: Path, vocab, write_one, workers: int, force: bool, num_train: int, num_val: int,
                    size: int) -> dict:
    """Write a generated benchmark (this one, or escnet.data.synthetic_grouping) into `folder`: class
    files, then `write_one((split, index, image_dir, label_dir, size, force))` for every scene, under
    prepare's in-progress / complete markers; returns a summary."""
    info = {"num_train": num_train, "num_val": num_val, "size": size}
    if not start_output(folder, force):
        previous = json.loads((folder / MARKER).read_text())
        if all(previous.get(k) == v for k, v in info.items()):
            return {"folder": str(folder), "status": "already prepared"}
        start_output(folder, force=True)  # other sizes were asked for: prepare again
    for name, entries in (("classes.txt", vocab.all), ("train_classes.txt", vocab.seen),
                          ("unseen_classes.txt", vocab.unseen)):
        text = "\n".join(entries) + "\n"
        atomic_write(folder / name, lambda tmp, text=text: tmp.write_text(text))
    counts: dict[str, dict] = {}
    for split, n in (("train", num_train), ("val", num_val)):
        image_dir, label_dir = folder / "images" / split, folder / "annotations_detectron2" / split
        for d in (image_dir, label_dir):  # the folder's own in-progress marker covers them
            d.mkdir(parents=True, exist_ok=True)
            remove_stale_tmp(d)
        jobs = [(split, i, image_dir, label_dir, size, force) for i in range(n)]
        counts[split] = summarize(run_jobs(write_one, jobs, workers, f"{folder.name} {split}"))
    mark_prepared(folder, {**info, "classes": len(vocab.all), "seen": len(vocab.seen), "unseen": len(vocab.unseen)})
    return {"folder": str(folder), **{f"{k}_images": v for k, v in counts.items()}}


def write_example(image_path: str | Path, classes_path: str | Path, index: int = 4, size: int = IMAGE_SIZE) -> list[str]:
    """Write an example scene (seen and unseen objects) and the 13-class list to prompt it with."""
    image, _ = scene("example", index, size)
    names = list(vocabulary().all)
    atomic_write(image_path, lambda tmp: Image.fromarray(image).save(tmp, format=Image.registered_extensions().get(
        Path(image_path).suffix.lower(), "PNG")))
    atomic_write(classes_path, lambda tmp: tmp.write_text("\n".join(names) + "\n"))
    return names

