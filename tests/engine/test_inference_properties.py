"""Property-based tests (hypothesis): any image and any vocabulary through `Segmenter.segment` and
`escnet segment` gives a result of the right shape or one of the package's named errors.
Bounded (few examples, a 48 px random ESC-Net) to keep CI fast; tools/fuzz.py is the long run."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from escnet.cli import main
from escnet.data.images import ImageError, load_image
from escnet.data.vocab import VocabularyError
from escnet.inference.segmenter import Segmenter
from escnet.errors import EscnetError

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
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
vocabularies = st.one_of(st.lists(names, min_size=0, max_size=5), names.map(lambda s: "cat, " + s))
shapes = st.tuples(st.integers(0, 40), st.integers(0, 40)).flatmap(
    lambda hw: st.sampled_from([hw, (*hw, 1), (*hw, 3), (*hw, 4)]))
dtypes = st.sampled_from([np.uint8, np.uint16, np.int32, np.bool_, np.float32, np.float64])
arrays = st.tuples(dtypes, shapes).flatmap(lambda ds: hnp.arrays(ds[0], ds[1], elements=(
    st.floats(0, 1, width=32) if np.issubdtype(ds[0], np.floating) else
    st.booleans() if ds[0] == np.bool_ else st.integers(0, 255 if ds[0] != np.uint16 else 65535))))
pil_images = st.tuples(st.sampled_from(MODES), st.integers(0, 30), st.integers(0, 30), st.integers(0, 255)).map(
    lambda m: Image.new(m[0], (m[1], m[2]), m[3] if m[0] not in ("RGB", "RGBA", "CMYK") else (m[3],) * len(m[0])))


def _check(segmenter, image, vocabulary):
    try:
        result = segmenter.segment(image, vocabulary)
    except (ImageError, VocabularyError):
        return
    height, width = load_image(image).shape[:2]
    assert result.labels.shape == (height, width)
    assert 0 <= int(result.labels.min()) and int(result.labels.max()) < len(result.classes)
    assert all("\ufeff" not in c and "  " not in c for c in result.classes)


@FAST
@given(image=arrays, vocabulary=vocabularies)
def test_any_array_and_vocabulary(segmenter, image, vocabulary):
    _check(segmenter, image, vocabulary)


@FAST
@given(image=pil_images, vocabulary=vocabularies)
def test_any_pil_image(segmenter, image, vocabulary):
    _check(segmenter, image, vocabulary)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(image=pil_images, fmt=st.sampled_from(["PNG", "TIFF", "GIF", "BMP"]), cut=st.integers(0, 400),
       classes=st.text(st.sampled_from(list("abc ,;\x1b")), min_size=0, max_size=10))
def test_cli_exit_status_and_one_line_errors(tmp_path_factory, capsys, image, fmt, cut, classes):
    from escnet.lifecycle import save_pretrained
    from escnet.models.factory import create_model

    folder = tmp_path_factory.mktemp("cli")
    model_dir = folder / "model"
    if not model_dir.exists():
        torch.manual_seed(0)
        save_pretrained(create_model("escnet", "tiny"), model_dir)
    path = folder / f"in.{fmt.lower()}"
    try:
        image.convert("RGB").save(path, format=fmt)
    except (ValueError, OSError):
        return
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - cut] if cut < len(data) else data)
    code = main(["segment", str(path), "--classes", classes, "--model", str(model_dir), "--out", str(folder / "out"),
                 "--device", "cpu", "--protocol", "single"])
    err = capsys.readouterr().err
    assert code in (0, 1, 2) and "Traceback" not in err and "\x1b" not in err
    if code == 0:
        assert (folder / "out" / "in_labels.png").is_file()
    else:
        assert "error" in err


def test_named_errors_share_one_base():
    assert issubclass(ImageError, EscnetError) and issubclass(VocabularyError, EscnetError)
