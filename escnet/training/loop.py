"""The ESC-Net / CAT-Seg training loop on one or many processes: `train(cfg)`.

The recipe, the processes, the outputs and the dense CLIP warm-up are described with the command
that runs them, `escnet train` (escnet/commands/train.py, or `escnet train --help`).
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from escnet.data.datasets import DatasetError, SegDataset
from escnet.data.train_dataset import SplitInfo, StreamSampler, TrainDataset, resolve_dataset
from escnet.data.transforms import ColorJitter, TrainAugmentation
from escnet.data.vocab import VocabularyError
from escnet.training.checkpoint import (CheckpointError, latest_checkpoint, list_checkpoints, load_checkpoint,
                                        remove_stale_temporaries, rng_state, save_checkpoint, set_rng_state)
from escnet.training.config import ConfigError, TrainConfig, config_from_dict
from escnet.training.losses import dense_clip_loss, segmentation_loss  # noqa: F401 - also this module's API
from escnet.training.optim import cosine_schedule, make_optimizer  # noqa: F401 - also this module's API
from escnet.weights.common import WeightsError
from escnet.errors import EscnetError
from escnet.fileio import DiskFullError, atomic_write
from escnet.runtime import Runtime, peak_memory, set_threads, setup_runtime

# Settings a resumed run may change; any other difference from the checkpoint's config is an error.
RESUMABLE_CHANGES = ("output_dir", "device", "threads", "num_workers", "log_every", "save_every", "keep_last",
                     "stop_after", "eval_every", "eval_limit", "eval_dataset", "eval_split", "eval_protocol",
                     "data_root")


class TrainingError(EscnetError, RuntimeError):
    """The run cannot go on (non-finite loss, incompatible resume); the message says why and where."""


# ---------------------------------------------------------------------------------------------
# set-up


def check_config(cfg: TrainConfig, world_size: int = 1, resume: bool = False) -> tuple[SplitInfo, SplitInfo | None]:
    """Everything that can be checked before training: files, datasets, batch split, output folder.
    Returns the (train, eval) dataset splits. Errors name the key and the path."""
    root = cfg.data_root or None
    for key in ("init_clip", "init_sam", "init_model"):
        path = getattr(cfg, key)
        if path:
            _resolve_init(cfg, key)
    if cfg.init_sam and cfg.arch != "escnet":
        raise ConfigError(f"init_sam is for ESC-Net; arch = {cfg.arch!r} has no SAM blocks")
    if cfg.init_model and (cfg.init_clip or cfg.init_sam):
        raise ConfigError("init_model replaces init_clip / init_sam; set only one of them")
    if cfg.batch_size % world_size:
        raise ConfigError(f"batch_size = {cfg.batch_size} is not divisible by the {world_size} processes")
    try:
        train = resolve_dataset(cfg.dataset, root, "train")
    except (DatasetError, VocabularyError) as exc:
        raise ConfigError(f"dataset = {cfg.dataset!r}: {exc}") from None
    evaluation = None
    if cfg.eval_dataset:
        try:
            evaluation = resolve_dataset(cfg.eval_dataset, root, cfg.eval_split)
        except (DatasetError, VocabularyError) as exc:
            raise ConfigError(f"eval_dataset = {cfg.eval_dataset!r}: {exc}") from None
    if not resume and list_checkpoints(cfg.output_dir):
        raise ConfigError(f"output_dir = {cfg.output_dir!r} already holds checkpoints; pass --resume to continue "
                          "that run or choose another output_dir")
    return train, evaluation


def _resolve_init(cfg: TrainConfig, key: str) -> str:
    """A path, registry name (clip-vitb16, sam-vitb, catseg-vitl14, ...) or Hub id -> a local path,
    fetched once into the Hugging Face cache; the config keeps the name as written."""
    from escnet.hub import resolve_model_path, resolve_weights_path

    value = getattr(cfg, key)
    try:
        if key == "init_model":
            return str(resolve_model_path(value))
        return str(resolve_weights_path(value, key[len("init_"):]))
    except FileNotFoundError as exc:
        raise ConfigError(f"{key} = {value!r}: file not found ({exc})") from None
    except (WeightsError, OSError) as exc:
        raise ConfigError(f"{key} = {value!r}: {exc}") from None


def build_model(cfg: TrainConfig) -> nn.Module:
    """The model to train: a saved model (init_model), or the preset with CLIP / SAM initialisation."""
    from escnet import lifecycle

    if cfg.init_model:
        model = lifecycle.load_pretrained(_resolve_init(cfg, "init_model"))
        if model.cfg.arch != cfg.arch:
            raise ConfigError(f"init_model {cfg.init_model} is a {model.cfg.arch} model but arch = {cfg.arch!r}")
        return model
    init_clip = _resolve_init(cfg, "init_clip") if cfg.init_clip else None
    init_sam = _resolve_init(cfg, "init_sam") if cfg.init_sam else None
    return lifecycle.build_init(cfg.model_config, init_clip, init_sam)


def make_augmentation(cfg: TrainConfig, crop: int, ignore_label: int) -> TrainAugmentation:
    color = ColorJitter(hue_delta=cfg.hue_delta) if cfg.color_aug else None
    return TrainAugmentation(crop=crop, min_sizes=cfg.min_size_train, max_size=cfg.max_size_train,
                             single_category_max_area=cfg.single_category_max_area, color=color, flip=cfg.flip,
                             ignore_label=ignore_label)


# ---------------------------------------------------------------------------------------------
# the training loop, run by both phases (the CLIP warm-up and the main phase)


def _batches(data: SegDataset, augment: TrainAugmentation, cfg: TrainConfig, device: torch.device, *, seed: int,
             batch_size: int, rank: int = 0, world_size: int = 1, start: int = 0):
    """An endless iterator of this process's (images, labels) share of each global batch of
    `batch_size`, from step `start` on (escnet.data.train_dataset: the data of a step depends on
    (seed, step) alone)."""
    dataset = TrainDataset(data, augment, seed=seed)
    sampler = StreamSampler(len(dataset), batch_size, seed, rank, world_size, start_step=start)
    return iter(torch.utils.data.DataLoader(dataset, batch_size=batch_size // world_size, sampler=sampler,
                                            num_workers=cfg.num_workers, pin_memory=device.type == "cuda"))


class Window:
    """The steps since the last report: their summed loss (a device tensor, so that a step need
    not wait for the device), the last step's loss and gradient norm, and when the window began."""

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), device=device)
        self.reset()

    def reset(self) -> None:
        self.loss_sum.zero_()
        self.steps = 0
        self.started = time.perf_counter()
        self.last: Tensor | None = None
        self.grad_norm: Tensor | None = None

    def add(self, loss: Tensor, grad_norm: Tensor) -> None:
        self.loss_sum += loss
        self.steps += 1
        self.last, self.grad_norm = loss, grad_norm

    @property
    def mean_loss(self) -> float:
        return (self.loss_sum / self.steps).item()

    @property
    def last_loss(self) -> float:
        return self.last.item()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started


