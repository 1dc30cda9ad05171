"""Training: config errors, parameter groups, exact resume, DDP equivalence, NaN stop, a short
learning run on the synthetic benchmark. Everything runs on CPU with tiny models."""
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from escnet.cli import main
from escnet.data.synthetic import prepare_synthetic
from escnet.data.train_dataset import resolve_dataset
from escnet.training import loop as train_mod
from escnet.training.checkpoint import list_checkpoints, load_checkpoint
from escnet.training.config import ConfigError, TrainConfig, load_config
from escnet.evaluation.metrics import ConfusionMatrix, compute_metrics
from escnet.training.loop import (Objective, TrainingError, cosine_schedule, make_optimizer, segmentation_loss,
                                 train)

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs" / "escnet_tiny_synthetic.toml"
# a smaller model than the shipped tiny config: 48 px views, 4 x 4 token grid, a 2-step CLIP warm-up
# (kept on so that resume and DDP are checked with it)
SMALL = ["clip.image_size=48", "clip.patch_size=12", "model.crop_size=48", "model.window=2", "min_size_train=48",
         "clip_warmup_iters=2", "clip_warmup_batch=2", "num_workers=0", "eval_dataset=", "log_every=1", "threads=1"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    prepare_synthetic(root, workers=1, num_train=40, num_val=12, size=96)
    return root


def _cfg(data_root, out, *extra) -> TrainConfig:
    return load_config(TINY_CONFIG, [*SMALL, f"data_root={data_root}", f"output_dir={out}", *extra])


def _model_state(out: Path) -> dict:
    return load_checkpoint(out)["model"]


# ---------------------------------------------------------------------------------------------
# config


def test_shipped_configs_load():
    from escnet.training import pretrain_sam

    for path in sorted((REPO / "configs").glob("*.toml")):
        if path.name.startswith("sam_"):  # `escnet pretrain-sam` configs
            cfg = pretrain_sam.load_config(path)
            assert cfg.output_dir and cfg.iters > 0, path
            continue
        cfg = load_config(path)
        assert cfg.output_dir and cfg.max_iters > 0, path
    coco = load_config(REPO / "configs" / "escnet_vitb16_coco.toml")
    assert (coco.lr, coco.low_lr, coco.weight_decay, coco.grad_clip) == (2e-4, 2e-6, 1e-4, 0.01)
    assert (coco.batch_size, coco.max_iters, coco.min_size_train, coco.dataset) == (4, 80000, (384,), "coco-stuff")


@pytest.mark.parametrize("override,message", [
    ("bogus=1", "unknown key 'bogus'"),
    ("lr=fast", "lr must be float"),
    ("batch_size=2.5", "batch_size must be int"),
    ("model.nope=3", "unknown key 'model.nope'"),
    ("model.num_blocks=two", "model.num_blocks must be int"),
    ("precision=fp8", "precision = 'fp8'"),
    ("flip=maybe", "flip must be true or false"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TINY_CONFIG, [override])


def test_bad_config_file_names_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('arch = "escnet"\nbatch_sise = 4\n')
    with pytest.raises(ConfigError, match=r"bad.toml: unknown key 'batch_sise'"):
        load_config(bad)
    bad.write_text('max_iters = "many"\n')
    with pytest.raises(ConfigError, match=r"bad.toml: max_iters must be int"):
        load_config(bad)
    bad.write_text('[optim]\nlr = 1\n')
    with pytest.raises(ConfigError, match=r"unknown table \[optim\]"):
        load_config(bad)


def test_cli_fails_before_work_naming_the_path(tmp_path, capsys):
    code = main(["train", "--config", str(TINY_CONFIG), f"data_root={tmp_path}", f"output_dir={tmp_path / 'o'}"])
    err = capsys.readouterr().err
    assert code == 1 and "dataset = 'synthetic'" in err and str(tmp_path / "synthetic") in err
    assert not (tmp_path / "o").exists()
    code = main(["train", "--config", str(TINY_CONFIG), "init_clip=/no/such/clip.pt"])
    assert code == 1 and "init_clip = '/no/such/clip.pt': file not found" in capsys.readouterr().err


def test_train_builds_the_model_config_once(data_root, tmp_path, monkeypatch):
    """`escnet train` (config file, overrides, CLIP warm-up, one step, save) builds the model's
    config once and passes it down: one make_config, one preset, and the saved model has it."""
    from escnet.lifecycle import load_pretrained
    from escnet.models import factory
    from escnet.models.escnet import ESCNetConfig

    calls = {"make_config": 0, "preset": 0}
    make_config, preset = factory.make_config, ESCNetConfig.preset.__func__

    def counted_make_config(*args, **kwargs):
        calls["make_config"] += 1
        return make_config(*args, **kwargs)

    def counted_preset(cls, *args, **kwargs):
        calls["preset"] += 1
        return preset(cls, *args, **kwargs)

    monkeypatch.setattr(factory, "make_config", counted_make_config)
    monkeypatch.setattr(ESCNetConfig, "preset", classmethod(counted_preset))
    out = tmp_path / "once"
    assert main(["train", "--config", str(TINY_CONFIG), *SMALL, f"data_root={data_root}", f"output_dir={out}",
                 "max_iters=1", "save_every=1", "batch_size=1"]) == 0
    assert calls == {"make_config": 1, "preset": 1}
    assert load_pretrained(out / "model").cfg.clip.image_size == 48


# ---------------------------------------------------------------------------------------------
# recipe pieces


def test_both_phases_run_the_recipe_written_out_step_by_step(data_root, tmp_path):
    """The CLIP warm-up and the main phase share one loop (train.run_steps); their logged losses
    equal, bit for bit, the recipe written out as two plain loops (the code that loop replaced):
    each phase its own sample stream, AdamW, cosine schedule, clipped gradients."""
    import itertools

    from escnet.data.train_dataset import StreamSampler, TrainDataset

    cfg = _cfg(data_root, tmp_path, "clip_warmup_iters=3", "max_iters=2", "batch_size=2", "save_every=2")
    train(cfg)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = ([r["warmup_loss"] for r in records if "warmup_loss" in r], [r["loss"] for r in records if "loss" in r])

    def batches(data, augment, seed, batch, n):
        dataset = TrainDataset(data, augment, seed=seed)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=StreamSampler(len(dataset), batch, seed))
        return itertools.islice(loader, n)

    def run(loss_of, data, augment, seed, batch, n, optimizer, schedule):
        params = [p for g in optimizer.param_groups for p in g["params"]]
        losses = []
        for images, labels in batches(data, augment, seed, batch, n):
            loss = loss_of(images, labels)
            losses.append(loss.item())
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            schedule.step()
        return losses

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    model = train_mod.build_model(cfg).train()
    data = resolve_dataset(cfg.dataset, cfg.data_root, "train").dataset
    augment = train_mod.make_augmentation(cfg, model.cfg.crop_size, data.ignore_label)
    model.clip.requires_grad_(True)
    optimizer = torch.optim.AdamW(model.clip.parameters(), lr=cfg.clip_warmup_lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_schedule(cfg.clip_warmup_iters, cfg.warmup_iters))
    warm = run(lambda x, y: train_mod.dense_clip_loss(model, x, y, data.prompt_classes, data.ignore_label),
               data, augment, cfg.seed + 1, cfg.clip_warmup_batch, cfg.clip_warmup_iters, optimizer, schedule)
    model.zero_grad(set_to_none=True)
    model.set_finetune(model.cfg.clip_finetune)
    optimizer, schedule = make_optimizer(model, cfg)
    main_phase = run(Objective(model, data.prompt_classes, data.ignore_label), data, augment, cfg.seed,
                     cfg.batch_size, cfg.max_iters, optimizer, schedule)
    assert logged == (warm, main_phase)
    assert len(warm) == 3 and len(main_phase) == 2


def test_cosine_schedule():
    f = cosine_schedule(100)
    assert f(0) == 1.0 and abs(f(50) - 0.5) < 1e-12 and f(100) == 0.0
    w = cosine_schedule(100, warmup_iters=10)
    assert w(0) == pytest.approx(0.1 * f(0)) and w(9) == pytest.approx(f(9)) and w(10) == f(10)


def test_loss_is_bce_on_one_hot_with_ignored_pixels_negative():
    logits = torch.randn(2, 3, 4, 4)
    labels = torch.randint(0, 3, (2, 4, 4))
    labels[0, 0, 0] = 255
    target = torch.zeros(2, 3, 4, 4)
    for b in range(2):
        for y in range(4):
            for x in range(4):
                if labels[b, y, x] != 255:
                    target[b, labels[b, y, x], y, x] = 1
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    assert torch.allclose(segmentation_loss(logits, labels, 255), expected)


def test_parameter_groups_hold_what_design_says_and_frozen_stay_frozen():
    """The groups, listed: low lr = CLIP q/v projection weights (both towers; not the last image
    block's q, which the value path never uses) and every pretrained SAM piece (the paper's rule:
    its layer, prompt encoder, output tokens); main lr = everything else that trains (ESC-Net's own
    layers around SAM included); weight decay only on >= 2-D weights that are not norms or
    embeddings; frozen CLIP weights are in no group and do not change after a step."""
    cfg = load_config(TINY_CONFIG, ["model.clip_finetune=attention", "lr=2e-4", "low_lr=2e-6", "warmup_iters=0"])
    torch.manual_seed(0)
    model = train_mod.build_model(cfg)
    optimizer, _ = make_optimizer(model, cfg)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert set(groups) == {"low_decay", "low_no_decay", "main_decay", "main_no_decay"}
    low = groups["low_decay"]["param_names"] + groups["low_no_decay"]["param_names"]
    clip_low = sorted(n for n in low if n.startswith("clip."))
    layers = cfg.clip.get("vision_layers", model.cfg.clip.vision_layers)
    assert clip_low == sorted([f"clip.visual.transformer.resblocks.{i}.attn.{k}_proj_weight"
                               for i in range(layers) for k in "qv" if (i, k) != (layers - 1, "q")]
                              + [f"clip.transformer.resblocks.{i}.attn.{k}_proj_weight"
                                 for i in range(model.cfg.clip.text_layers) for k in "qv"])
    sam_pretrained = re.compile(r"^sam\.\d+\.(transformer|prompt_encoder|iou_token|mask_tokens)\.")
    sam_low = sorted(n for n in low if not n.startswith("clip."))
    assert sam_low == sorted(n for n, p in model.named_parameters() if sam_pretrained.match(n) and p.requires_grad)
    # 2 blocks x one SAM layer (3 attentions x 4 projections x 2 + MLP 4 + 4 norms x 2) + prompt encoder + tokens
    assert sum(n.startswith("sam.0.transformer.") for n in sam_low) == 3 * 4 * 2 + 4 + 4 * 2
    sam_attention = sam_pretrained
    assert all(g["lr"] == 2e-6 for k, g in groups.items() if k.startswith("low"))
    assert all(g["lr"] == 2e-4 for k, g in groups.items() if k.startswith("main"))
    main_names = groups["main_decay"]["param_names"] + groups["main_no_decay"]["param_names"]
    assert not any(n.startswith("clip.") or sam_attention.match(n) for n in main_names)
    params = dict(model.named_parameters())
    no_decay_modules = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.Embedding)
    norm_or_embedding = {f"{m_name}.{p_name}" for m_name, m in model.named_modules()
                         if isinstance(m, no_decay_modules) or type(m).__name__ == "LayerNorm2d"
                         for p_name, _ in m.named_parameters(recurse=False)}
    decayed = groups["main_decay"]["param_names"] + groups["low_decay"]["param_names"]
    assert all(params[n].dim() >= 2 and n not in norm_or_embedding for n in decayed)
    assert "sam.0.iou_token.weight" in groups["low_no_decay"]["param_names"]
    assert "sam.0.image_proj.1.weight" in groups["main_no_decay"]["param_names"]  # LayerNorm2d, new: main lr
    assert "sam.0.merge.weight" in groups["main_decay"]["param_names"]  # eq. (2)'s conv, new: main lr
    assert groups["main_no_decay"]["weight_decay"] == groups["low_no_decay"]["weight_decay"] == 0.0
    assert groups["main_decay"]["weight_decay"] == 1e-4

    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert "clip.visual.conv1.weight" in frozen and "clip.transformer.resblocks.0.attn.k_proj_weight" in frozen
    crop = model.cfg.crop_size
    loss = Objective(model, ["red star", "blue circle"], 255)(
        torch.randint(0, 256, (2, 3, crop, crop), dtype=torch.uint8), torch.randint(0, 2, (2, crop, crop)))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert all(torch.equal(params[n], v) for n, v in frozen.items())
    assert all(params[n].grad is None for n in frozen)
    moved = [n for n, v in trainable.items() if not torch.equal(params[n], v)]
    assert "clip.visual.transformer.resblocks.0.attn.q_proj_weight" in moved
    assert "clip.transformer.resblocks.0.attn.v_proj_weight" in moved and "stem.weight" in moved


# ---------------------------------------------------------------------------------------------
# exact resume, NaN stop


def test_resume_is_bitwise_exact(data_root, tmp_path):
    full = train(_cfg(data_root, tmp_path / "full", "max_iters=4", "save_every=2"))
    assert full["step"] == 4
    half = train(_cfg(data_root, tmp_path / "half", "max_iters=4", "save_every=2", "stop_after=2"))
    assert half["step"] == 2 and [s for s, _ in list_checkpoints(tmp_path / "half")] == [2]
    with pytest.raises(ConfigError, match="already holds checkpoints; pass --resume"):
        train(_cfg(data_root, tmp_path / "half", "max_iters=4"))
    with pytest.raises(TrainingError, match="config differs in lr"):
        train(_cfg(data_root, tmp_path / "half", "max_iters=4", "lr=0.5"), resume=True)
    rest = train(_cfg(data_root, tmp_path / "half", "max_iters=4", "save_every=2"), resume=True)
    assert rest["start_step"] == 2 and rest["step"] == 4
    a, b = _model_state(tmp_path / "full"), _model_state(tmp_path / "half")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    oa, ob = load_checkpoint(tmp_path / "full")["optimizer"], load_checkpoint(tmp_path / "half")["optimizer"]
    assert all(torch.equal(oa["state"][i]["exp_avg_sq"], ob["state"][i]["exp_avg_sq"]) for i in oa["state"])
    records = [json.loads(line) for line in (tmp_path / "half" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "step" in r] == [0, 1, 2, 3, 4]
    assert [r["warmup_step"] for r in records if "warmup_step" in r] == [1, 2]  # not repeated on resume
    assert (tmp_path / "full" / "model" / "model.safetensors").is_file()


def test_nan_loss_stops_with_step_and_keeps_checkpoint(data_root, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = train_mod.segmentation_loss

    def poisoned(logits, labels, ignore_label):
        calls["n"] += 1
        loss = real(logits, labels, ignore_label)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(train_mod, "segmentation_loss", poisoned)
    with pytest.raises(TrainingError, match=r"loss is nan at step 3; stopping. Last good checkpoint: .*checkpoint_00000002.pt"):
        train(_cfg(data_root, tmp_path, "max_iters=5", "save_every=2"))
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2]
    assert load_checkpoint(tmp_path)["step"] == 2


def test_nan_in_the_clip_warm_up_stops_naming_the_phase_and_step(data_root, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = train_mod.dense_clip_loss

    def poisoned(*args):
        calls["n"] += 1
        loss = real(*args)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(train_mod, "dense_clip_loss", poisoned)
    with pytest.raises(TrainingError, match=r"^CLIP warm-up loss is nan at step 2; stopping$"):
        train(_cfg(data_root, tmp_path, "max_iters=1"))
    assert list_checkpoints(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# DDP: 2 processes x batch 1 == 1 process x batch 2


def test_ddp_two_processes_match_one_process(data_root, tmp_path):
    args = [*SMALL, f"data_root={data_root}", "max_iters=3", "save_every=3", "batch_size=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "escnet",
           "train", "--config", str(TINY_CONFIG), *args, f"output_dir={tmp_path / 'ddp'}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '"world_size": 2' in proc.stdout
    single = train(load_config(TINY_CONFIG, [*args, f"output_dir={tmp_path / 'one'}"]))
    assert single["world_size"] == 1
    a, b = _model_state(tmp_path / "ddp"), _model_state(tmp_path / "one")
    initial = train_mod.build_model(load_config(TINY_CONFIG, args)).state_dict()
    moved = max((a[k] - initial[k]).abs().max().item() for k in a)
    assert moved > 1e-4  # the runs did train
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, worst


# ---------------------------------------------------------------------------------------------
# the method learns


def test_short_run_learns_the_synthetic_benchmark(data_root, tmp_path):
    """The tiny recipe (CLIP warm-up, then ESC-Net) on the small synthetic set: the segmentation
    loss falls by at least half and seen-class mIoU on the validation images is far above chance."""
    out = tmp_path / "run"
    # the shipped tiny model with 12-pixel patches (half the cost), shortened: 150 warm-up steps, 100 ESC-Net
    # steps at a higher lr
    summary = train(load_config(TINY_CONFIG, [
        f"data_root={data_root}", f"output_dir={out}", "num_workers=0", "threads=1", "min_size_train=96",
        "clip.patch_size=12", "model.window=4",
        "clip_warmup_iters=150", "clip_warmup_batch=8", "max_iters=100", "batch_size=4", "warmup_iters=0",
        "lr=5e-3", "low_lr=1e-3", "eval_every=0", "log_every=5", "save_every=100"]))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    warmup = [r["warmup_loss"] for r in records if "warmup_loss" in r]
    assert len(warmup) == 30 and warmup[-1] < 0.6 * warmup[0]
    assert losses[-1] <= 0.5 * losses[0], losses
    seen = summary["eval"]["seen_mIoU"]
    # chance: uniform random labels over the 13 prompted classes, scored the same way
    val = resolve_dataset("synthetic", data_root, "val").dataset
    rng = np.random.default_rng(0)
    cm = ConfusionMatrix(val.num_classes, val.ignore_label)
    for i in range(len(val)):
        _, gt = val[i]
        cm.update(rng.integers(0, val.num_classes, gt.shape), gt)
    per_class = compute_metrics(cm.numpy(), val.class_names)["per_class"]
    chance = np.mean([per_class[k]["IoU"] for k in range(1, 10) if per_class[k]["IoU"] is not None])
    assert seen > max(5 * chance, 20.0), (seen, chance)
    card = (Path(summary["model_dir"]) / "README.md").read_text()  # the model card: data, metrics, config
    assert "- training data: synthetic" in card and "| seen_mIoU |" in card and '"arch": "escnet"' in card


def test_resume_tolerates_a_torn_last_metrics_line(tmp_path):
    log_path = tmp_path / "metrics.jsonl"
    log_path.write_text('{"step": 0}\n{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    log = train_mod.MetricsLog(tmp_path, resume_step=2)
    log.write({"step": 3, "loss": 1.0})
    log.close()
    assert [json.loads(line)["step"] for line in log_path.read_text().splitlines()] == [0, 1, 2, 3]


def test_crafted_checkpoints_end_in_one_line(data_root, tmp_path, capsys):
    good = tmp_path / "good"
    train(_cfg(data_root, good, "max_iters=2", "save_every=1", "clip_warmup_iters=0"))
    state = torch.load(good / "checkpoint_00000002.pt", weights_only=True)
    crafted = {
        "list": [1, 2], "no_model": {k: v for k, v in state.items() if k != "model"}, "text": b"not a checkpoint",
        "step_str": {**state, "step": "2"}, "model_list": {**state, "model": [1]},
        "model_values": {**state, "model": {"clip.x": 1}}, "wrong_shapes": {**state, "model": {
            k: torch.zeros(1) for k in state["model"]}}, "optimizer_junk": {**state, "optimizer": {"state": 1}},
        "rng_junk": {**state, "rng": {"python": 1}}, "config_junk": {**state, "config": {"lr": "x"}},
    }
    for name, value in crafted.items():
        path = tmp_path / f"{name}.pt"
        if isinstance(value, bytes):
            path.write_bytes(value)
        else:
            torch.save(value, path)
        args = ["train", "--config", str(TINY_CONFIG), "--resume", str(path), *SMALL, "clip_warmup_iters=0",
                f"data_root={data_root}", f"output_dir={good}", "max_iters=3"]
        assert main(args) == 1, name
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "error" in err and "Traceback" not in err, (name, err)


@pytest.mark.parametrize("arch", ["escnet", "catseg"])
def test_bf16_training_runs_with_fp32_weights(data_root, tmp_path, arch):
    """precision=bf16 (autocast) trains end to end on the CPU: finite losses, the weights stay fp32.
    (The class FFN's memory-saving backward once failed here with a BFloat16 / float mismatch.)"""
    summary = train(_cfg(data_root, tmp_path, f"arch={arch}", "precision=bf16", "max_iters=2", "save_every=2"))
    state = _model_state(tmp_path)
    assert all(v.dtype != torch.bfloat16 for v in state.values())
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses), summary


def test_resume_reruns_a_final_evaluation_that_did_not_finish(data_root, tmp_path, monkeypatch):
    """Issue 24 item 9: killed during the final evaluation, --resume wrote the model without it."""
    import escnet.training.loop as train_mod

    out = tmp_path / "run"
    cfg = _cfg(data_root, out, "max_iters=2", "save_every=2", "eval_dataset=synthetic", "eval_every=0",
               "clip_warmup_iters=0")
    evaluate = train_mod.evaluate_model

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "evaluate_model", killed)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    assert [s for s, _ in list_checkpoints(out)] == [2] and not (out / "model").exists()
    monkeypatch.setattr(train_mod, "evaluate_model", evaluate)
    summary = train(cfg, resume=True)
    assert summary["start_step"] == 2 and "seen_mIoU" in summary["eval"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval" in r] == [2]
    assert "| seen_mIoU |" in (out / "model" / "README.md").read_text()
    # resuming a finished run evaluates nothing again
    monkeypatch.setattr(train_mod, "evaluate_model", killed)
    again = train(cfg, resume=True)
    assert again["step"] == 2
