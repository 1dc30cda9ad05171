"""Evaluation datasets: the seven open-vocabulary benchmarks and user folders.

Benchmarks live under ``$DETECTRON2_DATASETS`` (default ``./datasets``) in the detectron2-style
layouts that ``escnet prepare`` writes (and that CAT-Seg's own prepare scripts write):

==========  ==============================================  ==========================================  ======  =======
name        images                                          labels                                      ignore  dtype
==========  ==============================================  ==========================================  ======  =======
coco-stuff  coco-stuff/images/{val2017,train2017}            coco-stuff/annotations_detectron2/<split>   255     uint8
ade150      ADEChallengeData2016/images/validation          .../annotations_detectron2/validation       255     uint8
ade847      ADE20K_2021_17_01/images_detectron2/validation  .../annotations_detectron2/validation .tif  65535   uint16
pc59        VOCdevkit/VOC2010/JPEGImages                    .../annotations_detectron2/pc59_val         255     uint8
pc459       VOCdevkit/VOC2010/JPEGImages                    .../annotations_detectron2/pc459_val .tif   459     uint16
voc20       VOCdevkit/VOC2012/JPEGImages                    .../annotations_detectron2/val              255     uint8
voc20b      VOCdevkit/VOC2012/JPEGImages                    .../annotations_detectron2_bg/val           255     uint8
==========  ==============================================  ==========================================  ======  =======

As in detectron2's ``load_sem_seg``, the label files define the set (the image folders of the
PASCAL benchmarks hold train and val images alike); each label needs an image of the same stem.

The names are escnet.data.vocab's `BENCHMARKS` (where the aliases live: coco171 and coco are
coco-stuff), and so are the class lists: escnet.data.vocab.benchmark_vocabulary, the lists CAT-Seg
prompts with (its ``datasets/*.json``); ADE-847's is the 847-class list of MaskFormer/CAT-Seg
(``ADE20K_SEM_SEG_FULL_CATEGORIES``). VOC-20b is
special: the model is prompted with ``voc20b.txt`` (the 20 VOC classes followed by 39 PASCAL-Context
classes standing for the background) and scored on 21 classes, the 20 VOC classes plus
"background" (label 20); any prediction >= 20 counts as background (CAT-Seg's ``VOCbEvaluator``).

A user dataset is a folder ``images/`` + ``labels/`` (single-channel PNG/TIFF, value = class index)
+ ``classes.txt`` (one class per line, read by escnet.data.vocab.read_class_file); see
`load_custom_dataset`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from escnet.data.vocab import benchmark_vocabulary, find_benchmark, known_benchmarks, read_class_file
from escnet.errors import EscnetError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# written by `escnet prepare` into an output folder when it starts and removed when the folder is complete
PREPARING = ".escnet-preparing.json"
LABEL_EXTENSIONS = (".png", ".tif", ".tiff")


class DatasetError(EscnetError, ValueError):
    """A dataset that cannot be used as it is; the message names the file or folder."""


def check_complete(*folders: Path) -> None:
    """DatasetError if `escnet prepare` started writing one of `folders` and did not finish (it was
    interrupted): training or evaluating on part of a dataset would give numbers that look right."""
    for folder in folders:
        if (Path(folder) / PREPARING).is_file():
            raise DatasetError(f"{folder} is incompletely prepared (an interrupted `escnet prepare` left "
                               f"{PREPARING} there); run the same `escnet prepare` command again to finish it")


def datasets_root(root: str | os.PathLike | None = None) -> Path:
    """The benchmark root: ``root`` if given, else ``$DETECTRON2_DATASETS``, else ``./datasets``."""
    return Path(root if root is not None else os.environ.get("DETECTRON2_DATASETS", "datasets"))


@dataclass(frozen=True)
class BenchmarkSpec:
    """Where a prepared benchmark lives and how its labels read (its name and classes:
    escnet.data.vocab.BENCHMARKS).

    ``splits`` maps a split name to (image dir, label dir), both relative to ``root``.
    ``background_index``: for VOC-20b, the label of "background"; predictions >= it count as it.
    """

    root: str
    splits: dict[str, tuple[str, str]]
    label_ext: str
    ignore_label: int
    label_dtype: str
    prepare: str
    image_ext: str = ".jpg"
    background_index: int | None = None


# keyed by the names of escnet.data.vocab.BENCHMARKS (a test checks that every one has a layout)
LAYOUTS: dict[str, BenchmarkSpec] = {
    "coco-stuff": BenchmarkSpec(
        "coco-stuff",
        {"val": ("images/val2017", "annotations_detectron2/val2017"),
         "train": ("images/train2017", "annotations_detectron2/train2017")},
        ".png", 255, "uint8", "coco-stuff"),
    "ade150": BenchmarkSpec(
        "ADEChallengeData2016", {"val": ("images/validation", "annotations_detectron2/validation")},
        ".png", 255, "uint8", "ade150"),
    "ade847": BenchmarkSpec(
        "ADE20K_2021_17_01", {"val": ("images_detectron2/validation", "annotations_detectron2/validation")},
        ".tif", 65535, "uint16", "ade847"),
    "pc59": BenchmarkSpec(
        "VOCdevkit/VOC2010", {"val": ("JPEGImages", "annotations_detectron2/pc59_val")},
        ".png", 255, "uint8", "pc59"),
    # PC-459 labels every pixel; 459 is detectron2's ignore value there and never occurs.
    "pc459": BenchmarkSpec(
        "VOCdevkit/VOC2010", {"val": ("JPEGImages", "annotations_detectron2/pc459_val")},
        ".tif", 459, "uint16", "pc459"),
    "voc20": BenchmarkSpec(
        "VOCdevkit/VOC2012", {"val": ("JPEGImages", "annotations_detectron2/val")},
        ".png", 255, "uint8", "voc"),
    "voc20b": BenchmarkSpec(
        "VOCdevkit/VOC2012", {"val": ("JPEGImages", "annotations_detectron2_bg/val")},
        ".png", 255, "uint8", "voc", background_index=20),
}
# generated benchmarks with seen / unseen classes (escnet.data.synthetic, escnet.data.synthetic_grouping;
# loaded by escnet.data.train_dataset.resolve_dataset): name = folder under the datasets root = `escnet prepare` name
GENERATED = ("synthetic", "synthetic-grouping")


@dataclass
class SegDataset:
    """A list of (image, label) files with everything evaluation needs.

    Attributes:
        name: benchmark name or the user folder.
        items: (image path, label path) pairs, sorted by label path.
        class_names: the T evaluated classes (index = label value).
        prompt_classes: the class list given to the model; equals ``class_names`` except for VOC-20b.
        ignore_label: label value of unlabelled pixels.
        background_index: VOC-20b's background label (predictions >= it are mapped to it), else None.
    """

    name: str
    items: list[tuple[Path, Path]]
    class_names: list[str]
    prompt_classes: list[str]
    ignore_label: int
    background_index: int | None = None
    label_dtype: str | None = None
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image (H, W, 3) uint8 RGB and label (H, W) int64, checked against each other."""
        image_path, label_path = self.items[index]
        image = read_image(image_path)
        label = read_label(label_path)
        if image.shape[:2] != label.shape:
            raise DatasetError(
                f"label {label_path} is {label.shape[1]}x{label.shape[0]} (WxH) but image {image_path} "
                f"is {image.shape[1]}x{image.shape[0]}"
            )
        check_label_values(label, self.num_classes, self.ignore_label, label_path)
        return image, label


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB; a clear error naming the file if it cannot be decoded."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except FileNotFoundError:
        raise DatasetError(f"image {path} not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"cannot read image {path}: {exc}") from None


def read_label(path: Path) -> np.ndarray:
    """(H, W) int64 label values; PNG (8/16 bit, grey or palette indices) or 16-bit TIFF."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I;16", "I;16B", "I;16L", "I", "1"):
                raise DatasetError(
                    f"label {path} has image mode {im.mode!r}; expected one channel of class indices "
                    "(8-bit grey or palette PNG, or 16-bit PNG/TIFF)"
                )
            arr = np.array(im)
    except FileNotFoundError:
        raise DatasetError(f"label {path} not found") from None
    except DatasetError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"cannot read label {path}: {exc}") from None
    return arr.astype(np.int64)


def check_label_values(label: np.ndarray, num_classes: int, ignore_label: int, path) -> None:
    """Raise naming ``path`` if a value is neither a class index in [0, T) nor the ignore label."""
    bad = (label != ignore_label) & ((label < 0) | (label >= num_classes))
    if bad.any():
        values = np.unique(label[bad])[:10].tolist()
        raise DatasetError(
            f"label {path} has values {values} outside the class range 0..{num_classes - 1} "
            f"(ignore label {ignore_label})"
        )


def _pair_by_stem(image_dir: Path, label_dir: Path, label_exts, image_exts, what: str) -> list[tuple[Path, Path]]:
    labels = sorted(p for p in label_dir.iterdir() if p.is_file() and p.suffix.lower() in label_exts
                    and not p.name.startswith("."))
    images: dict[str, Path] = {}
    for p in image_dir.iterdir():
        if p.is_file() and p.suffix.lower() in image_exts and not p.name.startswith("."):
            images.setdefault(p.stem, p)
    missing = [lab for lab in labels if lab.stem not in images]
    if missing:
        names = ", ".join(str(image_dir / (m.stem + ".*")) for m in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DatasetError(f"{what}: no image for {len(missing)} label file(s): missing {names}{more}")
    return [(images[lab.stem], lab) for lab in labels]


def get_dataset(name: str, root: str | os.PathLike | None = None, split: str = "val") -> SegDataset:
    """A prepared benchmark (see the module table) under ``root`` / ``$DETECTRON2_DATASETS``."""
    found = find_benchmark(name)
    if found is None:
        raise DatasetError(f"unknown dataset {name!r}; known: {known_benchmarks()}, {', '.join(GENERATED)}, "
                           "or a folder with images/, labels/, classes.txt")
    key = found.name
    spec = LAYOUTS[key]
    if split not in spec.splits:
        raise DatasetError(f"dataset {key!r} has no split {split!r}; it has {', '.join(spec.splits)}")
    base = datasets_root(root) / spec.root
    image_dir, label_dir = (base / d for d in spec.splits[split])
    hint = f"run `escnet prepare {spec.prepare}` (DETECTRON2_DATASETS={datasets_root(root)})"
    for d, what in ((label_dir, "label"), (image_dir, "image")):
        if not d.is_dir():
            raise DatasetError(f"{key}: {what} folder {d} not found; {hint}")
    check_complete(base, image_dir, label_dir)
    items = _pair_by_stem(image_dir, label_dir, (spec.label_ext,), (spec.image_ext,), key)
    if not items:
        raise DatasetError(f"{key}: no {spec.label_ext} label files in {label_dir}; {hint}")
    prompt = benchmark_vocabulary(key)
    if spec.background_index is not None:
        classes = prompt[: spec.background_index] + ["background"]
    else:
        classes = prompt
    return SegDataset(
        name=key, items=items, class_names=classes, prompt_classes=prompt, ignore_label=spec.ignore_label,
        background_index=spec.background_index, label_dtype=spec.label_dtype,
        info={"root": str(base), "split": split, "image_dir": str(image_dir), "label_dir": str(label_dir)},
    )


def _files_by_stem(folder: Path, extensions) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in extensions and not p.name.startswith("."):
            if p.stem in found:
                raise DatasetError(f"custom dataset: {found[p.stem]} and {p} share a name; which one is meant?")
            found[p.stem] = p
    return found


def load_custom_dataset(
    folder: str | os.PathLike,
    *,
    image_dir: str | os.PathLike | None = None,
    label_dir: str | os.PathLike | None = None,
    class_file: str | os.PathLike | None = None,
    ignore_label: int = 255,
) -> SegDataset:
    """A user dataset, validated up front.

    Layout (each part can be overridden): ``folder/images/`` (jpg/png/...), ``folder/labels/``
    (single-channel PNG or TIFF whose pixel values are class indices, ``ignore_label`` for
    unlabelled pixels; same file stem as the image), ``folder/classes.txt`` (one class per line,
    line i = label value i, synonyms comma-separated).

    Checked before any image is evaluated: the folders and class file exist, every image has a
    label and every label an image, every file opens, and each label has its image's size and a
    single channel. Label *values* are checked as each label is read (that needs full decoding).
    A class file that cannot be used is a VocabularyError (escnet.data.vocab.read_class_file).
    """
    folder = Path(folder)
    image_dir = Path(image_dir) if image_dir is not None else folder / "images"
    label_dir = Path(label_dir) if label_dir is not None else folder / "labels"
    class_file = Path(class_file) if class_file is not None else folder / "classes.txt"
    for d, what in ((image_dir, "image"), (label_dir, "label")):
        if not d.is_dir():
            raise DatasetError(f"custom dataset: {what} folder {d} not found")
    check_complete(folder, image_dir, label_dir)
    classes = read_class_file(class_file)
    if 0 <= ignore_label < len(classes):
        raise DatasetError(
            f"custom dataset: ignore label {ignore_label} is also class {ignore_label} "
            f"({classes[ignore_label]!r}) of {class_file}"
        )
    images = _files_by_stem(image_dir, IMAGE_EXTENSIONS)
    labels = _files_by_stem(label_dir, LABEL_EXTENSIONS)
    if not images:
        raise DatasetError(f"custom dataset: no images ({', '.join(IMAGE_EXTENSIONS)}) in {image_dir}")
    no_label = sorted(set(images) - set(labels))
    if no_label:
        raise DatasetError(
            f"custom dataset: missing label for {len(no_label)} image(s), e.g. {images[no_label[0]]} "
            f"(expected {label_dir / (no_label[0] + '.png')})"
        )
    no_image = sorted(set(labels) - set(images))
    if no_image:
        raise DatasetError(
            f"custom dataset: label {labels[no_image[0]]} has no image in {image_dir}"
            + (f" ({len(no_image)} such labels)" if len(no_image) > 1 else "")
        )
    items = []
    for stem in sorted(images):
        ip, lp = images[stem], labels[stem]
        try:
            with Image.open(ip) as im:
                isize = im.size
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise DatasetError(f"custom dataset: cannot read image {ip}: {exc}") from None
        try:
            with Image.open(lp) as lab:
                lsize, lmode = lab.size, lab.mode
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise DatasetError(f"custom dataset: cannot read label {lp}: {exc}") from None
        if lmode not in ("L", "P", "I;16", "I;16B", "I;16L", "I", "1"):
            raise DatasetError(
                f"custom dataset: label {lp} has image mode {lmode!r}; expected one channel of class indices"
            )
        if lsize != isize:
            raise DatasetError(
                f"custom dataset: label {lp} is {lsize[0]}x{lsize[1]} but image {ip} is {isize[0]}x{isize[1]}"
            )
        items.append((ip, lp))
    return SegDataset(
        name=str(folder), items=items, class_names=classes, prompt_classes=classes, ignore_label=ignore_label,
        info={"image_dir": str(image_dir), "label_dir": str(label_dir), "class_file": str(class_file)},
    )
