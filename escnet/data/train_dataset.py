"""Training data: (image, label) files in a detectron2 layout, augmented, in a resumable order.

Where the files come from (`resolve_dataset`): a benchmark split of escnet.data.datasets
("coco-stuff" train), the synthetic benchmarks ("synthetic", "synthetic-grouping": train / val,
escnet.data.synthetic and escnet.data.synthetic_grouping),
or a user folder with ``images/``, ``labels/`` and ``classes.txt``. Labels: one channel, value =
class index, 255 (the dataset's ignore label) for unlabelled pixels.

Order (`StreamSampler`): an endless stream of sample positions p = 0, 1, 2, ...; position p is
item perm_e[p mod N] of epoch e = p // N, with perm_e a permutation seeded by (seed, e). Step s
of a run with global batch G consumes positions [s G, (s + 1) G); process r of W takes the
positions s G + r + W i (i < G / W), interleaved as torch's DistributedSampler does. Each sample's
augmentation draws from a generator seeded by (seed, p). So the data of step s depends on s
alone: resuming at step s needs only s, and a W-process run sees the same samples as one process
with the whole batch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from escnet.data.datasets import (GENERATED, DatasetError, SegDataset, check_label_values, datasets_root,
                                  get_dataset, load_custom_dataset, read_image, read_label)
from escnet.data.transforms import TrainAugmentation
from escnet.data.vocab import read_class_file


@dataclass
class SplitInfo:
    """A resolved dataset split: the files, the classes to prompt with, and class roles."""

    dataset: SegDataset
    groups: dict[str, list[int]] = field(default_factory=dict)  # named sets of class ids reported apart


def _synthetic(root: Path, split: str, name: str = "synthetic") -> SplitInfo:
    base = root / name
    hint = f"run `escnet prepare {name}` (DETECTRON2_DATASETS={root})"
    if split not in ("train", "val"):
        raise DatasetError(f"{name}: no split {split!r}; it has train, val")
    image_dir, label_dir = base / "images" / split, base / "annotations_detectron2" / split
    for d in (image_dir, label_dir):
        if not d.is_dir():
            raise DatasetError(f"{name}: folder {d} not found; {hint}")
    seen_names = read_class_file(base / "train_classes.txt")
    class_file = base / ("train_classes.txt" if split == "train" else "classes.txt")
    ds = load_custom_dataset(base, image_dir=image_dir, label_dir=label_dir, class_file=class_file)
    ds.name = f"{name}/{split}"
    n_seen = len(seen_names)
    # label 0 is the background; the open-vocabulary numbers are over the object classes
    groups = {"seen": list(range(1, n_seen)), "unseen": list(range(n_seen, ds.num_classes)), "background": [0]}
    return SplitInfo(ds, groups)


def resolve_dataset(name: str, root: str | os.PathLike | None = None, split: str = "train") -> SplitInfo:
    """A dataset split by name ("coco-stuff", "synthetic", any escnet.data.datasets benchmark) or a
    folder path (``images/``, ``labels/``, ``classes.txt``); errors name the missing file or folder."""
    if name in GENERATED:
        return _synthetic(datasets_root(root), split, name)
    if Path(name).is_dir():
        return SplitInfo(load_custom_dataset(name))
    if "/" in name or os.sep in name:
        raise DatasetError(f"dataset folder {name} not found")
    return SplitInfo(get_dataset(name, root, split))


class TrainDataset(torch.utils.data.Dataset):
    """Augmented training samples, indexed by stream position (module docstring).

    `__getitem__((position, index))` -> (image (3, S, S) uint8, label (S, S) int64) with S the crop.
    """

    def __init__(self, dataset: SegDataset, augment: TrainAugmentation, seed: int = 0):
        self.dataset = dataset
        self.augment = augment
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        position, index = key
        image_path, label_path = self.dataset.items[index]
        image, label = read_image(image_path), read_label(label_path)
        if image.shape[:2] != label.shape:
            raise DatasetError(f"label {label_path} is {label.shape[1]}x{label.shape[0]} (WxH) but image "
                               f"{image_path} is {image.shape[1]}x{image.shape[0]}")
        check_label_values(label, self.dataset.num_classes, self.dataset.ignore_label, label_path)
        rng = np.random.default_rng([self.seed, position])
        image, label = self.augment(image, label, rng)
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), torch.from_numpy(label)


class StreamSampler(torch.utils.data.Sampler):
    """Endless (position, index) pairs of one process, starting at step `start_step` (module docstring)."""

    def __init__(self, size: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 start_step: int = 0):
        if size < 1:
            raise DatasetError("the training set is empty")
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} is not divisible by the {world_size} processes")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size, self.start_step = rank, world_size, start_step

    def _permutation(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))

    def __iter__(self):
        per_rank = self.batch_size // self.world_size
        step, epoch, perm = self.start_step, -1, None
        while True:
            for i in range(per_rank):
                position = step * self.batch_size + self.rank + self.world_size * i
                e, offset = divmod(position, self.size)
                if e != epoch:
                    epoch, perm = e, self._permutation(e)
                yield position, int(perm[offset])
            step += 1
