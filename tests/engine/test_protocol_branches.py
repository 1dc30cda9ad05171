"""Every branch of the test-time protocol (escnet/inference/protocol.py and the mapper's
ResizeShortestEdge size, escnet/data/transforms.py) reached by a case with a known answer.
The full official replay of both protocols is tests/engine/test_protocol.py (its SHAPES include
two images with aspect > 4, which take the long-side cap end to end)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from escnet.inference import protocol
from escnet.inference.protocol import _resize_image, check_resize, mapper_size, model_logits, native_logits


def detectron2_output_shape(oldh, oldw, short_edge_length, max_size):
    """detectron2 ResizeShortestEdge.get_output_shape, transcribed."""
    h, w = oldh, oldw
    size = short_edge_length * 1.0
    scale = size / min(h, w)
    if h < w:
        newh, neww = size, scale * w
    else:
        newh, neww = scale * h, size
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh = newh * scale
        neww = neww * scale
    return int(newh + 0.5), int(neww + 0.5)


# (H, W) -> which branches: portrait / landscape / square x long side capped or not
CASES = {(333, 500): ("landscape", False), (500, 333): ("portrait", False), (384, 384): ("square", False),
         (60, 400): ("landscape", True), (400, 60): ("portrait", True), (100, 401): ("landscape", True),
         (100, 399): ("landscape", False), (1, 5): ("landscape", True), (3000, 700): ("portrait", True)}


@pytest.mark.parametrize("shape", list(CASES), ids=[f"{h}x{w}" for h, w in CASES])
def test_mapper_size_matches_detectron2_in_every_branch(shape):
    h, w = shape
    expected = detectron2_output_shape(h, w, 640, 2560)
    assert mapper_size(h, w, 384) == expected
    capped = max(expected) == 2560 and min(expected) < 640
    assert capped == CASES[shape][1]
    # crop 96 scales both sizes with it: S = 96 + int(96 * 0.667) = 160, cap 4 S = 640
    assert mapper_size(h, w, 96) == detectron2_output_shape(h, w, 160, 640)


def test_long_side_cap_values():
    assert mapper_size(60, 400, 384) == (384, 2560)  # 640 x 4266.7 scaled down to a long side of 2560
    assert mapper_size(400, 60, 384) == (2560, 384)
    assert mapper_size(100, 401, 384) == (638, 2560)  # just over 4:1
    assert mapper_size(100, 399, 384) == (640, 2554)  # just under: no cap


def test_unknown_resize_mode_is_named():
    assert check_resize("official") == "official" and check_resize("antialias") == "antialias"
    with pytest.raises(ValueError, match="unknown resize 'nearest'"):
        check_resize("nearest")


def test_image_resize_antialiases_only_when_it_shrinks():
    image = torch.rand(1, 3, 20, 30) * 255
    assert _resize_image(image, (20, 30), "antialias") is image  # same size: untouched
    up = F.interpolate(image, size=(40, 60), mode="bilinear", align_corners=False)
    torch.testing.assert_close(_resize_image(image, (40, 60), "antialias"), up, atol=0, rtol=0)
    down = _resize_image(image, (10, 15), "antialias")
    torch.testing.assert_close(down, F.interpolate(image, size=(10, 15), mode="bilinear", antialias=True))
    assert (down - _resize_image(image, (10, 15), "official")).abs().max() > 1e-3
    # one side shrinks, the other grows: still antialiased
    mixed = _resize_image(image, (10, 60), "antialias")
    torch.testing.assert_close(mixed, F.interpolate(image, size=(10, 60), mode="bilinear", antialias=True))


class Recorder(torch.nn.Module):
    """forward(views, text, class_chunk, **options) -> fixed logits at the view size; records the call."""

    def __init__(self, clip_side, patch):
        super().__init__()
        self.cfg = SimpleNamespace(clip=SimpleNamespace(image_size=clip_side, patch_size=patch))
        self.calls = []

    def forward(self, views, text, class_chunk=None, **options):
        self.calls.append(dict(class_chunk=class_chunk, **options))
        gen = torch.Generator().manual_seed(0)
        return torch.randn(views.shape[0], text.shape[0], *views.shape[-2:], generator=gen)


def test_model_logits_passes_class_truncation_only_when_given():
    model = Recorder(96, 16)
    views, text = torch.zeros(1, 3, 24, 24), torch.zeros(2, 4)
    model_logits(model, views, text, 3)
    model_logits(model, views, text, None, class_truncation=None)
    model_logits(model, views, text, None, class_truncation=5)
    assert model.calls == [{"class_chunk": 3}, {"class_chunk": None, "class_truncation": None},
                           {"class_chunk": None, "class_truncation": 5}]


def test_native_logits_at_the_native_side_are_the_logits():
    """A view whose side already is the native 4 x grid (96 for a 96 px, patch-4 CLIP) needs no inverse."""
    model = Recorder(96, 4)
    views, text = torch.zeros(2, 3, 96, 96), torch.zeros(3, 4)
    expected = model(views, text)
    torch.testing.assert_close(native_logits(model, views, text, None), expected, atol=0, rtol=0)
    assert protocol.NATIVE_UPSAMPLING * (96 // 4) == 96


class NativeModel(torch.nn.Module):
    """forward(views, text, upsample=False) -> fixed native logits (N, T, n, n), n = 16 (a 32 px, patch-8 CLIP)."""

    def __init__(self):
        super().__init__()
        self.cfg = SimpleNamespace(pixel_mean=(120.0, 110.0, 100.0), crop_size=32,
                                   clip=SimpleNamespace(image_size=32, patch_size=8))

    def forward(self, views, text, class_chunk=None, upsample=True):
        gen = torch.Generator().manual_seed(1)
        logits = 3 * torch.randn(views.shape[0], text.shape[0], 16, 16, generator=gen)
        return logits if not upsample else F.interpolate(logits, size=views.shape[-2:], mode="bilinear")


@pytest.mark.parametrize("shape", [(10, 40), (40, 10), (12, 12), (64, 64)])
def test_single_view_crops_the_native_map_with_the_image_size(shape):
    """sem_seg_postprocess crops [:h', :w'] of the native n x n map (rule 3): rows and columns."""
    h, w = shape
    model, text = NativeModel(), torch.zeros(2, 4)
    probs = protocol.predict_single(model, torch.full((3, h, w), 50.0), text)
    native = model(torch.zeros(1, 3, 32, 32), text, upsample=False).sigmoid()[0]
    assert probs.shape == (2, min(h, 16), min(w, 16))
    torch.testing.assert_close(probs, native[:, :h, :w], atol=0, rtol=0)


def test_sliding_probabilities_resize_logits_before_the_sigmoid():
    """A model may return logits at another size than the view: the official order is resize the
    logits to the crop, then sigmoid (the two orders differ wherever the logits are not linear)."""
    class LowResolution(NativeModel):
        def forward(self, views, text, class_chunk=None):
            return super().forward(views, text, class_chunk, upsample=False)  # 16 x 16 for 48 x 48 views

    model, text = LowResolution(), torch.zeros(2, 4)
    views = torch.zeros(3, 3, 48, 48)
    probs = protocol.sliding_probabilities(model, views, text, None, class_truncation=protocol.FROM_CONFIG)
    logits = model(views, text)
    assert logits.shape[-2:] == (16, 16)
    expected = F.interpolate(logits, size=(48, 48), mode="bilinear", align_corners=False).sigmoid()
    torch.testing.assert_close(probs, expected, atol=1e-7, rtol=0)
    wrong = F.interpolate(logits.sigmoid(), size=(48, 48), mode="bilinear", align_corners=False)
    assert (wrong - expected).abs().max() > 1e-3
