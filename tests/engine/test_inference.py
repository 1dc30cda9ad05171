import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from escnet import registry
from escnet.inference import segmenter as inference
from escnet.inference.segmenter import (
    ModelNotFoundError,
    Segmenter,
    class_chunk_for_budget,
    resolve_model_path,
    upsample_argmax,
)

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255)}


class ColourModel(torch.nn.Module):
    """Stub with the model interface: a class's text feature is its colour, and a pixel's logit
    for a class falls with the pixel's distance to that colour. Records every call."""

    def __init__(self, crop=48, truncation=False):
        super().__init__()
        # its logits are per pixel: native resolution = the view (4 x a crop // 4 token grid)
        self.cfg = SimpleNamespace(arch="stub", crop_size=crop, pixel_mean=(128.0, 128.0, 128.0),
                                   clip=SimpleNamespace(image_size=crop, patch_size=4))
        if truncation:
            self.cfg.class_truncation = 8  # the config's own value, which the Segmenter never uses
        self.text_calls = 0
        self.calls = []

    def encode_text(self, names):
        self.text_calls += 1
        return torch.tensor([COLOURS.get(n.split(",")[0].strip(), (128, 128, 128)) for n in names], dtype=torch.float32)

    def forward(self, images, text, class_chunk=None, **options):
        self.calls.append({"images": images.clone(), "class_chunk": class_chunk, "options": options})
        distance = (images[:, None] - text[None, :, :, None, None]).norm(dim=2)
        return 4.0 - distance / 40.0


def test_upsample_argmax_chunks_are_exact_and_ties_go_to_the_lower_id():
    probs = torch.rand(7, 9, 11)
    probs[5] = probs[2]  # exact tie between classes 2 and 5
    reference = F.interpolate(probs[None], size=(20, 25), mode="bilinear", align_corners=False)[0]
    for chunk in (1, 2, 3, 7):
        labels, best, kept = upsample_argmax(probs, (20, 25), chunk, keep=True)
        torch.testing.assert_close(kept, reference)
        torch.testing.assert_close(best, reference.amax(0))
        assert torch.equal(labels, reference.argmax(0))
        assert not (labels == 5).any()


def test_class_chunk_follows_the_budget():
    assert class_chunk_for_budget(847, 384, 5, None) is None
    small = class_chunk_for_budget(847, 384, 5, 512)
    large = class_chunk_for_budget(847, 384, 5, 4096)
    assert 1 <= small < large < 847
    assert class_chunk_for_budget(847, 384, 5, 0.001) == 1
    assert class_chunk_for_budget(10, 384, 5, 4096) is None


