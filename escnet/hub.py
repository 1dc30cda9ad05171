"""The Hugging Face Hub path: fetch named models (escnet.registry), verify, convert once; share models.

Downloads go through `huggingface_hub` (extra `escnet[hub]`), so they use its cache
($HF_HOME / $HF_HUB_CACHE), its revision handling and its offline switch HF_HUB_OFFLINE=1; a file
already in that cache is read from it without any network access. Every fetched file is checked:

1. against the sha256 written in its registry entry, when there is one;
2. against the sha256 the Hub reports for it (large files are stored under their sha256, which is
   also their name in the cache's blobs/ folder);
3. against the sha256 recorded the first time escnet fetched that file from that repository and
   revision (trust on first use; the record is KNOWN_HASHES in the escnet cache). A file that
   changes under a branch name is refused until the user accepts it (`--trust-new`).

Only a regular file inside its repository's blobs/ folder in the Hugging Face cache is hashed (a
snapshot entry pointing at /dev/zero, a FIFO or a file elsewhere is refused), and only up to
`max_model_bytes()` (default 16 GiB; ESCNET_MAX_MODEL_BYTES raises it). A mismatch is refused with a
one-line ChecksumError. CAT-Seg files are converted to escnet's
format (config.json + model.safetensors + a model card) once, into `cache_dir()/models/<name>`,
which later calls use directly, offline included.

`push_to_hub(model_dir, repo_id)` uploads a model in escnet's format (with its model card), after
which anyone can load it with `Segmenter.from_pretrained("org/name")`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Union

from escnet.errors import EscnetError
from escnet.fileio import atomic_write
from escnet import registry
from escnet.registry import ModelEntry, ModelNotFoundError
from escnet.weights.common import WeightsError

KNOWN_HASHES = "known_hashes.json"
SOURCE_NAME = "source.json"
MODEL_FILES = ("config.json", "model.safetensors")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ModelNotCachedError(ModelNotFoundError):
    """A named model that is neither cached nor downloadable now (offline or no connection)."""


class FileNotInRepoError(ModelNotFoundError):
    """The repository exists but has no such file."""


class ChecksumError(WeightsError):
    """A downloaded file whose bytes are not the ones expected; it is not used."""


def cache_dir() -> Path:
    """escnet's own cache (converted models, known hashes): $ESCNET_CACHE, else
    $XDG_CACHE_HOME/escnet, else ~/.cache/escnet. Raw downloads stay in the Hugging Face cache."""
    if os.environ.get("ESCNET_CACHE"):
        return Path(os.environ["ESCNET_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "escnet"


def fetch_command(entry: ModelEntry) -> str:
    return f"escnet models --fetch {entry.name}"


def _hf():
    try:
        import huggingface_hub
    except ImportError:
        raise ModelNotFoundError("named Hub models need huggingface_hub: pip install 'escnet[hub]'") from None
    return huggingface_hub


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) < 200 else text[:197] + "..."


_REACHABLE: dict[str, bool] = {}  # endpoint -> whether one quick connection succeeded (once per process)
PROBE_TIMEOUT_S = 3.0


def hub_reachable() -> bool:
    """Whether the Hub endpoint (HF_ENDPOINT) accepts a TCP connection within PROBE_TIMEOUT_S, tried once per
    process; False at once with HF_HUB_OFFLINE. Without it, huggingface_hub retries an unreachable Hub five
    times (~25 s, printing each retry) before reading its cache."""
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    endpoint = constants.ENDPOINT
    if endpoint not in _REACHABLE:
        url = urlsplit(endpoint)
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            with socket.create_connection((url.hostname or "", port), timeout=PROBE_TIMEOUT_S):
                _REACHABLE[endpoint] = True
        except OSError:
            _REACHABLE[endpoint] = False
    return _REACHABLE[endpoint]


class NoSuchFolderError(EscnetError, FileNotFoundError):
    """A model name that looks like a local folder path that does not exist (it is not sent to the Hub)."""


def _looks_like_a_folder(entry: ModelEntry) -> bool:
    """An ad-hoc "org/name" that is rather a missing local folder: its first part is an existing local folder
    (models/catseg-vitl14 beside a models/ folder), or its last part is a registry name (models/catseg-vitl14)."""
    from escnet.registry import MODELS

    if entry.name in MODELS or entry.name != entry.repo_id:
        return False
    first, _, last = entry.repo_id.partition("/")
    return Path(first).is_dir() or last in MODELS


def download(entry: ModelEntry, filename: str) -> Path:
    """One file of `entry` from the Hugging Face cache, downloading it if needed (not verified). When the Hub
    cannot be reached (`hub_reachable`), only the cache is read: one line at once, not minutes of retries."""
    if _looks_like_a_folder(entry):
        first, _, last = entry.repo_id.partition("/")
        from escnet.registry import MODELS

        hint = f"; the named model is {last!r}" if last in MODELS else ""
        raise NoSuchFolderError(f"no such folder: {entry.repo_id} (a local path, so it is not looked up on the "
                                f"Hugging Face Hub{hint}; `escnet models` lists named models)")
    hf = _hf()
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(hf.hf_hub_download(entry.repo_id, filename, repo_type=entry.repo_type, revision=entry.revision,
                                       local_files_only=not hub_reachable()))
    except LocalEntryNotFoundError:
        from huggingface_hub import constants

        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hugging Face Hub cannot be reached"
        raise ModelNotCachedError(
            f"model {entry.name!r} ({filename}, {entry.where}) is not in the local cache and {why}; "
            f"fetch it once with internet access: {fetch_command(entry)}") from None
    except EntryNotFoundError:
        raise FileNotInRepoError(f"model {entry.name!r}: {entry.where} has no file {filename}") from None
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise ModelNotFoundError(f"model {entry.name!r}: {entry.where} not found on the Hub "
                                 f"({type(exc).__name__})") from None
    except HfHubHTTPError as exc:
        raise ModelNotFoundError(f"model {entry.name!r}: {filename} from {entry.where}: {_one_line(exc)}") from None


DEFAULT_MAX_MODEL_BYTES = 16 * 2**30  # SAM ViT-H, the largest file escnet fetches, is 2.5 GB


def max_model_bytes() -> int:
    """The largest fetched file escnet hashes: $ESCNET_MAX_MODEL_BYTES, else DEFAULT_MAX_MODEL_BYTES."""
    text = os.environ.get("ESCNET_MAX_MODEL_BYTES", "").strip()
    try:
        return int(text) if text else DEFAULT_MAX_MODEL_BYTES
    except ValueError:
        raise WeightsError(f"ESCNET_MAX_MODEL_BYTES must be an integer number of bytes, got {text!r:.40}") from None


def sha256_file(path: Union[str, os.PathLike], limit: Optional[int] = None) -> str:
    """sha256 of a regular file (a FIFO, device or folder is refused before it is opened), read up to
    `limit` bytes (None: no limit)."""
    import stat

    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise ChecksumError(f"{path}: not a regular file; refused")
    if limit is not None and info.st_size > limit:
        raise ChecksumError(f"{path}: {info.st_size} bytes, over the limit of {limit} bytes for a model file "
                            f"(raise it with ESCNET_MAX_MODEL_BYTES={info.st_size})")
    digest = hashlib.sha256()
    read = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            read += len(block)
            if limit is not None and read > limit:  # the file grew while it was read
                raise ChecksumError(f"{path}: over the limit of {limit} bytes for a model file "
                                    f"(raise it with ESCNET_MAX_MODEL_BYTES)")
            digest.update(block)
    return digest.hexdigest()


def cached_blob(path: Union[str, os.PathLike], where: str) -> Path:
    """The file a Hugging Face cache entry (<repo>/snapshots/<commit>/<name>) resolves to, which must be a
    regular file inside <repo>/blobs/; ChecksumError otherwise (nothing is opened before the check)."""
    import stat

    path = Path(path)
    snapshots = next((p for p in path.parents if p.name == "snapshots"), None)
    if snapshots is None:
        raise ChecksumError(f"{where}: {path} is not in a Hugging Face cache snapshot; refused")
    blobs = os.path.realpath(snapshots.parent / "blobs")
    real = os.path.realpath(path)
    if os.path.commonpath([blobs, real]) != blobs:
        raise ChecksumError(f"{where}: {path} points outside its cache's blobs folder ({real}); refused "
                            "(delete it from the Hugging Face cache and fetch again)")
    try:
        mode = os.stat(real).st_mode
    except OSError as exc:
        raise ChecksumError(f"{where}: {path} cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        raise ChecksumError(f"{where}: {path} is not a regular file in the cache's blobs folder; refused")
    return Path(real)


def _known_path() -> Path:
    return cache_dir() / KNOWN_HASHES


def known_hashes() -> dict[str, str]:
    """{"<repo_type>/<repo_id>@<revision>/<file>": sha256} recorded at first download."""
    path = _known_path()
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{path}: unreadable record of known model hashes ({exc}); delete it to start afresh") from None


def verify(entry: ModelEntry, filename: str, path: Union[str, os.PathLike], trust_new: bool = False) -> str:
    """Check a fetched file (module docstring, 1-3) and record its hash; returns its sha256."""
    where = f"model {entry.name!r}: {filename} ({entry.where})"
    digest = sha256_file(cached_blob(path, where), max_model_bytes())
    expected = entry.sha256.get(filename)
    if expected and digest != expected.lower():
        raise ChecksumError(f"{where} has sha256 {digest}, the registry expects {expected}; refused "
                            "(a corrupted or altered file: delete it from the Hugging Face cache and fetch again)")
    blob = Path(os.path.realpath(path)).name
    if _SHA256.fullmatch(blob) and blob != digest:
        raise ChecksumError(f"{where} has sha256 {digest}, the Hub lists it as {blob}; refused "
                            "(an incomplete or altered download: delete it from the Hugging Face cache and fetch again)")
    key = f"{entry.repo_type}/{entry.repo_id}@{entry.revision}/{filename}"
    known = known_hashes()
    if key in known and known[key] != digest and not trust_new:
        raise ChecksumError(f"{where} has sha256 {digest}, but {known[key]} was recorded at its first download; "
                            f"refused (if its authors replaced the file, accept it: {fetch_command(entry)} --trust-new)")
    if known.get(key) != digest:
        known[key] = digest
        cache_dir().mkdir(parents=True, exist_ok=True)
        text = json.dumps(known, indent=2, sort_keys=True) + "\n"
        atomic_write(_known_path(), lambda p: Path(p).write_text(text))
    return digest


def fetch_file(entry: ModelEntry, trust_new: bool = False) -> Path:
    """The verified local path of the entry's first file (a CAT-Seg .pth)."""
    path = download(entry, entry.files[0])
    verify(entry, entry.files[0], path, trust_new)
    return path


