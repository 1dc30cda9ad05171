"""Helpers shared by the weight-format converters: safe reading and key checking.

Nothing in a weight file is ever run. Pickles are read with ``weights_only=True``; TorchScript archives
(OpenAI's released CLIP ``.pt``) are read by ``read_torchscript_state_dict``, which never calls
``torch.jit.load``: TorchScript would run the archive's compiled code (a module's ``__setstate__``) while
loading it. Instead the archive's ``data.pkl`` is unpickled with an unpickler that rebuilds only tensors and
stand-ins for module objects, and the parameter / buffer names are read as text from the class headers.
"""
from __future__ import annotations

import collections
import os
import pickle
import re
import zipfile
from collections.abc import Iterable, Mapping

import torch

from escnet.errors import EscnetError


class WeightsError(EscnetError, ValueError):
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


def check_layout(sd: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse tensors whose strides make elements share memory (a zero stride, or rows that overlap): a
    weight file stores every element once, and such a tensor declares far more values than its file
    holds (a 1-row storage expanded to 20 M rows), which the first copy would allocate."""
    for key, t in sd.items():
        if not isinstance(t, torch.Tensor) or t.numel() <= 1 or t.layout != torch.strided:
            continue
        need = 1
        for stride, size in sorted((st, sz) for st, sz in zip(t.stride(), t.shape) if sz > 1):
            if stride < need:
                kind = "a zero stride" if stride == 0 else "overlapping strides"
                raise WeightsError(f"{source}: tensor {key} of shape {tuple(t.shape)} has {kind} {tuple(t.stride())} "
                                   f"(its elements share memory); a weight file stores each value once")
            need = stride * size


def check_shapes(expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise WeightsError naming every key whose tensor shape differs."""
    bad = [f"{k}: file {tuple(got[k].shape)} vs model {tuple(v.shape)}"
           for k, v in expected.items() if k in got and tuple(got[k].shape) != tuple(v.shape)]
    if bad:
        raise WeightsError(f"{source}: shape mismatch for {len(bad)} tensor(s):\n  " + "\n  ".join(bad[:20]))


_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}
# the class header TorchScript writes into code/*.py: class Name(Module):\n  __parameters__ = [...]\n  __buffers__ = [...]
_CLASS_HEADER = re.compile(r'^class (\w+)\(Module\):\n  __parameters__ = \[([^\]\n]*)\]\n  __buffers__ = \[([^\]\n]*)\]',
                           re.MULTILINE)


# Bounds on what a TorchScript archive may declare, checked from each member's zip header before it is read
# (a member's declared size also bounds what reading it decompresses). OpenAI's ViT-L/14 archive: code/ files
# of a few KB, data.pkl ~100 KB, tensor storages stored uncompressed.
MAX_CODE_BYTES = 16 * 2**20  # one code/*.py member
MAX_CODE_TOTAL = 64 * 2**20  # all of them
MAX_PICKLE_BYTES = 64 * 2**20  # data.pkl
MAX_RATIO = 100  # declared size / compressed size of a member above 1 MiB (deflate's worst case is ~1000)


def _checked_member(archive: zipfile.ZipFile, name: str, limit: int, source: str) -> zipfile.ZipInfo:
    """The ZipInfo of `name`, refused when its declared size exceeds `limit` or its compression ratio
    MAX_RATIO (a zip bomb), before a byte of it is decompressed."""
    info = archive.getinfo(name)
    if info.file_size > limit:
        raise WeightsError(f"{source}: archive member {name} declares {info.file_size} bytes, over the limit of "
                           f"{limit} for it (not a weight file's layout)")
    if info.file_size > 2**20 and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        raise WeightsError(f"{source}: archive member {name} inflates {info.file_size / max(info.compress_size, 1):.0f}"
                           f"-fold, over the limit of {MAX_RATIO} (a zip bomb)")
    return info


class _ScriptObject:
    """Inert stand-in for a TorchScript object in data.pkl: keeps its class name and pickled state, runs nothing."""

    qualname = ""

    def __setstate__(self, state) -> None:
        self.state = state


def _rebuild_tensor(storage: torch.Tensor, offset: int, size, stride, requires_grad=False, hooks=None, *_) -> torch.Tensor:
    return torch.as_strided(storage, tuple(size), tuple(stride), int(offset))


def _same(value, *_):
    return value


def _as_list(value=()):
    return list(value)


class _TorchScriptUnpickler(pickle.Unpickler):
    """Rebuilds tensors from the archive's storage records; every other global is refused or made inert."""

    _ALLOWED = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch.jit._pickle", "restore_type_tag"): _same,
        **{("torch.jit._pickle", f"build_{k}list"): _as_list for k in ("int", "double", "bool", "tensor", "generic")},
    }

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, source: str):
        super().__init__(file)
        self.archive, self.prefix, self.source = archive, prefix, source
        self.storages: dict[str, torch.Tensor] = {}
        self.classes: dict[str, type] = {}

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[module, name]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "__torch__" or module.startswith("__torch__."):
            qualname = f"{module}.{name}"
            if qualname not in self.classes:
                self.classes[qualname] = type(name, (_ScriptObject,), {"qualname": qualname})
            return self.classes[qualname]
        raise WeightsError(f"{self.source}: the TorchScript archive refers to {module}.{name}, which a weight file "
                           f"does not need; refusing to load it")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], torch.dtype)):
            raise WeightsError(f"{self.source}: unsupported storage record {pid!r:.80}")
        _, dtype, key, _location, numel = pid
        if key not in self.storages:
            try:
                info = self.archive.getinfo(f"{self.prefix}data/{key}")
            except KeyError:
                raise WeightsError(f"{self.source}: storage {key!r} is missing from the archive") from None
            itemsize = torch.empty((), dtype=dtype).element_size()
            # checked before reading: the record's declared size bounds what is decompressed
            if not isinstance(numel, int) or info.file_size != numel * itemsize:
                raise WeightsError(f"{self.source}: storage {key!r} has {info.file_size} bytes, "
                                   f"expected {numel} x {itemsize}")
            _checked_member(self.archive, info.filename, info.file_size, self.source)  # the ratio check
            raw = bytearray(self.archive.read(info))
            self.storages[key] = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        return self.storages[key]


