"""The on-disk text-feature cache (escnet.inference.text_cache) behind Segmenter.text_features."""
import pytest
import torch

from escnet.inference import text_cache
from escnet.inference.segmenter import Segmenter
from escnet.models.factory import create_model

NAMES = ["sky", "tree, forest", "road", "person"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ESCNET_CACHE", str(tmp_path))
    monkeypatch.delenv(text_cache.ENV, raising=False)
    return tmp_path / text_cache.FOLDER


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("escnet", "tiny").eval()


def files(folder):
    return sorted(folder.glob("*.safetensors")) if folder.is_dir() else []


def counting(segmenter, monkeypatch):
    """The list of vocabularies the segmenter's model encodes from now on."""
    calls = []
    encode = segmenter.model.encode_text

    def wrapped(names):
        calls.append(list(names))
        return encode(names)

    monkeypatch.setattr(segmenter.model, "encode_text", wrapped)
    return calls


def test_warm_equals_cold_bitwise_and_skips_the_encoder(cache, model, monkeypatch):
    cold = Segmenter(model, device="cpu").text_features(NAMES)
    assert len(files(cache)) == 1
    warm_segmenter = Segmenter(model, device="cpu")  # a new process: empty in-memory cache
    calls = counting(warm_segmenter, monkeypatch)
    warm = warm_segmenter.text_features(NAMES)
    assert calls == []
    assert warm.dtype == cold.dtype and torch.equal(warm, cold)


def test_a_changed_weight_or_class_list_misses(cache, model, monkeypatch):
    Segmenter(model, device="cpu").text_features(NAMES)
    other = create_model("escnet", "tiny").eval()
    other.load_state_dict(model.state_dict())
    segmenter = Segmenter(other, device="cpu")
    calls = counting(segmenter, monkeypatch)
    segmenter.text_features(NAMES)
    assert calls == []  # same weights, another module: a hit
    with torch.no_grad():
        other.clip.ln_final.weight[0] += 1e-3  # an in-place change of the text tower
    segmenter._text_cache.clear()
    changed = segmenter.text_features(NAMES)
    segmenter.text_features(NAMES[:3])
    segmenter.text_features(list(reversed(NAMES)))
    assert calls == [NAMES, NAMES[:3], list(reversed(NAMES))]
    assert len(files(cache)) == 4
    assert not torch.equal(changed, Segmenter(model, device="cpu").text_features(NAMES))


def test_the_image_tower_is_not_part_of_the_key(cache, model):
    tc = text_cache.TextCache(model)
    before = tc.key(NAMES, "cpu/float32")
    other = create_model("escnet", "tiny").eval()
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        other.clip.visual.conv1.weight.add_(1.0)
    assert text_cache.TextCache(other).key(NAMES, "cpu/float32") == before
    assert tc.key(NAMES, "cpu/bfloat16") != before


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_key", "wrong_shape", "nan"])
def test_a_corrupt_or_mismatching_file_is_ignored_and_rewritten(cache, model, monkeypatch, damage):
    from safetensors.torch import save_file

    reference = Segmenter(model, device="cpu").text_features(NAMES)
    (path,) = files(cache)
    good = path.read_bytes()
    key = path.stem
    assert torch.equal(text_cache.TextCache(model).load(key, len(NAMES)), reference)
    if damage == "garbage":
        path.write_bytes(b"\x00not a safetensors file")
    elif damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    else:
        feats = {"wrong_key": reference, "wrong_shape": reference[:2], "nan": reference * float("nan")}[damage]
        save_file({"features": feats.contiguous()}, str(path),
                  metadata={"key": "0" * 64 if damage == "wrong_key" else key})
    assert text_cache.TextCache(model).load(key, len(NAMES)) is None
    segmenter = Segmenter(model, device="cpu")
    calls = counting(segmenter, monkeypatch)
    again = segmenter.text_features(NAMES)
    assert calls == [NAMES]
    assert torch.equal(again, reference)
    assert torch.equal(text_cache.TextCache(model).load(key, len(NAMES)), reference)  # rewritten


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_disabled_writes_nothing_and_reads_nothing(cache, model, monkeypatch, how):
    Segmenter(model, device="cpu").text_features(NAMES[:2])  # a file that must not be read
    before = files(cache)
    if how == "environment":
        monkeypatch.setenv(text_cache.ENV, "0")
        segmenter = Segmenter(model, device="cpu")
    else:
        segmenter = Segmenter(model, device="cpu", text_cache=False)
    assert segmenter.disk_text_cache is None
    calls = counting(segmenter, monkeypatch)
    segmenter.text_features(NAMES)
    segmenter.text_features(NAMES[:2])
    assert calls == [NAMES, NAMES[:2]]
    assert files(cache) == before


def test_an_unwritable_cache_only_costs_time(tmp_path, monkeypatch, model):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("ESCNET_CACHE", str(blocker))
    feats = Segmenter(model, device="cpu").text_features(NAMES)
    assert feats.shape == (len(NAMES), model.cfg.clip.embed_dim)


def test_cli_flag_turns_the_cache_off(tmp_path, cache, model):
    from escnet.cli import build_parser

    for command in (["segment", "x.png", "--classes", "a", "--out", "o"], ["evaluate", "--model", "m", "--dataset", "d"]):
        assert build_parser().parse_args(command + ["--no-text-cache"]).no_text_cache is True
        assert build_parser().parse_args(command).no_text_cache is False


def test_a_planted_file_under_the_right_key_is_recomputed_not_used(cache, model, monkeypatch):
    """Issue 24 item 10: anyone can compute a key (weights, template, names are public); a file written
    without the cache's own secret is not trusted."""
    from safetensors.torch import save_file

    segmenter = Segmenter(model, device="cpu")
    key = segmenter.disk_text_cache.key(NAMES, segmenter._precision())
    planted = torch.ones(len(NAMES), model.cfg.clip.embed_dim)
    cache.mkdir(parents=True, exist_ok=True)
    save_file({"features": planted}, str(cache / f"{key}.safetensors"),
              metadata={"key": key, "format": text_cache.FORMAT})
    calls = counting(segmenter, monkeypatch)
    feats = segmenter.text_features(NAMES)
    assert calls == [NAMES]  # recomputed
    assert not torch.equal(feats, planted)
    assert torch.equal(feats, Segmenter(model, device="cpu", text_cache=False).text_features(NAMES))
    # the rewritten file is trusted by the next process
    again = Segmenter(model, device="cpu")
    calls = counting(again, monkeypatch)
    assert torch.equal(again.text_features(NAMES), feats) and calls == []


def test_a_file_with_altered_features_is_recomputed(cache, model, monkeypatch):
    from safetensors import safe_open
    from safetensors.torch import save_file

    good = Segmenter(model, device="cpu").text_features(NAMES)
    (path,) = files(cache)
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    save_file({"features": good * 2}, str(path), metadata=metadata)  # the same key and seal, other values
    segmenter = Segmenter(model, device="cpu")
    calls = counting(segmenter, monkeypatch)
    assert torch.equal(segmenter.text_features(NAMES), good) and calls == [NAMES]