def run_steps(loss_of, batches, optimizer: torch.optim.Optimizer, scheduler, steps: range, cfg: TrainConfig,
              device: torch.device, autocast, report, *, phase: str = "", mean=None, after_step=None,
              stop_note=None, clip_params=None) -> None:
    """The one training loop. For each step number in `steps`: the next (images, labels) batch
    from `batches` onto `device`, loss_of(images, labels) (a scalar) under `autocast`, a stop on a
    non-finite loss (after `mean`, the average over processes) or gradient norm, then zero_grad,
    backward, global gradient-norm clip at `cfg.grad_clip` (none if <= 0), optimizer and scheduler
    step. Every `cfg.log_every` steps and after the last, report(step, window) (then the window
    starts again); after every step, after_step(step). `phase` and stop_note() complete the stop
    message ("CLIP warm-up loss is nan at step 3; stopping", "...; stopping. Last good checkpoint: ...").
    `clip_params`: the parameters whose global gradient norm is clipped, in this order (the norm's
    float sum depends on it); default those of the optimizer's groups."""
    params = list(clip_params) if clip_params is not None else [p for group in optimizer.param_groups for p in group["params"]]
    max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
    window = Window(device)

    def stop(what: str, value: Tensor, step: int):
        note = stop_note() if stop_note is not None else ""
        return TrainingError(f"{phase + ' ' if phase else ''}{what} is {value.item()} at step {step}; stopping{note}")

    for step in steps:
        images, labels = next(batches)
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with autocast:
            loss = loss_of(images, labels)
        value = loss.detach() if mean is None else mean(loss.detach())
        if not torch.isfinite(value):
            raise stop("loss", value, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if not torch.isfinite(grad_norm):
            raise stop("gradient norm", grad_norm, step)
        optimizer.step()
        scheduler.step()
        window.add(value, grad_norm)
        if step % cfg.log_every == 0 or step == steps[-1]:
            report(step, window)
            window.reset()
        if after_step is not None:
            after_step(step)


# ---------------------------------------------------------------------------------------------
# the objective (losses: escnet.training.losses)


class Objective(nn.Module):
    """What DDP wraps: text features (with gradient, the CLIP text q/v train) + model + loss, so
    every trainable parameter is reached inside one forward.
    forward(images (B, 3, H, W) uint8, labels (B, H, W)) -> loss."""

    def __init__(self, model: nn.Module, class_names: list[str], ignore_label: int):
        super().__init__()
        self.model = model
        self.class_names = list(class_names)
        self.ignore_label = ignore_label

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        text = self.model.encode_text(self.class_names)
        logits = self.model(images.float(), text)
        return segmentation_loss(logits.float(), labels, self.ignore_label)


def warm_up_clip(model: nn.Module, data, augment: TrainAugmentation, cfg: TrainConfig, device: torch.device,
                 log: MetricsLog | None, autocast) -> None:
    """Dense CLIP warm-up (module docstring): `clip_warmup_iters` AdamW steps on all CLIP weights,
    through the training loop (`run_steps`)."""
    # its own sample stream and augmentations
    batches = _batches(data, augment, cfg, device, seed=cfg.seed + 1, batch_size=cfg.clip_warmup_batch)
    model.clip.requires_grad_(True)
    optimizer = torch.optim.AdamW(model.clip.parameters(), lr=cfg.clip_warmup_lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_schedule(cfg.clip_warmup_iters, cfg.warmup_iters))

    def loss_of(images: Tensor, labels: Tensor) -> Tensor:
        return dense_clip_loss(model, images, labels, data.prompt_classes, data.ignore_label)

    def report(step: int, window: Window) -> None:
        if log is not None:
            log.write({"warmup_step": step, "warmup_loss": window.last_loss})
            print(f"CLIP warm-up {step}/{cfg.clip_warmup_iters}  loss {window.last_loss:.4f}", flush=True)

    try:
        run_steps(loss_of, batches, optimizer, schedule, range(1, cfg.clip_warmup_iters + 1), cfg, device, autocast,
                  report, phase="CLIP warm-up")
    finally:
        del batches
    model.zero_grad(set_to_none=True)
    model.set_finetune(model.cfg.clip_finetune)


# What decides the warm-up's outcome (with the CLIP built under `seed`): a clip_warmup.pt is used only
# by a run that agrees on all of them. model.crop_size enters through the augmentation.
WARMUP_SETTINGS = ("seed", "preset", "clip", "init_clip", "dataset", "min_size_train", "max_size_train",
                   "single_category_max_area", "color_aug", "hue_delta", "flip", "clip_warmup_iters", "clip_warmup_lr",
                   "clip_warmup_batch", "weight_decay", "warmup_iters", "grad_clip", "precision")
WARMUP_FILE = "clip_warmup.pt"


def _warmup_settings(cfg: TrainConfig, model: nn.Module) -> dict:
    settings = {k: v for k, v in cfg.to_dict().items() if k in WARMUP_SETTINGS}
    return {**settings, "model.crop_size": model.cfg.crop_size}


def save_clip_warmup(model: nn.Module, cfg: TrainConfig, out: Path) -> Path:
    """out/clip_warmup.pt: model.clip's weights right after the warm-up, the RNG state then, and the
    settings that decided them (WARMUP_SETTINGS)."""
    path = out / WARMUP_FILE
    payload = {"clip": model.clip.state_dict(), "rng": rng_state(), "settings": _warmup_settings(cfg, model)}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))
    return path


