"""The registry of named models: a table; names resolve to paths without touching the network."""
import dataclasses

import pytest

from escnet import registry
from escnet.hub import resolve_model_path, resolve_weights_path
from escnet.registry import ModelEntry, ModelNotFoundError, hub_id


def test_table_holds_the_bundled_catseg_clip_and_sam_entries():
    models = registry.MODELS
    assert models["escnet-synthetic-tiny"].kind == "bundled"
    for name, file in (("catseg-vitb16", "model_base.pth"), ("catseg-vitl14", "model_large.pth")):
        entry = models[name]
        # CAT-Seg's README links its checkpoints to the authors' Hugging Face Space
        assert (entry.repo_id, entry.repo_type, entry.files) == ("hamacojr/CAT-Seg-weights", "space", (file,))
        assert not entry.pinned  # no published sha256 or commit: trust on first use
    assert models["clip-vitb16"].repo_id == "openai/clip-vit-base-patch16"
    assert models["clip-vitl14-336"].repo_id == "openai/clip-vit-large-patch14-336"
    assert models["sam-vitb"].repo_id == "facebook/sam-vit-base"
    assert {e.kind for e in models.values()} == set(registry.KINDS) - {"escnet"}
    assert all(name == entry.name for name, entry in models.items())


def test_entries_are_checked_when_written():
    with pytest.raises(ValueError, match="unknown kind 'weights'"):
        ModelEntry("x", "weights", "", "MIT", repo_id="a/b")
    with pytest.raises(ValueError, match="a Hub model `repo_id`"):
        ModelEntry("x", "catseg", "", "MIT")
    pinned = ModelEntry("x", "catseg", "", "MIT", repo_id="a/b", files=("m.pth",), revision="0" * 40,
                        sha256={"m.pth": "1" * 64})
    assert pinned.pinned and not dataclasses.replace(pinned, revision="main").pinned


def test_bundled_default_and_paths_resolve_offline(tmp_path):
    default = resolve_model_path(None)
    assert default == resolve_model_path("default") == resolve_model_path("escnet-synthetic-tiny")
    assert (default / "config.json").is_file()
    assert resolve_model_path(tmp_path) == tmp_path
    with pytest.raises(ModelNotFoundError, match=r"model path 'nope' does not exist \(named models: catseg-vitb16"):
        resolve_model_path("nope")


def test_a_local_folder_of_the_same_name_wins(tmp_path, monkeypatch):
    (tmp_path / "catseg-vitl14").mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_model_path("catseg-vitl14") == registry.Path("catseg-vitl14")


def test_kinds_are_not_mixed_up():
    with pytest.raises(ModelNotFoundError, match="'sam-vitb' is SAM initialisation weights, not a segmentation model"):
        resolve_model_path("sam-vitb")
    with pytest.raises(ModelNotFoundError, match="'clip-vitb16' is a clip entry, not SAM weights"):
        resolve_weights_path("clip-vitb16", "sam")
    with pytest.raises(ModelNotFoundError, match="CLIP weights '/no/clip.pt': no such file"):
        resolve_weights_path("/no/clip.pt", "clip")


def test_hub_ids():
    assert hub_id("openai/clip-vit-base-patch16") == "openai/clip-vit-base-patch16"
    assert hub_id("hf://me/escnet-vitb16") == "me/escnet-vitb16"
    assert hub_id("hf://me/model.pth") == "me/model.pth"
    for not_an_id in ("weights/clip.pt", "/abs/path", "a/b/c", "plain", "configs/x.toml"):
        assert hub_id(not_an_id) is None, not_an_id