def _halves(height=40, width=60):
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 2] = COLOURS["red"]
    image[:, width // 2:] = COLOURS["blue"]
    return image


def test_segment_returns_labels_at_input_resolution():
    segmenter = Segmenter(ColourModel(), device="cpu")
    result = segmenter.segment(_halves(), "green; red; blue", return_probs=True)
    assert result.labels.shape == (40, 60)
    assert (result.labels[:, :25] == 1).all() and (result.labels[:, 35:] == 2).all()
    assert result.classes == ["green", "red", "blue"]
    assert result.probs.shape == (3, 40, 60)
    assert result.fractions().sum() == pytest.approx(1.0)
    assert result.info["protocol"] == "sliding" and result.info["class_mode"] == "exact"
    assert result.info["working_size"] == [40, 60]


@pytest.mark.parametrize("protocol", ["sliding", "single"])
def test_every_input_mode_segments(protocol, tmp_path: Path):
    segmenter = Segmenter(ColourModel(), device="cpu", protocol=protocol)
    rgba = np.concatenate([_halves(), np.full((40, 60, 1), 255, np.uint8)], axis=-1)
    Image.fromarray(_halves()).save(tmp_path / "a.png")
    inputs = [tmp_path / "a.png", str(tmp_path / "a.png"), Image.fromarray(_halves()), _halves(),
              rgba, Image.fromarray(rgba, "RGBA"), _halves().astype(np.float64) / 255]
    # single view: the official padding (80 x 120 -> 96 x 128) is stretched into the last rows and
    # columns of the output (escnet/inference/protocol.py, rule 3); the rest is the image's
    rows, cols = (slice(0, 30), slice(35, 55)) if protocol == "single" else (slice(None), slice(35, None))
    for item in inputs:
        labels = segmenter.segment(item, ["red", "blue"]).labels
        assert labels.shape == (40, 60)
        assert (labels[rows, :25] == 0).all() and (labels[rows, cols] == 1).all()


def test_tiny_images():
    segmenter = Segmenter(ColourModel(), device="cpu")
    assert segmenter.segment(np.zeros((1, 1, 3), np.uint8), "red, blue").labels.shape == (1, 1)
    result = segmenter.segment(_halves(2, 3), "red, blue")
    assert result.labels.shape == (2, 3)
    assert result.labels[0, 0] == 0 and result.labels[0, 2] == 1
    assert result.overlay().width >= 384


def test_large_image_is_processed_at_the_working_size():
    segmenter = Segmenter(ColourModel(), device="cpu", max_side=30)
    result = segmenter.segment(_halves(40, 60), "red, blue", return_probs=True)
    assert result.info["working_size"] == [20, 30]
    assert result.labels.shape == (40, 60)
    assert result.probs.shape == (2, 20, 30)
    assert (result.labels[:, :26] == 0).all() and (result.labels[:, 34:] == 1).all()
    small = result.probs.argmax(0)
    np.testing.assert_array_equal(result.labels[::2, ::2], small)


def test_text_features_are_cached_per_vocabulary():
    model = ColourModel()
    segmenter = Segmenter(model, device="cpu", protocol="single")
    segmenter.segment(_halves(), "red, blue")
    segmenter.segment(_halves(8, 8), ["red", "blue"])
    assert model.text_calls == 1
    segmenter.segment(_halves(), "blue, red")
    assert model.text_calls == 2


def test_memory_budget_sets_the_class_chunk():
    model = ColourModel(crop=48)
    segmenter = Segmenter(model, device="cpu", memory_budget_mb=0.001)
    result = segmenter.segment(_halves(), "red, green, blue")
    assert model.calls[-1]["class_chunk"] == 1 and result.info["class_chunk"] == 1
    Segmenter(model, device="cpu", memory_budget_mb=None).segment(_halves(), "red, green, blue")
    assert model.calls[-1]["class_chunk"] is None


def test_the_class_mode_is_a_forward_argument_and_the_config_stays():
    model = ColourModel(truncation=True)
    segmenter = Segmenter(model, device="cpu", protocol="single")
    names = [f"class {i}" for i in range(300)]
    result = segmenter.segment(_halves(8, 8), names, class_mode="top256")
    assert model.calls[-1]["options"] == {"class_truncation": 256}
    assert result.info["class_mode"] == "top256" and result.info["truncated"] is True
    result = segmenter.segment(_halves(8, 8), names)
    assert model.calls[-1]["options"] == {"class_truncation": None} and result.info["truncated"] is False
    assert model.cfg.class_truncation == 8
    # a model without CAT-Seg's truncation (ESC-Net) is called without the argument
    plain = ColourModel()
    Segmenter(plain, device="cpu", protocol="single").segment(_halves(8, 8), names)
    assert plain.calls[-1]["options"] == {}


def test_top256_needs_a_model_with_truncation():
    segmenter = Segmenter(ColourModel(), device="cpu")
    with pytest.raises(ValueError, match="this stub model supports class_mode 'exact' only"):
        segmenter.segment(_halves(), "red, blue", class_mode="top256")
    with pytest.raises(ValueError, match="this stub model supports class_mode 'exact' only"):
        Segmenter(ColourModel(), device="cpu", class_mode="top256")


def test_bad_options():
    with pytest.raises(ValueError, match="unknown protocol 'tiles'; choose one of sliding, single"):
        Segmenter(ColourModel(), device="cpu", protocol="tiles")
    with pytest.raises(ValueError, match="unknown class_mode 'top100'"):
        Segmenter(ColourModel(), device="cpu").segment(_halves(), "red", class_mode="top100")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        Segmenter(ColourModel(), device="gpu0")


def test_half_precision_autocast_runs():
    result = Segmenter(ColourModel(), device="cpu", half=True).segment(_halves(), "red, blue")
    assert (result.labels[:, :25] == 0).all()


def test_model_paths(tmp_path: Path, monkeypatch):
    with pytest.raises(ModelNotFoundError, match=r"model path '.*nope' does not exist"):
        resolve_model_path(tmp_path / "nope")
    shipped = registry.MODELS[registry.DEFAULT_MODEL]
    monkeypatch.setitem(registry.MODELS, registry.DEFAULT_MODEL, dataclasses.replace(shipped, folder="not-shipped"))
    with pytest.raises(ModelNotFoundError, match="the bundled model 'default' is not part of this installation"):
        Segmenter.from_pretrained(None)
    assert resolve_model_path(tmp_path) == tmp_path


def test_save_writes_three_files(tmp_path: Path):
    result = Segmenter(ColourModel(), device="cpu").segment(_halves(), "red; blue, navy")
    paths = result.save(tmp_path / "out", name="halves")
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["halves.json", "halves_labels.png", "halves_overlay.png"]
    labels = np.asarray(Image.open(paths["labels"]))
    np.testing.assert_array_equal(labels, result.labels)
    data = json.loads(paths["json"].read_text())
    assert [c["name"] for c in data["classes"]] == ["red", "blue"]
    assert data["classes"][1]["entry"] == "blue, navy"
    assert sum(c["fraction"] for c in data["classes"]) == pytest.approx(1.0)


def test_failed_save_leaves_nothing(tmp_path: Path, monkeypatch):
    result = Segmenter(ColourModel(), device="cpu").segment(_halves(), "red, blue")

    def broken_json(self):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(inference.SegmentationResult, "to_dict", broken_json)
    with pytest.raises(RuntimeError, match="disk on fire"):
        result.save(tmp_path, name="x")
    assert list(tmp_path.iterdir()) == []


def test_chunked_and_unchunked_real_model_agree():
    from escnet.models import factory
    torch.manual_seed(0)
    model = factory.create_model("escnet", "tiny")
    image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    classes = "cat, grass, sky, road"
    whole = Segmenter(model, device="cpu", protocol="single", memory_budget_mb=None)
    chunked = Segmenter(model, device="cpu", protocol="single", memory_budget_mb=1.2)  # 2 classes a pass
    whole, chunked = (s.segment(image, classes, return_probs=True) for s in (whole, chunked))
    assert chunked.info["class_chunk"] == 2 and whole.info["class_chunk"] is None
    np.testing.assert_array_equal(chunked.labels, whole.labels)
    np.testing.assert_allclose(chunked.probs, whole.probs, atol=1e-5, rtol=0)


def test_catseg_checkpoint_exact_and_truncated(tmp_path: Path, monkeypatch):
    from escnet.models import factory
    from escnet import lifecycle
    torch.manual_seed(0)
    lifecycle.save_pretrained(factory.create_model("catseg", "tiny"), tmp_path)
    segmenter = Segmenter.from_pretrained(tmp_path, device="cpu", protocol="single")
    image = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    classes = "cat, grass, sky, road, car"
    exact = segmenter.segment(image, classes, return_probs=True)
    assert exact.info["model"] == "catseg" and exact.info["truncated"] is False
    assert exact.probs.min() > 1e-6  # every class was scored
    monkeypatch.setattr(inference, "TOP_K", 2)  # truncate a 5-class vocabulary to see the mechanism work
    top = segmenter.segment(image, classes, class_mode="top256", return_probs=True)
    assert top.info["truncated"] is True
    scored = (top.probs > 1e-6).any(axis=(1, 2))
    assert scored.sum() == 2 and set(np.unique(top.labels)) <= set(np.flatnonzero(scored))
    assert segmenter.model.cfg.class_truncation == 8  # the checkpoint's own setting, never changed


def test_threads_with_different_class_modes_share_one_model(tmp_path: Path, monkeypatch):
    """The demo serves requests from several threads through one Segmenter: each call's class mode
    is its own (a forward argument), so concurrent calls give what sequential ones give, and the
    model's config is never written."""
    import threading

    from escnet.models import factory
    from escnet.models.catseg import CATSegConfig

    torch.manual_seed(0)
    segmenter = Segmenter(factory.create_model("catseg", "tiny"), device="cpu", protocol="single", text_cache=False)
    monkeypatch.setattr(inference, "TOP_K", 2)  # so that top256 truncates this 5-class vocabulary
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (30, 40, 3), dtype=np.uint8) for _ in range(2)]
    classes = "cat, grass, sky, road, car"
    jobs = [(mode, i) for mode in ("exact", "top256") for i in range(len(images))]
    expected = {job: segmenter.segment(images[job[1]], classes, class_mode=job[0], return_probs=True) for job in jobs}
    assert not np.allclose(expected["exact", 0].probs, expected["top256", 0].probs)  # the modes differ

    def frozen(cfg, name, value):
        raise AssertionError(f"the model's config was changed: {name} = {value!r}")

    monkeypatch.setattr(CATSegConfig, "__setattr__", frozen)
    start = threading.Barrier(2)
    results, errors = {}, []

    def worker(mode):
        try:
            start.wait()
            for _ in range(3):
                for i in range(len(images)):
                    results.setdefault((mode, i), []).append(
                        segmenter.segment(images[i], classes, class_mode=mode, return_probs=True))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(mode,)) for mode in ("exact", "top256")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for job in jobs:
        assert len(results[job]) == 3
        for result in results[job]:
            np.testing.assert_array_equal(result.labels, expected[job].labels)
            np.testing.assert_allclose(result.probs, expected[job].probs, atol=1e-6, rtol=0)
            assert result.info["class_mode"] == job[0]
    assert segmenter.model.cfg.class_truncation == 8