def load_clip_warmup(model: nn.Module, cfg: TrainConfig) -> None:
    """In place of `warm_up_clip`: model.clip and the RNG state from cfg.clip_warmup_init, after
    checking that its settings are this run's (a difference is a ConfigError naming the key), so the
    run goes on exactly as if it had warmed up itself."""
    path = cfg.clip_warmup_init
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"clip_warmup_init = {path!r}: file not found") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file ends in one line
        raise ConfigError(f"clip_warmup_init = {path!r}: not a {WARMUP_FILE} ({type(exc).__name__})") from None
    if not isinstance(saved, dict) or not {"clip", "rng", "settings"} <= saved.keys():
        raise ConfigError(f"clip_warmup_init = {path!r}: not a {WARMUP_FILE} (needs clip, rng, settings)")
    mine = _warmup_settings(cfg, model)
    differ = [k for k in mine if saved["settings"].get(k) != mine[k]]
    if differ:
        raise ConfigError(f"clip_warmup_init = {path!r} was warmed up with other settings: "
                          + "; ".join(f"{k}: file {saved['settings'].get(k)!r}, now {mine[k]!r}" for k in differ))
    try:
        model.clip.load_state_dict(saved["clip"])
    except RuntimeError as exc:
        raise ConfigError(f"clip_warmup_init = {path!r}: its CLIP does not fit this model "
                          f"({str(exc).splitlines()[0]})") from None
    set_rng_state(saved["rng"])
    model.zero_grad(set_to_none=True)
    model.set_finetune(model.cfg.clip_finetune)