def fetch_folder(entry: ModelEntry, trust_new: bool = False) -> Path:
    """A Hugging Face model folder (CLIPModel / SamModel) in the HF cache: config.json and the
    first of `entry.files` the repository has, verified."""
    folder, missing = None, []
    for name in entry.files:
        try:
            path = download(entry, name)
        except ModelNotCachedError:
            missing.append(name)
            continue
        except FileNotInRepoError:
            continue
        verify(entry, name, path, trust_new)
        folder = path.parent
        break
    if folder is None:
        if missing:
            download(entry, missing[0])  # raises the one-line "not in the local cache" error
        raise ModelNotFoundError(f"model {entry.name!r}: {entry.where} has none of {', '.join(entry.files)}")
    config = download(entry, "config.json")
    verify(entry, "config.json", config, trust_new)
    return folder


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in (*MODEL_FILES, SOURCE_NAME))


def fetch_model(entry: ModelEntry, trust_new: bool = False) -> Path:
    """A folder in escnet's format for a "catseg" or "escnet" entry. CAT-Seg files are converted
    once into cache_dir()/models/<name>; escnet-format repositories are used from the HF cache."""
    if entry.kind == "escnet":
        folder = None
        for name in MODEL_FILES:
            path = download(entry, name)
            verify(entry, name, path, trust_new)
            folder = path.parent
        return folder
    if entry.kind != "catseg":
        raise ModelNotFoundError(f"model {entry.name!r} is {entry.kind} weights, not a segmentation model")
    target = cache_dir() / "models" / entry.name.replace("/", "--")
    if _complete(target):
        recorded = json.loads((target / SOURCE_NAME).read_text())
        wanted = {f: h for f, h in entry.sha256.items() if f in entry.files}
        if all(recorded.get("sha256", {}).get(f) == h for f, h in wanted.items()):
            return target
    path = fetch_file(entry, trust_new)
    digest = sha256_file(path, max_model_bytes())  # path: checked by fetch_file (verify)
    _convert_catseg(entry, path, digest, target)
    return target


