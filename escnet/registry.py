"""Named models: one table saying what each name is and where its files come from.

This module is data and imports nothing that downloads; turning a name into a local path (and
fetching it) is escnet.hub's, the one module that does it:

    hub.resolve_model_path("catseg-vitl14")        # -> a folder in escnet's format (fetched and converted once)
    hub.resolve_weights_path("clip-vitb16", "clip") # -> a Hugging Face CLIPModel folder, for `escnet convert --clip`

`MODELS` is data, not code: a name maps to a `ModelEntry`. Kinds:

- "bundled": a model shipped inside the package (escnet/assets/models/<folder>), offline.
- "catseg":  a public CAT-Seg checkpoint (detectron2 .pth) on the Hugging Face Hub, converted once to
             escnet's format and kept in the escnet cache (escnet.hub).
- "escnet":  a model in escnet's format (config.json + model.safetensors) on the Hub, as `push_to_hub`
             uploads it.
- "clip" / "sam": initialisation weights (a Hugging Face CLIPModel / SamModel repository), for
             `escnet convert --clip/--sam` and the training configs' init_clip / init_sam.

Anything else of the form "org/name" (or "hf://org/name") that is not an existing path is taken as a
Hub repository id. Tests and users may add entries: `MODELS["my-model"] = ModelEntry(...)`.

Integrity: a file whose sha256 is written in its entry is refused when its bytes differ. Neither the
CAT-Seg authors nor OpenAI / Meta publish sha256 sums or commit ids for these files, so the entries
below carry none and track the branch "main"; escnet then checks each file against the sha256 the Hub
itself reports for it (its LFS object id) and records the hash it saw at the first download (trust on
first use, escnet.hub.KNOWN_HASHES): a later download whose bytes differ is refused until the user
accepts it. Pin `revision` to a commit id and fill `sha256` to make an entry reproducible.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Optional
from escnet.errors import EscnetError

KINDS = ("bundled", "catseg", "escnet", "clip", "sam")
# Kinds a Segmenter can use directly (after conversion) and kinds that initialise training.
SEGMENTER_KINDS = ("bundled", "catseg", "escnet")
INIT_KINDS = {"clip": ("clip", "catseg"), "sam": ("sam",)}
DEFAULT_MODEL = "escnet-synthetic-tiny"
ALIASES = {"default": DEFAULT_MODEL}
_HUB_ID = re.compile(r"^(?:hf://)?([A-Za-z0-9][\w.-]*/[\w.-]+)$")
_FILE_SUFFIXES = (".pt", ".pth", ".pkl", ".bin", ".safetensors", ".json", ".toml")


class ModelNotFoundError(EscnetError, FileNotFoundError):
    """A model path or name that does not resolve to a checkpoint."""


@dataclass(frozen=True)
class ModelEntry:
    """One named model. files: the files to fetch; for "clip" / "sam" the weight file is the first
    of `files` that the repository has (model.safetensors, else pytorch_model.bin), config.json
    is always fetched. sha256: {file name: hex digest} where a digest is known. preset: the
    CATSegConfig preset a CAT-Seg file is loaded into (None: inferred from its tensor shapes)."""

    name: str
    kind: str
    description: str
    licence: str
    folder: Optional[str] = None
    repo_id: Optional[str] = None
    repo_type: str = "model"
    files: tuple[str, ...] = ()
    revision: str = "main"
    sha256: dict[str, str] = field(default_factory=dict)
    preset: Optional[str] = None
    source: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"model entry {self.name!r}: unknown kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if (self.kind == "bundled") != (self.folder is not None) or (self.kind != "bundled" and not self.repo_id):
            raise ValueError(f"model entry {self.name!r}: a bundled model needs `folder`, a Hub model `repo_id`")

    @property
    def pinned(self) -> bool:
        """True when the revision is a commit id and every file has a recorded sha256."""
        return bool(re.fullmatch(r"[0-9a-f]{40}", self.revision)) and all(f in self.sha256 for f in self.files)

    @property
    def where(self) -> str:
        if self.kind == "bundled":
            return f"package: escnet/assets/models/{self.folder}"
        prefix = "spaces/" if self.repo_type == "space" else ""
        return f"hf: {prefix}{self.repo_id}@{self.revision}"


_CATSEG_SOURCE = "https://github.com/cvlab-kaist/CAT-Seg (README, model zoo)"
_CLIP_SOURCE = "https://github.com/openai/CLIP; Hugging Face transformers conversion"
_SAM_SOURCE = "https://github.com/facebookresearch/segment-anything; Hugging Face transformers conversion"

MODELS: dict[str, ModelEntry] = {e.name: e for e in (
    ModelEntry(DEFAULT_MODEL, "bundled", "tiny ESC-Net trained on escnet's synthetic scenes (demonstration only)",
               "MIT", folder=DEFAULT_MODEL, source="configs/escnet_tiny_synthetic.toml"),
    # CAT-Seg's README links its checkpoints to files of the authors' Hugging Face Space.
    ModelEntry("catseg-vitb16", "catseg", "CAT-Seg ViT-B/16 trained on COCO-Stuff (the authors' model_base.pth)",
               "MIT", repo_id="hamacojr/CAT-Seg-weights", repo_type="space", files=("model_base.pth",),
               source=_CATSEG_SOURCE),
    ModelEntry("catseg-vitl14", "catseg", "CAT-Seg ViT-L/14 trained on COCO-Stuff (the authors' model_large.pth)",
               "MIT", repo_id="hamacojr/CAT-Seg-weights", repo_type="space", files=("model_large.pth",),
               source=_CATSEG_SOURCE),
    ModelEntry("clip-vitb16", "clip", "OpenAI CLIP ViT-B/16 (ESC-Net / CAT-Seg ViT-B initialisation)", "MIT",
               repo_id="openai/clip-vit-base-patch16", files=("model.safetensors", "pytorch_model.bin"),
               source=_CLIP_SOURCE),
    ModelEntry("clip-vitl14-336", "clip", "OpenAI CLIP ViT-L/14 @336 (ESC-Net / CAT-Seg ViT-L initialisation)", "MIT",
               repo_id="openai/clip-vit-large-patch14-336", files=("model.safetensors", "pytorch_model.bin"),
               source=_CLIP_SOURCE),
    ModelEntry("sam-vitb", "sam", "SAM ViT-B (its mask-decoder pieces seed every ESC block)", "Apache-2.0",
               repo_id="facebook/sam-vit-base", files=("model.safetensors", "pytorch_model.bin"), source=_SAM_SOURCE),
    ModelEntry("sam-vitl", "sam", "SAM ViT-L (decoder pieces identical in shape to ViT-B's)", "Apache-2.0",
               repo_id="facebook/sam-vit-large", files=("model.safetensors", "pytorch_model.bin"), source=_SAM_SOURCE),
    ModelEntry("sam-vith", "sam", "SAM ViT-H (decoder pieces identical in shape to ViT-B's)", "Apache-2.0",
               repo_id="facebook/sam-vit-huge", files=("model.safetensors", "pytorch_model.bin"), source=_SAM_SOURCE),
)}


def get_entry(name: str) -> Optional[ModelEntry]:
    """The entry of a registry name or alias, or None."""
    return MODELS.get(ALIASES.get(name, name))


def hub_id(text: str) -> Optional[str]:
    """"org/name" or "hf://org/name" -> "org/name"; None for anything else, and for a name ending
    like a weight file (a mistyped local path such as "weights/clip.pt" is not sent to the Hub)."""
    match = _HUB_ID.match(text)
    if not match or (not text.startswith("hf://") and text.lower().endswith(_FILE_SUFFIXES)):
        return None
    return match.group(1)


def bundled_path(entry: ModelEntry, name: str) -> Path:
    bundled = resources.files("escnet") / "assets" / "models" / entry.folder
    if not bundled.is_dir():
        raise ModelNotFoundError(
            f"the bundled model {name!r} is not part of this installation (looked in {bundled}); "
            "pass a checkpoint path instead"
        )
    return Path(str(bundled))