# ---------------------------------------------------------------------------------------------
# evaluation and logging


def evaluate_model(model: nn.Module, split: SplitInfo, cfg: TrainConfig, device: torch.device) -> dict:
    """mIoU of the model on the evaluation split (escnet.evaluation.evaluate, sharded over processes);
    for the synthetic benchmark also seen / unseen class mIoU and their harmonic mean; for ESC-Net the
    PPG statistics of each block, ppg_block<i>_<statistic> (escnet.inference.ppg_metrics.STAT_KEYS)."""
    from escnet.evaluation.evaluate import evaluate
    from escnet.inference.ppg_metrics import STAT_KEYS as PPG_KEYS
    from escnet.inference.segmenter import Segmenter

    # the weights change every evaluation: their text features are not worth a file
    segmenter = Segmenter(model, device=device, protocol=cfg.eval_protocol, text_cache=False)
    try:
        results = evaluate(segmenter, split.dataset, None, limit=cfg.eval_limit or None, progress=False,
                           groups=split.groups)
    finally:
        model.train()
    out = {k: results[k] for k in ("mIoU", "mIoU_v0.6", "pACC")}
    out.update(results.get("groups", {}))
    out["num_images"] = results["num_images"]
    for block in results.get("ppg", []):  # ESC-Net: PPG statistics per block (escnet/inference/ppg_metrics.py)
        out.update({f"ppg_block{block['block']}_{key}": block[key] for key in PPG_KEYS})
    return out