def _class_headers(archive: zipfile.ZipFile, prefix: str, source: str) -> dict[str, tuple[list[str], list[str]]]:
    """qualified class name -> (parameter names, buffer names), read as text from the archive's code/ files."""
    out, total = {}, 0
    for name in archive.namelist():
        if not (name.startswith(prefix + "code/") and name.endswith(".py")):
            continue
        module = name[len(prefix + "code/"):-len(".py")].replace("/", ".")
        info = _checked_member(archive, name, MAX_CODE_BYTES, source)
        total += info.file_size
        if total > MAX_CODE_TOTAL:
            raise WeightsError(f"{source}: the archive's code/ members declare over {MAX_CODE_TOTAL} bytes in all, "
                               f"the limit (not a weight file's layout)")
        text = archive.read(info).decode("utf-8", errors="replace")
        for cls, params, buffers in _CLASS_HEADER.findall(text):
            out[f"{module}.{cls}"] = (re.findall(r'"([^"]*)"', params), re.findall(r'"([^"]*)"', buffers))
    return out


def _collect(obj: _ScriptObject, prefix: str, headers: dict, out: dict, source: str, depth: int = 0) -> None:
    """What ``torch.jit.load(...).state_dict()`` returns: parameters, then buffers, then each submodule's."""
    if depth > 100:
        raise WeightsError(f"{source}: modules nested more than 100 deep")
    state = getattr(obj, "state", None)
    if not isinstance(state, dict):
        raise WeightsError(f"{source}: {obj.qualname} is not a plain TorchScript module (it has its own __setstate__); its weights cannot be read without running its code")
    params, buffers = headers[obj.qualname]
    for name in params + buffers:
        value = state.get(name)
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
        elif value is not None:
            raise WeightsError(f"{source}: {prefix + name} is a {type(value).__name__}, expected a tensor")
    for name, value in state.items():
        # a scripted class that is not a Module (no class header) holds no parameters
        if isinstance(value, _ScriptObject) and value.qualname in headers:
            _collect(value, f"{prefix}{name}.", headers, out, source, depth + 1)


def is_torchscript(path: str | os.PathLike) -> bool:
    """A zip archive with TorchScript's constants.pkl and code/ folder (not torch.save's format)."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def read_torchscript_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The parameters and buffers of a TorchScript archive (OpenAI's released CLIP .pt), without running it.

    Returns the names and tensors ``torch.jit.load(path).state_dict()`` would, but never calls ``torch.jit.load``
    and never imports or calls anything named in the file: data.pkl is read by an unpickler that only rebuilds
    tensors from the archive's ``data/<key>`` records and turns module objects into inert stand-ins. A module
    with its own ``__setstate__`` (whose state only its code can interpret) is refused.
    """
    path = os.fspath(path)
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise WeightsError(f"{path}: not a readable TorchScript archive ({e})") from None
    with archive:
        pkls = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pkls) != 1:
            raise WeightsError(f"{path}: expected one <name>/data.pkl in the TorchScript archive, found {len(pkls)}")
        prefix = pkls[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in archive.namelist():
            info = _checked_member(archive, prefix + "byteorder", 16, path)
            byteorder = archive.read(info).decode(errors="replace").strip()
        if byteorder != "little":
            raise WeightsError(f"{path}: {byteorder[:16]!r}-endian archives are not supported")
        headers = _class_headers(archive, prefix, path)
        try:
            with archive.open(_checked_member(archive, pkls[0], MAX_PICKLE_BYTES, path)) as f:
                root = _TorchScriptUnpickler(f, archive, prefix, path).load()
        except WeightsError:
            raise
        except Exception as e:  # noqa: BLE001 - any malformed pickle: re-raised naming the file
            raise WeightsError(f"{path}: data.pkl could not be read ({type(e).__name__}: {e})") from None
    if not isinstance(root, _ScriptObject):
        raise WeightsError(f"{path}: the archive does not hold a TorchScript module")
    out: dict[str, torch.Tensor] = {}
    _collect(root, "", headers, out, path)
    check_layout(out, path)
    return out


def safetensors_header(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors a .safetensors file declares, as meta tensors of their shapes and dtypes: read from its
    header alone (nothing is loaded), so a model can be checked against a file before memory is committed."""
    from safetensors import safe_open

    path = os.fspath(path)
    try:
        with safe_open(path, framework="pt") as f:
            out = {}
            for key in f.keys():
                part = f.get_slice(key)
                dtype = getattr(torch, _SAFETENSORS_DTYPES.get(part.get_dtype(), "uint8"))
                out[key] = torch.empty(part.get_shape(), dtype=dtype, device="meta")
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise WeightsError(f"{path}: not a readable safetensors file ({e})") from None
    return out


_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                       "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a plain tensor dict from .safetensors, a pickle checkpoint or a TorchScript archive, without executing code.

    Pickles are read with ``weights_only=True`` so an untrusted file cannot run code; TorchScript archives
    with ``read_torchscript_state_dict``.
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
    if is_torchscript(path):
        return read_torchscript_state_dict(path)
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
    check_layout(obj, path)
    return obj
