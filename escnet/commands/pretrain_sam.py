"""`escnet pretrain-sam`: pretrain a tiny SAM on synthetic promptable segmentation (escnet.training.pretrain_sam);
save it in the official SAM layout.

    escnet pretrain-sam --config configs/sam_tiny_synthetic.toml [key=value ...]

The model is `escnet.models.sam_model.SAM` with the decoder sizes of ESC-Net's `tiny` preset on
the synthetic configs' 96-pixel crop and 12 x 12 grid, so its ``prompt_encoder.*`` and
``mask_decoder.{transformer,iou_token,mask_tokens}.*`` load into ESC-Net's SAM blocks through
`escnet.weights.sam.load_sam_decoder_weights`, the loader of the real ``sam_vit_b.pth``
(`escnet train init_sam=.../sam_tiny.pth`).

Data: scenes of escnet.data.synthetic_grouping (splits "sam-train" and, held out, "sam-eval",
disjoint from the benchmark's train / val scenes), rendered at the crop size, random flips and
quarter turns. Every object, clutter included, is a segmentation target: SAM's task is class-agnostic.

Training, as SAM's (Kirillov et al., 2023, Sec. 3 and App. A), shrunk:
- a step takes `batch_images` scenes and up to `objects_per_image` objects of each;
- round 0 prompts every object with one combination of {point, box, mask}, drawn per step:
  a point uniform in the object, its box with corners jittered by N(0, 0.1 side) (at most 20 px),
  and a coarse mask, the object's coverage of each grid cell above a random threshold, as
  ESC-Net's pseudo masks are (plus a few flipped cells), nearest-upsampled to 4x the grid;
- `corrective_rounds` more rounds each add one point drawn uniformly from the error region of the
  previous prediction (foreground where it missed, background where it spilled) and feed the
  previous low-res mask logits back as the mask prompt;
- loss per round: 20 x focal + 1 x dice on the mask upsampled to the crop, + MSE of the predicted
  IoU; for a lone point (ambiguous) the three multimask outputs are predicted and only the one with
  the lowest loss is trained, as in SAM.

Evaluation: mIoU over the held-out objects for each of the seven prompt combinations and for a
point with two corrective points, beside trivial baselines (the whole image, the box filled, the
coarse mask prompt itself).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from escnet.commands.policy import fail


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: it loads torch, which building the parser (`escnet --help`) must not
    from escnet.training.config import ConfigError
    from escnet.training.pretrain_sam import WEIGHTS_NAME, format_eval, load_config, pretrain

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        fail(exc)
    metrics = pretrain(cfg)
    print(format_eval(metrics["eval_before"], metrics["eval"]))
    print(f"escnet pretrain-sam: {metrics['eval']['num_objects']} held-out objects; saved "
          f"{Path(cfg.output_dir) / WEIGHTS_NAME} in {metrics['seconds']:.0f} s")
    return 0


def add_command(subparsers) -> None:
    p = subparsers.add_parser("pretrain-sam", help="pretrain a tiny SAM on synthetic promptable segmentation",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="TOML file of PretrainSAMConfig fields")
    p.add_argument("overrides", nargs="*", help="key=value overrides (iters=200, output_dir=...)")
    p.set_defaults(func=run)