def _record(line: str) -> dict | None:
    """One metrics.jsonl line as a dict; None for a line torn by a kill mid-write (or otherwise unreadable)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


class MetricsLog:
    """metrics.jsonl (one JSON object per line) and, when installed, TensorBoard scalars."""

    def __init__(self, directory: Path, resume_step: int | None):
        self.path = directory / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            # a resumed run repeats the steps after its checkpoint: drop what the old run logged for them
            kept = [line for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines()
                    if (record := _record(line)) is not None and record.get("step", 0) <= resume_step]
            atomic_write(self.path, lambda tmp: tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8"))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self.file = open(self.path, "a", encoding="utf-8")
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(directory / "tensorboard"), purge_step=resume_step)
        except ImportError:
            pass

    def write(self, record: dict) -> None:
        try:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
                raise DiskFullError(self.path) from exc
            raise
        if self.tb is not None:
            step = record.get("step", record.get("warmup_step", 0))
            flat = {**{k: v for k, v in record.items() if k != "eval"},
                    **{f"eval/{k}": v for k, v in record.get("eval", {}).items()}}
            for key, value in flat.items():
                if key not in ("step", "warmup_step") and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def _logged_eval(directory: Path, step: int) -> dict | None:
    """The evaluation metrics.jsonl records for `step`, else None."""
    path = directory / "metrics.jsonl"
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines() if path.is_file() else []
    found = [r["eval"] for line in lines if (r := _record(line)) and r.get("step") == step and "eval" in r]
    return found[-1] if found else None


def _check_resume(saved: dict, cfg: TrainConfig, path: str) -> None:
    old = config_from_dict(saved, f"checkpoint {path}").to_dict()
    new = cfg.to_dict()
    changed = [k for k in new if k not in RESUMABLE_CHANGES and old.get(k) != new[k]]
    if changed:
        detail = "; ".join(f"{k}: checkpoint {old.get(k)!r}, now {new[k]!r}" for k in changed)
        raise TrainingError(f"cannot resume from {path}: the config differs in {detail}")


def _all_mean(value: Tensor, rt: Runtime) -> Tensor:
    if rt.world_size > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= rt.world_size
    return value


# ---------------------------------------------------------------------------------------------
# the loop


def train(cfg: TrainConfig, resume: str | bool = False) -> dict:
    """Train with `cfg`; `resume` = True (latest checkpoint in output_dir) or a checkpoint path.
    Returns a summary (final step, last loss, last evaluation, timings, peak memory)."""
    if cfg.threads:
        set_threads(cfg.threads)
    rt = setup_runtime(cfg.device)
    try:
        return _train(cfg, resume, rt)
    finally:
        rt.close()


def _train(cfg: TrainConfig, resume: str | bool, rt: Runtime) -> dict:
    out = Path(cfg.output_dir)
    train_split, eval_split = check_config(cfg, rt.world_size, resume=bool(resume))
    ckpt = None
    if resume:
        where = out if resume is True else Path(resume)
        if resume is True and latest_checkpoint(out) is None:
            raise CheckpointError(f"--resume: no checkpoint_*.pt in {out}")
        ckpt = load_checkpoint(where)
        _check_resume(ckpt["config"], cfg, ckpt["path"])
    if rt.main:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    model = build_model(cfg).to(rt.device).train()
    data = train_split.dataset
    augment = make_augmentation(cfg, model.cfg.crop_size, data.ignore_label)
    autocast = (torch.autocast(rt.device.type, dtype=torch.bfloat16) if cfg.precision == "bf16"
                else contextlib.nullcontext())
    log = MetricsLog(out, ckpt["step"] if ckpt is not None else None) if rt.main else None
    if log is not None and ckpt is None:
        log.write({"step": 0, "config": cfg.to_dict(), "world_size": rt.world_size,
                   "train_images": len(data), "classes": len(data.prompt_classes)})
    if ckpt is None and cfg.clip_warmup_init:
        load_clip_warmup(model, cfg)
    elif ckpt is None and cfg.clip_warmup_iters:
        warm_up_clip(model, data, augment, cfg, rt.device, log, autocast)
        if rt.main:
            save_clip_warmup(model, cfg, out)
    optimizer, scheduler = make_optimizer(model, cfg)
    start = 0
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            set_rng_state(ckpt["rng"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise CheckpointError(f"checkpoint {ckpt['path']} does not fit this run "
                                  f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        start = ckpt["step"]
        del ckpt
    end = min(cfg.max_iters, cfg.stop_after) if cfg.stop_after else cfg.max_iters

    batches = _batches(data, augment, cfg, rt.device, seed=cfg.seed, batch_size=cfg.batch_size, rank=rt.rank,
                       world_size=rt.world_size, start=start)
    objective = Objective(model, data.prompt_classes, data.ignore_label)
    if rt.world_size > 1:
        ids = [rt.device.index] if rt.device.type == "cuda" else None
        # Every trainable parameter gets a gradient in every step (tested), so no unused-parameter search.
        objective = nn.parallel.DistributedDataParallel(objective, device_ids=ids)
    # the lr shown is the main one (2e-4 in the paper's recipe); metrics.jsonl has every group's
    main_group = next((g for g in optimizer.param_groups if g["name"].startswith("main")), optimizer.param_groups[0])
    bar = tqdm(total=end, initial=start, desc="train", unit="step", dynamic_ncols=True,
               disable=not (rt.main and sys.stderr.isatty()))
    summary: dict = {"start_step": start, "world_size": rt.world_size}
    run_start = time.perf_counter()

    def report(step: int, window: Window) -> None:
        elapsed = window.seconds
        record = {"step": step, "loss": window.mean_loss, "lr": main_group["lr"],
                  "lr_groups": {g["name"]: g["lr"] for g in optimizer.param_groups},
                  "grad_norm": window.grad_norm.item(), "steps_per_s": window.steps / elapsed,
                  "images_per_s": window.steps * cfg.batch_size / elapsed,
                  "elapsed_s": time.perf_counter() - run_start, **peak_memory(rt.device)}
        summary["loss"] = record["loss"]
        if rt.main:
            log.write(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                            img_s=f"{record['images_per_s']:.1f}")
            if bar.disable:
                print(f"step {step}/{end}  loss {record['loss']:.4f}  lr {record['lr']:.3e}  "
                      f"{record['steps_per_s']:.2f} steps/s  {record['images_per_s']:.1f} img/s", flush=True)

    def after_step(step: int) -> None:
        bar.update(1)
        if rt.main and (step % cfg.save_every == 0 or step == end):
            raw = objective.module.model if rt.world_size > 1 else model
            save_checkpoint(out, step, {"model": raw.state_dict(), "optimizer": optimizer.state_dict(),
                                        "scheduler": scheduler.state_dict(), "config": cfg.to_dict()},
                            keep_last=cfg.keep_last)
        if eval_split is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or step == end):
            evaluate_at(step)

    def evaluate_at(step: int) -> None:
        metrics = evaluate_model(model, eval_split, cfg, rt.device)
        summary["eval"] = metrics
        if rt.main:
            log.write({"step": step, "eval": metrics})
            print(f"step {step}: evaluation on {cfg.eval_dataset}/{cfg.eval_split}: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items() if isinstance(v, float)), flush=True)

    # resumed at a step whose evaluation was due: one killed before it finished is run again (else its
    # model would be written without it); a finished one is taken from metrics.jsonl
    if eval_split is not None and start and ((cfg.eval_every and start % cfg.eval_every == 0) or start == end):
        logged = _logged_eval(out, start)
        if logged is None:
            evaluate_at(start)
        else:
            summary["eval"] = logged

    try:
        run_steps(objective, batches, optimizer, scheduler, range(start + 1, end + 1), cfg, rt.device, autocast,
                  report, mean=lambda loss: _all_mean(loss, rt), after_step=after_step,
                  stop_note=lambda: f". Last good checkpoint: {latest_checkpoint(out) or 'none'}")
    finally:
        bar.close()
        del batches
        if log is not None:
            log.close()
    step = max(start, end)

    summary.update(step=step, seconds=time.perf_counter() - run_start, **peak_memory(rt.device))
    if rt.main and step == cfg.max_iters:
        from escnet.lifecycle import save_pretrained

        card = {"training": cfg.to_dict(), "metrics": summary.get("eval")}
        summary["model_dir"] = str(save_pretrained(model, out / "model", card=card))
    return summary
