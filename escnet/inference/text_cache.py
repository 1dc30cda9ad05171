"""On-disk cache of text features, so that a large vocabulary is encoded once per model, not once
per process (847 names at ViT-B take tens of seconds on a CPU; reading them back takes milliseconds).

A file `cache_dir()/text_embeddings/<key>.safetensors` holds the (T, D) float32 features of one
vocabulary under one model. The key is a sha256 over everything the features depend on:

- the text tower's weights (every CLIP parameter and buffer outside the image tower, by name,
  dtype, shape and bytes), so a fine-tuned or converted model never reads another model's file;
- the prompt template, the tokenizer's context length, and the precision the features were computed
  in (device type and autocast dtype: bitwise equality holds only within one);
- the vocabulary entries, in order.

The key is also stored inside the file and checked on reading, with the tensor's dtype, shape
(T rows, the model's embedding width) and finiteness: a corrupt, truncated or mismatching file is
ignored and rewritten. Anyone can compute a key (weights, template and names are public), so every
file is also sealed: an HMAC-SHA256 of its key and feature bytes under this user's secret
(escnet.fileio.local_secret, mode 0600 in the cache folder). A file planted or copied into the cache,
or altered, fails the seal and is recomputed, never used. Files appear by an atomic rename (escnet.fileio), so concurrent processes
see a complete file or none. A cache folder that cannot be written only makes the run slower.

Off with `Segmenter(text_cache=False)`, `ESCNET_TEXT_CACHE=0`, or `--no-text-cache` on the CLI.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from escnet.inference.options import TEXT_CACHE_ENV as ENV
from escnet.fileio import atomic_write, local_secret
from escnet.hub import cache_dir

FOLDER = "text_embeddings"
FORMAT = "escnet-text-features-1"  # changes when the key's recipe changes


def enabled_by_env() -> bool:
    """False when ESCNET_TEXT_CACHE is 0 / false / no / off."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def folder() -> Path:
    return cache_dir() / FOLDER


def _text_tensors(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The CLIP tensors the text features depend on: all but the image tower and the logit scale."""
    clip = model.clip
    named = list(clip.named_parameters()) + list(clip.named_buffers())
    return sorted((n, t) for n, t in named if not n.startswith("visual.") and n != "logit_scale")


class TextCache:
    """The on-disk text-feature cache of one model (a Segmenter holds one). root: the folder
    (default: `folder()`, read at each use, so ESCNET_CACHE may change)."""

    @staticmethod
    def supports(model: torch.nn.Module) -> bool:
        """Whether the model has what the key is made of (a CLIP text tower and a prompt template)."""
        return isinstance(getattr(model, "clip", None), torch.nn.Module) and hasattr(model.cfg, "template")

    def __init__(self, model: torch.nn.Module, root: Optional[Path] = None):
        self.model = model
        self.root = root
        self._weights_digest: Optional[str] = None
        self._weights_stamp: Optional[tuple] = None

    def weights_digest(self) -> str:
        """sha256 of the text tower's weights; recomputed only when a tensor was replaced or
        changed in place (its storage pointer or version counter moved)."""
        tensors = _text_tensors(self.model)
        stamp = tuple((n, t.data_ptr(), t._version) for n, t in tensors)
        if stamp != self._weights_stamp:
            digest = hashlib.sha256()
            for name, tensor in tensors:
                data = tensor.detach().cpu().contiguous().reshape(-1)
                digest.update(f"{name}|{data.dtype}|{tuple(tensor.shape)}|".encode())
                digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
            self._weights_digest, self._weights_stamp = digest.hexdigest(), stamp
        return self._weights_digest

    def key(self, entries: list[str], precision: str) -> str:
        cfg = self.model.cfg
        recipe = {
            "format": FORMAT,
            "weights": self.weights_digest(),
            "template": cfg.template,
            "context_length": cfg.clip.context_length,
            "precision": precision,
            "entries": list(entries),
        }
        return hashlib.sha256(json.dumps(recipe, ensure_ascii=True).encode()).hexdigest()

    def _seal(self, key: str, feats: torch.Tensor) -> Optional[str]:
        """HMAC-SHA256 of the key and the features' bytes under this user's secret (None: no secret)."""
        secret = local_secret(self.root or folder())
        if secret is None:
            return None
        data = feats.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        return hmac.new(secret, key.encode() + b"|" + data, hashlib.sha256).hexdigest()

    def path(self, key: str) -> Path:
        return (self.root or folder()) / f"{key}.safetensors"

    def load(self, key: str, num_classes: int) -> Optional[torch.Tensor]:
        """The stored (T, D) features under `key`, or None when absent or not trustworthy."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                stored_key, seal = metadata.get("key"), metadata.get("seal")
                feats = handle.get_tensor("features") if "features" in handle.keys() else None
        except (SafetensorError, OSError, ValueError, RuntimeError):
            return None
        width = self.model.cfg.clip.embed_dim
        if (stored_key != key or feats is None or feats.dtype != torch.float32
                or tuple(feats.shape) != (num_classes, width) or not torch.isfinite(feats).all()):
            return None
        expected = self._seal(key, feats)
        if expected is None or not isinstance(seal, str) or not hmac.compare_digest(seal, expected):
            return None  # not written by escnet for this user, or altered since: recomputed
        return feats

    def store(self, key: str, feats: torch.Tensor) -> None:
        path = self.path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            seal = self._seal(key, feats)
            if seal is None:
                return  # no secret: a file that could not be verified later is not written
            atomic_write(path, lambda tmp: save_file({"features": feats.detach().cpu().contiguous()}, str(tmp),
                                                     metadata={"key": key, "format": FORMAT, "seal": seal}))
        except OSError:
            pass  # an unwritable cache is only a slower next run
