"""The powered study's controls in the training code (tools/study_powered.py): one CLIP warm-up per
seed shared by every variant (`clip_warmup_init`), and a data stream that depends on the seed alone."""
import json
from pathlib import Path

import pytest
import torch

from escnet.data.synthetic import prepare_synthetic
from escnet.training.checkpoint import load_checkpoint
from escnet.training.config import ConfigError, load_config
from escnet.training.loop import _batches, build_model, make_augmentation, train

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs" / "escnet_tiny_synthetic.toml"
SMALL = ["clip.image_size=48", "clip.patch_size=12", "model.crop_size=48", "model.window=2", "min_size_train=48",
         "clip_warmup_iters=2", "clip_warmup_batch=2", "num_workers=0", "eval_dataset=", "log_every=1", "threads=1",
         "batch_size=2", "max_iters=3"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    prepare_synthetic(root, workers=1, num_train=16, num_val=4, size=96)
    return root


def _cfg(data_root, out, *extra):
    return load_config(TINY_CONFIG, [*SMALL, f"data_root={data_root}", f"output_dir={out}", *extra])


def test_a_saved_warm_up_replaces_the_warm_up_exactly(data_root, tmp_path):
    """A run that loads another run's clip_warmup.pt ends bitwise where that run ended (CLIP weights
    and RNG state are restored), without warming up itself; a variant of the model can start from it."""
    train(_cfg(data_root, tmp_path / "own"))
    warm = tmp_path / "own" / "clip_warmup.pt"
    assert warm.is_file()
    train(_cfg(data_root, tmp_path / "loaded", f"clip_warmup_init={warm}"))
    a, b = load_checkpoint(tmp_path / "own")["model"], load_checkpoint(tmp_path / "loaded")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    records = [json.loads(x) for x in (tmp_path / "loaded" / "metrics.jsonl").read_text().splitlines()]
    assert not any("warmup_step" in r for r in records) and not (tmp_path / "loaded" / "clip_warmup.pt").exists()
    # the no-SAM variant of the same seed starts from the same CLIP
    train(_cfg(data_root, tmp_path / "nosam", f"clip_warmup_init={warm}", "model.use_sam=false", "max_iters=1"))


def test_a_warm_up_of_other_settings_is_refused_naming_them(data_root, tmp_path):
    train(_cfg(data_root, tmp_path / "own", "max_iters=1"))
    warm = tmp_path / "own" / "clip_warmup.pt"
    with pytest.raises(ConfigError, match=r"other settings: clip_warmup_lr: file 0.002, now 0.001; seed: file 0, now 1"):
        train(_cfg(data_root, tmp_path / "b", f"clip_warmup_init={warm}", "seed=1", "clip_warmup_lr=1e-3"))
    with pytest.raises(ConfigError, match="file not found"):
        train(_cfg(data_root, tmp_path / "c", f"clip_warmup_init={tmp_path / 'none.pt'}"))
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match="not a clip_warmup.pt"):
        train(_cfg(data_root, tmp_path / "d", f"clip_warmup_init={tmp_path / 'junk.pt'}"))


def _first_batches(cfg, n=3):
    from escnet.data.train_dataset import resolve_dataset

    data = resolve_dataset(cfg.dataset, cfg.data_root, "train").dataset
    augment = make_augmentation(cfg, cfg.model_config.crop_size, data.ignore_label)
    it = _batches(data, augment, cfg, torch.device("cpu"), seed=cfg.seed, batch_size=cfg.batch_size)
    return [next(it) for _ in range(n)]


def test_data_order_and_augmentation_depend_on_the_seed_alone(data_root, tmp_path):
    """Every variant of one seed sees the same images with the same augmentation at every step: the
    stream is seeded from `seed` (escnet.data.train_dataset), not from the global RNG that model
    construction consumes (the variants build different models)."""
    runs = []
    for variant, global_seed in ((["model.use_sam=false"], 0), ([], 123), (["model.prompt_boxes=true"], 7)):
        cfg = _cfg(data_root, tmp_path / "x", "seed=4", *variant)
        torch.manual_seed(global_seed)
        build_model(cfg)  # consumes the global RNG differently per variant
        torch.rand(17)
        runs.append(_first_batches(cfg))
    for other in runs[1:]:
        for (img_a, lab_a), (img_b, lab_b) in zip(runs[0], other):
            assert torch.equal(img_a, img_b) and torch.equal(lab_a, lab_b)
    different = _first_batches(_cfg(data_root, tmp_path / "x", "seed=5"))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(runs[0], different))
