"""Helpers shared by the weight-format converters: safe reading and key checking."""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import torch


class WeightsError(ValueError):
    """A weight file could not be read or does not fit the model it is loaded into."""


def _fmt(keys: Iterable[str], limit: int = 20) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def check_keys(expected: Iterable[str], got: Iterable[str], source: str, *, allow_missing: Iterable[str] = ()) -> None:
    """Raise WeightsError naming the missing and unexpected keys when `got` != `expected`.

    `source` names the file or format in the message. Keys in `allow_missing` may be absent.
    """
    expected, got, allow = set(expected), set(got), set(allow_missing)
    missing = expected - got - allow
    unexpected = got - expected
    if missing or unexpected:
        parts = [f"{source}: weights do not match the model."]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_fmt(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_fmt(unexpected)}")
        raise WeightsError("\n".join(parts))


def check_shapes(expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise WeightsError naming every key whose tensor shape differs."""
    bad = [f"{k}: file {tuple(got[k].shape)} vs model {tuple(v.shape)}"
           for k, v in expected.items() if k in got and tuple(got[k].shape) != tuple(v.shape)]
    if bad:
        raise WeightsError(f"{source}: shape mismatch for {len(bad)} tensor(s):\n  " + "\n  ".join(bad[:20]))


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a plain tensor dict from .safetensors or a pickle checkpoint, without executing code.

    Pickles are read with ``weights_only=True`` so an untrusted file cannot run code.
    A checkpoint of the form {"model": sd} or {"state_dict": sd} is unwrapped.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsError(f"weight file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as e:  # noqa: BLE001 - re-raised with the file name
            raise WeightsError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        try:  # memory-map zip-format checkpoints: a 2.5 GB SAM file is not read whole for its decoder
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise WeightsError(f"{path}: could not be read as a weights-only PyTorch checkpoint ({type(e).__name__}: {e})") from None
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    return obj
