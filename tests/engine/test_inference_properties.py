"""Property-based tests (hypothesis): any image and any vocabulary through `Segmenter.segment` and
`escnet segment` gives a result of the right shape or one of the package's named errors.
Bounded (few examples, a 48 px random ESC-Net) to keep CI fast; tools/fuzz.py is the long run."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from escnet.cli import main
from escnet.data.images import ImageError, load_image
from escnet.data.vocab import VocabularyError
from escnet.inference.segmenter import Segmenter
from escnet.errors import EscnetError

# the health checks to suppress come from the profile (tests/conftest.py): data generation on a loaded
# CI machine can be slow, which says nothing about the code under test
FAST = settings(max_examples=25, deadline=None)
# Of the 25 examples, at least this many must reach the model (see Reached). The CI profile is
# derandomized, so there the count is fixed (12 and 15 at the time of writing); a random run
# (hypothesis draws many minimal, rejected inputs first) has reached as few as 3.
FLOOR = 5 if settings.default.derandomize else 2
MODES = ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "F", "LA", "La", "PA", "RGBX", "RGBa",
         "I;16", "I;16B"]


@pytest.fixture(scope="module")
def segmenter():
    from escnet.models.clip import CLIPConfig
    from escnet.models.factory import create_model

    torch.manual_seed(0)
    clip = dataclasses.replace(CLIPConfig.preset("tiny"), image_size=48, patch_size=12)
    return Segmenter(create_model("escnet", "tiny", clip=clip, crop_size=48, window=2), device="cpu",
                     protocol="single")


names = st.lists(st.sampled_from(list("abcxyz ,;\t\ufeff\x1b\x00é猫") + ["  ", "&amp;", "\x1b[31m"]),
                 max_size=12).map("".join)
# plain vocabularies (always valid: distinct names), so that enough drawn inputs reach the model (Reached)
plain_vocabularies = st.lists(st.sampled_from(["cat", "dog", "sky", "building, edifice"]), min_size=1, max_size=4,
                              unique=True)
# adversarial names, plus plain vocabularies
vocabularies = st.one_of(st.lists(names, min_size=0, max_size=5), names.map(lambda s: "cat, " + s), plain_vocabularies)
shapes = st.tuples(st.integers(0, 40), st.integers(0, 40)).flatmap(
    lambda hw: st.sampled_from([hw, (*hw, 1), (*hw, 3), (*hw, 4)]))
dtypes = st.sampled_from([np.uint8, np.uint16, np.int32, np.bool_, np.float32, np.float64])
arrays = st.tuples(dtypes, shapes).flatmap(lambda ds: hnp.arrays(ds[0], ds[1], elements=(
    st.floats(0, 1, width=32) if np.issubdtype(ds[0], np.floating) else
    st.booleans() if ds[0] == np.bool_ else st.integers(0, 255 if ds[0] != np.uint16 else 65535))))
pil_images = st.tuples(st.sampled_from(MODES), st.integers(0, 30), st.integers(0, 30), st.integers(0, 255)).map(
    lambda m: Image.new(m[0], (m[1], m[2]), m[3] if m[0] not in ("RGB", "RGBA", "CMYK") else (m[3],) * len(m[0])))


class Reached:
    """How many drawn inputs reached the model (its forward ran and a result came back) and how many
    were rejected with a named error: a property test that returns early on every input would
    otherwise pass. FLOOR: see above."""

    def __init__(self, segmenter):
        self.forwards = 0
        self.results = 0
        self.rejected = 0
        self.hook = segmenter.model.register_forward_hook(lambda *args: setattr(self, "forwards", self.forwards + 1))

    def close(self, floor: int) -> None:
        self.hook.remove()
        assert self.results >= floor and self.forwards >= self.results, (
            f"only {self.results} inputs reached the model ({self.forwards} forwards, {self.rejected} rejected); floor {floor}")


def _check(segmenter, image, vocabulary, reached):
    before = reached.forwards
    try:
        result = segmenter.segment(image, vocabulary)
    except (ImageError, VocabularyError):
        reached.rejected += 1
        return
    assert reached.forwards > before  # a result came from a model forward
    reached.results += 1
    height, width = load_image(image).shape[:2]
    assert result.labels.shape == (height, width)
    assert 0 <= int(result.labels.min()) and int(result.labels.max()) < len(result.classes)
    assert all("\ufeff" not in c and "  " not in c for c in result.classes)


def test_any_array_and_vocabulary(segmenter):
    reached = Reached(segmenter)

    @FAST
    @given(image=arrays, vocabulary=vocabularies)
    def check(image, vocabulary):
        _check(segmenter, image, vocabulary, reached)

    check()
    reached.close(FLOOR)


def test_any_pil_image(segmenter):
    reached = Reached(segmenter)

    @FAST
    @given(image=pil_images, vocabulary=plain_vocabularies)  # the images are the subject; vocabularies: above
    def check(image, vocabulary):
        _check(segmenter, image, vocabulary, reached)

    check()
    reached.close(FLOOR)


def test_cli_exit_status_and_one_line_errors(tmp_path_factory, capsys):
    from escnet.lifecycle import save_pretrained
    from escnet.models.factory import create_model

    model_dir = tmp_path_factory.mktemp("cli-model") / "model"
    torch.manual_seed(0)
    save_pretrained(create_model("escnet", "tiny"), model_dir)
    counts = {"cli": 0, "segmented": 0}

    @settings(max_examples=6, deadline=None)
    @given(image=pil_images, fmt=st.sampled_from(["PNG", "TIFF", "GIF", "BMP"]), cut=st.integers(0, 400),
           classes=st.text(st.sampled_from(list("abc ,;\x1b")), min_size=0, max_size=10))
    def check(image, fmt, cut, classes):
        folder = tmp_path_factory.mktemp("cli")
        path = folder / f"in.{fmt.lower()}"
        try:
            image.convert("RGB").save(path, format=fmt)
        except (ValueError, OSError):
            return
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - cut] if cut < len(data) else data)
        code = main(["segment", str(path), "--classes", classes, "--model", str(model_dir), "--out", str(folder / "out"),
                     "--device", "cpu", "--protocol", "single"])
        counts["cli"] += 1
        err = capsys.readouterr().err
        assert code in (0, 1, 2) and "Traceback" not in err and "\x1b" not in err
        if code == 0:
            counts["segmented"] += 1
            assert (folder / "out" / "in_labels.png").is_file()
        else:
            assert "error" in err

    check()
    # inputs that reached the command (an empty image cannot be saved) and that it segmented: with
    # the derandomized CI profile 5 and 1; a random run has had 3 and 0
    floor = (4, 1) if settings.default.derandomize else (1, 0)
    assert counts["cli"] >= floor[0] and counts["segmented"] >= floor[1], counts


def test_named_errors_share_one_base():
    assert issubclass(ImageError, EscnetError) and issubclass(VocabularyError, EscnetError)
