"""Model cards: the README.md written beside config.json + model.safetensors.

A card says what the model is (its config), what it was trained on, how well it did (when the
training run evaluated it), where its weights come from and under which licence, and how to load
it. It begins with the Hugging Face metadata block, so a model folder uploaded with
`escnet.hub.push_to_hub` is listed as an image-segmentation model of library escnet.
"""
from __future__ import annotations

import json
from typing import Any, Optional

CARD_NAME = "README.md"

# Where the weights of a model trained with escnet come from; a trained model inherits these terms.
DEFAULT_LICENCE_NOTE = (
    "escnet's code is MIT-licensed. A trained model's weights derive from its initialisation (OpenAI "
    "CLIP: MIT; Segment Anything: Apache-2.0; CAT-Seg checkpoints: MIT) and from its training data, "
    "whose terms (e.g. COCO-Stuff's) also apply."
)
_TRAINING_LINES = (
    ("dataset", "training data"), ("max_iters", "iterations"), ("batch_size", "batch size"),
    ("lr", "learning rate"), ("low_lr", "learning rate of CLIP / SAM"), ("init_clip", "CLIP initialisation"),
    ("init_sam", "SAM initialisation"), ("init_model", "initial model"), ("seed", "seed"),
)


def _summary(config: dict) -> list[str]:
    clip = config.get("clip", {})
    lines = [f"- architecture: `{config.get('arch', '?')}`"]
    if clip:
        lines.append(f"- CLIP: width {clip.get('vision_width')}, patch {clip.get('patch_size')}, "
                     f"{clip.get('vision_layers')} layers, image size {clip.get('image_size')}")
    if "crop_size" in config:
        lines.append(f"- crop size: {config['crop_size']}")
    return lines


def render_model_card(
    config: dict,
    *,
    training: Optional[dict] = None,
    metrics: Optional[dict[str, Any]] = None,
    source: Optional[str] = None,
    licence: Optional[str] = None,
    licence_note: str = DEFAULT_LICENCE_NOTE,
    name: Optional[str] = None,
) -> str:
    """The card's text. config: the model config as saved in config.json; training: the
    training config (escnet.training.config.TrainConfig.to_dict()) when known; metrics: evaluation
    results {name: value}; source: where the weights come from; licence: an SPDX id for the
    metadata block (e.g. "mit"), None when the terms are mixed (then only the note says them)."""
    arch = config.get("arch", "model")
    title = name or f"escnet {arch}"
    meta = ["---", "library_name: escnet", "pipeline_tag: image-segmentation",
            "tags:", "- open-vocabulary-segmentation", f"- {arch}"]
    if licence:
        meta.append(f"license: {licence.lower()}")
    meta.append("---")
    out = meta + ["", f"# {title}", "",
                  f"An open-vocabulary semantic segmentation model ({'ESC-Net' if arch == 'escnet' else 'CAT-Seg'}) "
                  "in escnet's format: label every pixel of an image with any class names.", "", "## Use", "",
                  "```python", "from escnet import Segmenter", "",
                  "segmenter = Segmenter.from_pretrained(\"path/or/hub-id\")",
                  "result = segmenter.segment(\"photo.jpg\", \"cat, sofa, wall\")", "```", "", "## Model", ""]
    out += _summary(config)
    if source:
        out += ["", f"Weights: {source}"]
    out += ["", "## Training", ""]
    if training:
        out += [f"- {label}: {training[key]}" for key, label in _TRAINING_LINES if training.get(key) not in (None, "")]
    else:
        out.append("Not recorded with this model (see its source).")
    out += ["", "## Metrics", ""]
    if metrics:
        out += ["| metric | value |", "|---|---|"]
        out += [f"| {k} | {v:.2f} |" if isinstance(v, float) else f"| {k} | {v} |"
                for k, v in metrics.items() if isinstance(v, (int, float, str))]
    else:
        out.append("None recorded with this model.")
    out += ["", "## Licence", "", f"{licence.upper() + '. ' if licence else ''}{licence_note}", "",
            "## Configuration", "", "```json", json.dumps(config, indent=2), "```"]
    if training:
        out += ["", "<details><summary>Training configuration</summary>", "", "```json",
                json.dumps(training, indent=2, default=str), "```", "", "</details>"]
    return "\n".join(out) + "\n"
