"""The Hub path without network: a Hugging Face cache laid out as huggingface_hub writes it
(<type>s--org--name/{blobs,refs,snapshots}), holding small random checkpoints in the real formats,
with HF_HUB_OFFLINE on; and a local HTTP endpoint on 127.0.0.1 serving the same files."""
import dataclasses
import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest
import torch

huggingface_hub = pytest.importorskip("huggingface_hub")

from huggingface_hub import constants as hf_constants  # noqa: E402

from escnet import hub, registry  # noqa: E402
from escnet.cli import main  # noqa: E402
from escnet.inference.segmenter import Segmenter  # noqa: E402
from escnet.models.catseg import CATSeg, CATSegConfig  # noqa: E402
from escnet.lifecycle import load_pretrained  # noqa: E402
from escnet.models.factory import create_model  # noqa: E402
from escnet.weights.catseg import save_catseg_checkpoint  # noqa: E402
from escnet.weights.clip import clip_state_to_openai  # noqa: E402
from escnet.weights.sam import load_sam_decoder_weights, to_hf_sam  # noqa: E402

ENTRY = registry.ModelEntry("tiny-catseg", "catseg", "a tiny random CAT-Seg", "MIT", repo_id="someone/tiny-weights",
                            repo_type="space", files=("model_tiny.pth",), preset="tiny")


def put_in_hf_cache(cache: Path, repo_id: str, files: dict[str, bytes], repo_type: str = "model",
                    revision: str = "main", blob_names: dict[str, str] | None = None) -> Path:
    """Lay out files as huggingface_hub's cache does; weight files are stored under their sha256
    (as LFS files are), small files under a git-style sha1. Returns the snapshot folder."""
    repo = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(b"".join(files.values())).hexdigest()
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    for name, data in files.items():
        lfs = name.endswith((".pth", ".safetensors", ".bin"))
        blob = (blob_names or {}).get(name) or (hashlib.sha256(data) if lfs else hashlib.sha1(data)).hexdigest()
        (repo / "blobs" / blob).write_bytes(data)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", blob))
    return snapshot


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """An empty Hugging Face cache and escnet cache, offline, with the test entry registered."""
    hf_cache = tmp_path / "hf"
    hf_cache.mkdir()
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hf_cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("ESCNET_CACHE", str(tmp_path / "escnet"))
    monkeypatch.setitem(registry.MODELS, ENTRY.name, ENTRY)
    return hf_cache


@pytest.fixture(scope="module")
def tiny_catseg(tmp_path_factory):
    torch.manual_seed(0)
    model = CATSeg(CATSegConfig.preset("tiny")).eval()
    path = tmp_path_factory.mktemp("catseg") / "model_tiny.pth"
    save_catseg_checkpoint(model, path)  # detectron2 {"model": sd} with CAT-Seg's key names
    return model, path.read_bytes()


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_named_catseg_model_is_fetched_verified_and_converted_once(caches, tiny_catseg, monkeypatch):
    model, data = tiny_catseg
    put_in_hf_cache(caches, ENTRY.repo_id, {"model_tiny.pth": data}, repo_type="space")
    segmenter = Segmenter.from_pretrained("tiny-catseg", device="cpu")
    assert _same_weights(segmenter.model, model)
    converted = hub.cache_dir() / "models" / "tiny-catseg"
    assert segmenter.checkpoint == str(converted)
    source = json.loads((converted / "source.json").read_text())
    assert source["sha256"] == {"model_tiny.pth": hashlib.sha256(data).hexdigest()}
    card = (converted / "README.md").read_text()
    assert "license: mit" in card and "someone/tiny-weights" in card and '"arch": "catseg"' in card
    assert hub.known_hashes() == {"space/someone/tiny-weights@main/model_tiny.pth": hashlib.sha256(data).hexdigest()}

    def no_download(*args, **kwargs):
        raise AssertionError("a converted model must not be fetched again")

    monkeypatch.setattr(hub, "download", no_download)
    again = hub.resolve_model_path("tiny-catseg")
    assert again == converted and _same_weights(load_pretrained(again), model)