def _convert_catseg(entry: ModelEntry, path: Path, digest: str, target: Path) -> None:
    """Convert into a temporary sibling of `target`, then move it into place as a whole."""
    from escnet.models.catseg import CATSeg, CATSegConfig
    from escnet.lifecycle import load_state_dict_strict, save_pretrained
    from escnet.weights.catseg import load_catseg_checkpoint

    cfg, sd = load_catseg_checkpoint(path, CATSegConfig.preset(entry.preset) if entry.preset else None)
    model = CATSeg(cfg)
    load_state_dict_strict(model, sd, str(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        card = {"name": entry.name, "source": f"{entry.description}; {entry.where}/{entry.files[0]} "
                                              f"(sha256 {digest}), from {entry.source}",
                "licence": entry.licence}
        save_pretrained(model, work, card=card)
        source = {"name": entry.name, "repo_id": entry.repo_id, "repo_type": entry.repo_type,
                  "revision": entry.revision, "file": entry.files[0], "sha256": {entry.files[0]: digest}}
        text = json.dumps(source, indent=2) + "\n"
        atomic_write(work / SOURCE_NAME, lambda p: Path(p).write_text(text))
        if target.exists():
            shutil.rmtree(target)
        try:
            os.replace(work, target)
        except OSError:
            if not _complete(target):  # else another process converted the same file meanwhile
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def is_cached(entry: ModelEntry) -> bool:
    """Whether the entry can be used without network access (converted, or in the HF cache)."""
    if entry.kind == "bundled":
        return True
    if entry.kind == "catseg" and _complete(cache_dir() / "models" / entry.name.replace("/", "--")):
        return True
    hf = _hf()
    return any(isinstance(hf.try_to_load_from_cache(entry.repo_id, name, revision=entry.revision,
                                                   repo_type=entry.repo_type), str) for name in entry.files)


def push_to_hub(model_dir: Union[str, os.PathLike], repo_id: str, *, private: bool = False,
                token: Optional[str] = None, commit_message: Optional[str] = None):
    """Upload a model folder in escnet's format (config.json, model.safetensors and its model card
    README.md, written now if missing) to the Hub model repository `repo_id` (created if needed).
    Returns huggingface_hub's commit info."""
    hf = _hf()
    folder = Path(model_dir)
    for name in MODEL_FILES:
        if not (folder / name).is_file():
            raise ModelNotFoundError(f"{folder} is not a model in escnet's format: it has no {name}")
    try:
        config = json.loads((folder / "config.json").read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{folder / 'config.json'}: not valid JSON ({exc})") from None
    from escnet.modelcard import CARD_NAME, render_model_card

    if not (folder / CARD_NAME).is_file():
        card = render_model_card(config, name=repo_id)
        atomic_write(folder / CARD_NAME, lambda p: Path(p).write_text(card))
    api = hf.HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    return api.upload_folder(
        repo_id=repo_id, repo_type="model", folder_path=str(folder),
        allow_patterns=[*MODEL_FILES, CARD_NAME],
        commit_message=commit_message or f"Upload escnet {config.get('arch', 'model')}",
    )


# ---------------------------------------------------------------------------------------------
# Names -> local paths: the one place (escnet.registry holds the table, this module fetches)


def _choices(kinds) -> str:
    return ", ".join(sorted(n for n, e in registry.MODELS.items() if e.kind in kinds))


def fetch_entry(entry: ModelEntry, name: str, trust_new: bool = False, weights: bool = False) -> Path:
    """The local path of a registry entry, fetched (and converted) now if needed: the bundled
    folder; a CLIP / SAM folder; a CAT-Seg file as initialisation weights (weights=True) or as a
    model converted to escnet's format; an escnet-format folder."""
    if entry.kind == "bundled":
        return registry.bundled_path(entry, name)
    if weights and entry.kind == "catseg":
        return fetch_file(entry, trust_new)
    if entry.kind in ("clip", "sam"):
        return fetch_folder(entry, trust_new)
    return fetch_model(entry, trust_new)


def resolve(path_or_name: Union[str, os.PathLike, None], want: Optional[str] = "model", trust_new: bool = False) -> Path:
    """A local path for what `want` names: "model" (a segmentation model: an existing checkpoint
    path, a registry name, None = "default", or the Hub id of a model in escnet's format), "clip" /
    "sam" (initialisation weights: an existing file or folder, a registry name, or the Hub id of a
    Hugging Face CLIPModel / SamModel), or None (a registry name of any kind, as `escnet models
    --fetch` takes it). Hub files are fetched on first use, then read from the cache."""
    if want is None:
        entry = registry.get_entry(path_or_name)
        if entry is None:
            raise ModelNotFoundError(f"unknown model {path_or_name!r}; `escnet models` lists the names")
        return fetch_entry(entry, path_or_name, trust_new)
    name = "default" if path_or_name is None and want == "model" else os.fspath(path_or_name)
    path = Path(name)
    if path.exists():
        return path
    kinds = registry.SEGMENTER_KINDS if want == "model" else registry.INIT_KINDS[want]
    entry = registry.get_entry(name)
    if entry is not None:
        if entry.kind in kinds:
            return fetch_entry(entry, name, trust_new, weights=want != "model")
        if want == "model":
            raise ModelNotFoundError(f"{name!r} is {entry.kind.upper()} initialisation weights, not a segmentation "
                                     f"model; use one of {_choices(kinds)}")
        raise ModelNotFoundError(f"{name!r} is a {entry.kind} entry, not {want.upper()} weights; "
                                 f"use one of {_choices(kinds)}")
    repo = registry.hub_id(name)
    if repo is not None:
        if want == "model":
            entry = ModelEntry(repo, "escnet", "escnet-format model on the Hub", "see its model card", repo_id=repo,
                               files=("config.json", "model.safetensors"))
        else:
            entry = ModelEntry(repo, want, f"{want.upper()} weights on the Hub", "see its model card", repo_id=repo,
                               files=("model.safetensors", "pytorch_model.bin"))
        try:
            return fetch_entry(entry, name, trust_new, weights=want != "model")
        except ModelNotFoundError as exc:
            raise type(exc)(f"{name!r} is no local path, and as a Hub id: {exc}") from None
    if want == "model":
        raise ModelNotFoundError(f"model path {name!r} does not exist (named models: {_choices(kinds)}; "
                                 "`escnet models` lists them)")
    raise ModelNotFoundError(f"{want.upper()} weights {name!r}: no such file or folder, registry name "
                             f"({_choices(kinds)}) or Hub id")


def resolve_model_path(path_or_name: Union[str, os.PathLike, None]) -> Path:
    """A segmentation model's local path: `resolve(path_or_name, "model")`."""
    return resolve(path_or_name, "model")


def resolve_weights_path(path_or_name: Union[str, os.PathLike], kind: str) -> Path:
    """Initialisation weights' ("clip" or "sam") local path: `resolve(path_or_name, kind)`."""
    return resolve(path_or_name, kind)
