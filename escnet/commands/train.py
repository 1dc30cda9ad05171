"""`escnet train`: the ESC-Net / CAT-Seg training recipe on one or many processes (escnet.training.loop).

    escnet train --config configs/escnet_vitb16_coco.toml [key=value ...]
    torchrun --nproc_per_node 8 -m escnet train --config configs/escnet_vitb16_coco.toml
    escnet train --config configs/escnet_tiny_synthetic.toml        # CPU, minutes

Recipe (docs/design.md "Training recipe", CAT-Seg's configs): AdamW with two learning rates (CLIP q/v
weights and the pretrained SAM pieces at `low_lr` (`sam_lr_rule`), the rest at `lr`; no weight decay on norms, biases and
embeddings; escnet.training.optim.param_groups), cosine decay to 0 over `max_iters` (optional
linear warm-up), global gradient-norm clip, the augmentations of escnet.data.transforms, and
CAT-Seg's loss: sigmoid binary cross-entropy between the logits (B, T, H, W) and one-hot targets,
averaged over every image, class and pixel, with ignored pixels counted as negatives for every
class (so each image weighs the same, which also makes W processes x B/W images equal one
process x B images). Optional bf16 autocast; periodic evaluation with escnet.evaluation.evaluate.

Processes: under torchrun every process trains a DistributedDataParallel replica (NCCL on GPUs,
gloo on CPU) on its share of each global batch (escnet.data.train_dataset.StreamSampler); rank 0
logs and writes checkpoints. Outputs in `output_dir`: checkpoint_<step>.pt (keep-last-N, atomic;
`--resume` continues exactly), metrics.jsonl, TensorBoard events when tensorboard is installed,
and model/ (config.json + model.safetensors, the format `escnet segment --model` reads) at the end.
A non-finite loss or gradient norm stops the run naming the step, leaving the checkpoints as they were.

Dense CLIP warm-up (`clip_warmup_iters` > 0, off in the COCO configs): ESC-Net and CAT-Seg start
from a pretrained CLIP whose dense features already correlate with class names. A tiny CLIP
trained from scratch has no such start, and end-to-end training then sits for hundreds of steps
predicting only the background (the text features collapse onto one "object" direction). The
warm-up first trains CLIP alone, as the zero-shot segmenter ESC-Net's correlation C0 is: per-pixel
softmax cross-entropy over the training classes of exp(logit_scale) * cos(F_v, F_l), upsampled to
the crop. It sees the same training images and classes (never the unseen ones), runs once at the
start of a fresh run (a resumed run loads its checkpoint instead), and every process runs it
identically on the whole warm-up batch, so no communication is needed. Both phases run the one
training loop, `run_steps` (escnet/training/loop.py), each with its own loss, optimizer, sample stream
and log records.
"""
from __future__ import annotations

import argparse
import json
import os

from escnet.commands.policy import fail


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: training loads torch, which building the parser (`escnet --help`) must not
    from escnet.data.datasets import DatasetError
    from escnet.training.checkpoint import CheckpointError
    from escnet.training.config import ConfigError, load_config
    from escnet.training.loop import TrainingError, train

    try:
        cfg = load_config(args.config, args.overrides)
        summary = train(cfg, resume=True if args.resume == "latest" else (args.resume or False))
    except (ConfigError, CheckpointError, TrainingError, DatasetError) as exc:
        fail(exc)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=1))
    return 0


def add_command(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train ESC-Net or CAT-Seg (one process, or many under torchrun)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default=None, help="TOML config (configs/*.toml); keys are escnet.training.config.TrainConfig")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                   help="continue from the newest checkpoint in output_dir, or from the given checkpoint file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. max_iters=1000 model.num_blocks=2 clip.patch_size=12")
    p.set_defaults(func=run)