@pytest.mark.parametrize("arch, protocol", [("escnet", "sliding"), ("escnet", "single"), ("catseg", "sliding")])
def test_batched_segmentation_equals_one_by_one(arch, protocol):
    from escnet.models import factory
    torch.manual_seed(0)
    segmenter = Segmenter(factory.create_model(arch, "tiny"), device="cpu", protocol=protocol)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, size, dtype=np.uint8) for size in ((50, 70, 3), (96, 96, 3), (33, 20, 3))]
    classes = "cat, grass, sky, road"
    alone = [segmenter.segment(image, classes) for image in images]
    for batch_size in (2, 3):
        batched = segmenter.segment(images, classes, batch_size=batch_size)
        assert len(batched) == 3
        for one, many in zip(alone, batched):
            assert many.labels.shape == one.labels.shape
            np.testing.assert_array_equal(many.labels, one.labels)
            np.testing.assert_allclose(many.scores, one.scores, atol=1e-5)
    assert [r.labels.shape for r in segmenter(images, classes)] == [(50, 70), (96, 96), (33, 20)]


def test_class_scores_come_without_full_probabilities():
    result = Segmenter(ColourModel(), device="cpu").segment(_halves(), "red; blue; green")
    assert result.probs is None and result.scores.shape == (3,)
    assert result.scores[0] > 0.5 and result.scores[1] > 0.5 and result.scores[2] == 0  # green got no pixel
    full = Segmenter(ColourModel(), device="cpu").segment(_halves(), "red; blue; green", return_probs=True)
    red = full.labels == 0
    assert abs(full.scores[0] - full.probs[0][red].mean()) < 1e-5
    assert [c["score"] for c in full.to_dict()["classes"]] == pytest.approx(full.scores.tolist())


def test_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        Segmenter(ColourModel(), device="cpu").segment([_halves()], "red", batch_size=0)
def test_model_notice_is_printed_without_terminal_escapes(tmp_path):
    import shutil
    import warnings
    from importlib import resources

    folder = tmp_path / "model"
    shutil.copytree(str(resources.files("escnet") / "assets" / "models" / "escnet-synthetic-tiny"), folder)
    (folder / "NOTICE.txt").write_text("demo model\x1b[2J\x1b]0;pwned\x07 only\x1b[31m red\x07\x00")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a description, not a warning
        text = Segmenter.from_pretrained(folder, device="cpu").description
    assert "demo model only red" in text
    assert not any(c in text for c in "\x1b\x07\x00")