def test_offline_with_empty_cache_is_one_line_naming_model_and_fetch_command(caches, tmp_path, capsys):
    with pytest.raises(hub.ModelNotCachedError) as info:
        Segmenter.from_pretrained("tiny-catseg")
    message = str(info.value)
    assert "\n" not in message
    assert "'tiny-catseg'" in message and "HF_HUB_OFFLINE is set" in message
    assert message.endswith("escnet models --fetch tiny-catseg")

    # the real entry, through the CLI: escnet segment photo.jpg --model catseg-vitl14
    photo = tmp_path / "photo.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(photo)
    code = main(["segment", str(photo), "--classes", "cat, sky", "--model", "catseg-vitl14", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert "'catseg-vitl14'" in err[0] and "model_large.pth" in err[0] and "escnet models --fetch catseg-vitl14" in err[0]

    assert main(["models", "--fetch", "tiny-catseg"]) == 1
    assert "escnet models --fetch tiny-catseg" in capsys.readouterr().err


def test_file_that_is_not_what_the_hub_lists_is_refused(caches, tiny_catseg):
    _, data = tiny_catseg
    tampered = data[:-1] + bytes([data[-1] ^ 1])
    put_in_hf_cache(caches, ENTRY.repo_id, {"model_tiny.pth": tampered}, repo_type="space",
                    blob_names={"model_tiny.pth": hashlib.sha256(data).hexdigest()})
    with pytest.raises(hub.ChecksumError, match=r"the Hub lists it as [0-9a-f]{64}; refused"):
        hub.resolve_model_path("tiny-catseg")
    assert not (hub.cache_dir() / "models" / "tiny-catseg").exists()


def test_file_that_differs_from_the_registry_sha256_is_refused(caches, tiny_catseg, monkeypatch):
    _, data = tiny_catseg
    put_in_hf_cache(caches, ENTRY.repo_id, {"model_tiny.pth": data}, repo_type="space")
    pinned = dataclasses.replace(ENTRY, sha256={"model_tiny.pth": "0" * 64})
    monkeypatch.setitem(registry.MODELS, ENTRY.name, pinned)
    with pytest.raises(hub.ChecksumError, match="the registry expects 0000"):
        Segmenter.from_pretrained("tiny-catseg")
    right = dataclasses.replace(ENTRY, sha256={"model_tiny.pth": hashlib.sha256(data).hexdigest()})
    monkeypatch.setitem(registry.MODELS, ENTRY.name, right)
    assert Segmenter.from_pretrained("tiny-catseg", device="cpu").model.cfg.arch == "catseg"


def test_changed_file_under_a_branch_is_refused_until_trusted(caches, tiny_catseg):
    model, data = tiny_catseg
    put_in_hf_cache(caches, ENTRY.repo_id, {"model_tiny.pth": data}, repo_type="space")
    first = hub.fetch_file(ENTRY)
    # the authors replace the file under "main": a new commit, a new blob
    torch.manual_seed(1)
    other = CATSeg(CATSegConfig.preset("tiny"))
    path = first.parent / "other.pth"
    save_catseg_checkpoint(other, path)
    new = path.read_bytes()
    put_in_hf_cache(caches / "next", ENTRY.repo_id, {"model_tiny.pth": new}, repo_type="space")
    repo = caches / f"spaces--{ENTRY.repo_id.replace('/', '--')}"
    moved = caches / "next" / repo.name
    for sub in ("blobs", "snapshots"):
        for item in (moved / sub).iterdir():
            item.rename(repo / sub / item.name)
    (repo / "refs" / "main").write_text((moved / "refs" / "main").read_text())
    with pytest.raises(hub.ChecksumError, match="recorded at its first download; refused"):
        hub.fetch_file(ENTRY)
    assert hub.sha256_file(hub.fetch_file(ENTRY, trust_new=True)) == hashlib.sha256(new).hexdigest()


def test_hub_ids_where_weight_paths_are_accepted(caches, tmp_path, capsys):
    """`escnet convert --sam facebook/sam-vit-base` and init_sam = "sam-vitb" read an HF SamModel repository."""
    from escnet.models.sam import PromptEncoder, TwoWayTransformer

    torch.manual_seed(3)
    donor = create_model("escnet", "tiny")
    cfg = donor.cfg  # a whole SAM decoder at its sizes (an ESC block holds only some of its layers)
    decoder = {f"prompt_encoder.{k}": v for k, v in PromptEncoder(
        cfg.sam_dim, (cfg.grid, cfg.grid), (cfg.crop_size, cfg.crop_size), cfg.sam_mask_in_chans).state_dict().items()}
    decoder.update({f"transformer.{k}": v for k, v in TwoWayTransformer(
        cfg.sam_depth, cfg.sam_dim, cfg.sam_heads, cfg.sam_mlp_dim,
        attention_downsample_rate=cfg.sam_downsample).state_dict().items()})
    decoder.update({"iou_token.weight": torch.randn(1, cfg.sam_dim), "mask_tokens.weight": torch.randn(4, cfg.sam_dim)})
    from safetensors.torch import save

    weights = save({k: v.clone() for k, v in to_hf_sam(decoder).items()})
    put_in_hf_cache(caches, "facebook/sam-vit-base", {"model.safetensors": weights,
                                                      "config.json": b'{"model_type": "sam"}'})
    folder = hub.resolve_weights_path("sam-vitb", "sam")
    assert folder == hub.resolve_weights_path("facebook/sam-vit-base", "sam")
    loaded = load_sam_decoder_weights(folder)
    assert all(torch.equal(loaded[k], v) for k, v in decoder.items())

    clip_file = tmp_path / "clip.pt"
    torch.save(clip_state_to_openai(donor.clip.state_dict()), clip_file)
    out = tmp_path / "init"
    assert main(["convert", "--preset", "tiny", "--clip", str(clip_file), "--sam", "facebook/sam-vit-base",
                 "--out", str(out)]) == 0
    model = load_pretrained(out)
    assert torch.equal(model.sam[1].iou_token.weight, decoder["iou_token.weight"])

    with pytest.raises(registry.ModelNotFoundError, match="'catseg-vitl14' is a catseg entry, not SAM weights"):
        hub.resolve_weights_path("catseg-vitl14", "sam")
    with pytest.raises(hub.ModelNotCachedError, match="'clip-vitb16'.*escnet models --fetch clip-vitb16"):
        hub.resolve_weights_path("clip-vitb16", "clip")


class _HubHandler(http.server.BaseHTTPRequestHandler):
    """Answers /<repo_id>/resolve/<revision>/<file> (and /spaces/...) the way the Hub does: the
    commit and the sha256 (ETag) in the headers."""

    files: dict[str, bytes] = {}
    commit = "a" * 40

    def _answer(self, body: bool):
        data = self.files.get(self.path.split("?")[0])
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", self.commit)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self):  # noqa: N802
        self._answer(False)

    def do_GET(self):  # noqa: N802
        self._answer(True)

    def log_message(self, *args):
        pass


def test_download_from_an_endpoint_then_offline(caches, tiny_catseg, monkeypatch):
    """The online path: huggingface_hub downloads from HF_ENDPOINT (here 127.0.0.1) into its cache;
    afterwards the model works with HF_HUB_OFFLINE and no converted copy."""
    model, data = tiny_catseg
    _HubHandler.files = {f"/spaces/{ENTRY.repo_id}/resolve/main/model_tiny.pth": data}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HubHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(hf_constants, "ENDPOINT", endpoint)
        monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            endpoint + "/{repo_id}/resolve/{revision}/{filename}")
        assert main(["models", "--fetch", "tiny-catseg"]) == 0
    finally:
        server.shutdown()
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    blob = caches / "spaces--someone--tiny-weights" / "blobs" / hashlib.sha256(data).hexdigest()
    assert blob.read_bytes() == data
    assert _same_weights(load_pretrained(hub.resolve_model_path("tiny-catseg")), model)


def test_models_command_lists_the_registry(caches, capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("escnet-synthetic-tiny", "catseg-vitb16", "catseg-vitl14", "clip-vitb16", "sam-vitb", "tiny-catseg"):
        assert name in out
    row = next(line for line in out.splitlines() if line.startswith("catseg-vitl14"))
    assert "spaces/hamacojr/CAT-Seg-weights@main" in row and "trust on first use" in row and " no " in row
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("escnet ")


def test_hub_id_of_an_escnet_format_model(caches, tmp_path):
    """What push_to_hub uploads loads back by its id: `Segmenter.from_pretrained("me/tiny-escnet")`."""
    from escnet.lifecycle import save_pretrained

    torch.manual_seed(5)
    model = create_model("escnet", "tiny")
    folder = save_pretrained(model, tmp_path / "m")
    files = {name: (folder / name).read_bytes() for name in ("config.json", "model.safetensors", "README.md")}
    put_in_hf_cache(caches, "me/tiny-escnet", files)
    segmenter = Segmenter.from_pretrained("me/tiny-escnet", device="cpu")
    assert _same_weights(segmenter.model, model)
    assert Path(segmenter.checkpoint).parent.name == "snapshots"
    with pytest.raises(hub.ModelNotCachedError, match="'me/other' is no local path, and as a Hub id: model 'me/other'"):
        Segmenter.from_pretrained("me/other")


class _FakeApi:
    calls: list = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        return "https://example.invalid/commit"


def test_push_to_hub_uploads_the_escnet_format_with_its_card(tmp_path, monkeypatch):
    from escnet.lifecycle import save_pretrained

    folder = save_pretrained(create_model("catseg", "tiny"), tmp_path / "model")
    (folder / "notes.txt").write_text("not uploaded")
    _FakeApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeApi)
    assert hub.push_to_hub(folder, "me/tiny-catseg", private=True) == "https://example.invalid/commit"
    (create, name, options), (upload, args) = _FakeApi.calls
    assert (create, name, options) == ("create_repo", "me/tiny-catseg",
                                       {"repo_type": "model", "private": True, "exist_ok": True})
    assert upload == "upload_folder" and args["repo_id"] == "me/tiny-catseg" and args["folder_path"] == str(folder)
    uploaded = sorted(p.name for p in folder.iterdir()
                      if any(p.match(pattern) for pattern in args["allow_patterns"]))
    assert uploaded == ["README.md", "config.json", "model.safetensors"]
    with pytest.raises(registry.ModelNotFoundError, match="has no model.safetensors"):
        (folder / "model.safetensors").unlink()
        hub.push_to_hub(folder, "me/tiny-catseg")


@pytest.mark.parametrize("target", ["/dev/zero", "fifo", "outside"])
def test_only_regular_files_inside_the_blobs_are_hashed(caches, tiny_catseg, tmp_path, target):
    """Issue 24 item 8: a cache file symlinked to /dev/zero or a FIFO hung the hashing; a symlink to
    another file got its hash recorded."""
    import os
    import signal

    _, data = tiny_catseg
    snapshot = put_in_hf_cache(caches, ENTRY.repo_id, {"model_tiny.pth": data}, repo_type="space")
    link = snapshot / "model_tiny.pth"
    link.unlink()
    if target == "fifo":
        os.mkfifo(tmp_path / "fifo")
        link.symlink_to(tmp_path / "fifo")
    elif target == "outside":
        (tmp_path / "other.pth").write_bytes(data)
        link.symlink_to(tmp_path / "other.pth")
    else:
        link.symlink_to(target)

    def hung(*_):
        raise AssertionError("hashing hung")

    signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        with pytest.raises(hub.ChecksumError, match="blobs"):
            Segmenter.from_pretrained("tiny-catseg", device="cpu")
    finally:
        signal.alarm(0)
    assert hub.known_hashes() == {}


def test_a_file_over_the_size_bound_is_not_hashed(caches, tiny_catseg, monkeypatch):
    _, data = tiny_catseg
    put_in_hf_cache(caches, ENTRY.repo_id, {"model_tiny.pth": data}, repo_type="space")
    monkeypatch.setenv("ESCNET_MAX_MODEL_BYTES", "1000")
    with pytest.raises(hub.ChecksumError, match="over the limit of 1000 bytes .*ESCNET_MAX_MODEL_BYTES"):
        Segmenter.from_pretrained("tiny-catseg", device="cpu")
