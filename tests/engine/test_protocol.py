"""escnet's inference protocol against CAT-Seg's official evaluation, replayed independently.

`official_*` below transcribe, line by line, the official code's logic (cvlab-kaist/CAT-Seg
cat_seg/cat_seg_model.py @ 3c8d854: `CATSeg.forward` in eval mode and `inference_sliding_window`;
detectron2: `ResizeShortestEdge.get_output_shape`, `ResizeTransform.apply_image`,
`ImageList.from_tensors`, `sem_seg_postprocess`). They use none of escnet's helpers: the only thing
they share with escnet is the stub's `head` (CAT-Seg's `sem_seg_head`: normalised CLIP-sized views
-> logits at the native 4 x grid resolution), whose output is a known function of image and position.
"""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from escnet.inference.segmenter import Segmenter
from escnet.inference.protocol import native_logits, predict_single, predict_sliding, sliding_geometry

CLIP_PIXEL_MEAN = [122.7709383, 116.7460125, 104.09373615]  # CAT-Seg cfg.MODEL.CLIP_PIXEL_MEAN
CLIP_PIXEL_STD = [68.5005327, 66.6321579, 70.3231630]  # cfg.MODEL.CLIP_PIXEL_STD
NAMES = ["red", "green", "blue", "sky"]


class StubModel(nn.Module):
    """escnet's model interface around a known head: normalise, resize to CLIP's side, head, then
    resize the native logits to the view (what ESCNet and CATSeg do)."""

    def __init__(self, clip_side=384, patch=16, crop=384):
        super().__init__()
        self.cfg = SimpleNamespace(arch="stub", crop_size=crop, pixel_mean=tuple(CLIP_PIXEL_MEAN),
                                   clip=SimpleNamespace(image_size=clip_side, patch_size=patch))
        self.register_buffer("pixel_mean", torch.tensor(CLIP_PIXEL_MEAN).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(CLIP_PIXEL_STD).view(1, 3, 1, 1))
        self.native = 4 * (clip_side // patch)
        generator = torch.Generator().manual_seed(0)
        self.text_table = torch.randn(len(NAMES), 3, generator=generator)
        self.freqs = torch.rand(len(NAMES), 2, generator=generator) * 0.3 + 0.05
        self.calls = 0

    def encode_text(self, names):
        return torch.stack([self.text_table[NAMES.index(n)] for n in names])

    def head(self, clip_images, text):
        """(N, 3, r, r) normalised -> logits (N, T, n, n): colour match + a per-class position wave."""
        pooled = F.adaptive_avg_pool2d(clip_images, self.native)
        ys = torch.arange(self.native, dtype=torch.float32)
        wave = torch.sin(self.freqs[:, 0, None, None] * ys[:, None] + self.freqs[:, 1, None, None] * ys[None, :] * 2)
        return 2 * torch.einsum("nchw,tc->nthw", pooled, text) + 1.5 * wave[: text.shape[0]]

    def forward(self, images, text, class_chunk=None):
        self.calls += 1
        x = (images - self.pixel_mean) / self.pixel_std
        side = self.cfg.clip.image_size
        if tuple(x.shape[-2:]) != (side, side):
            x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
        return F.interpolate(self.head(x, text), size=images.shape[-2:], mode="bilinear", align_corners=False)


class NativeStubModel(StubModel):
    """The same model offering its native logits through forward(..., upsample=False)."""

    def forward(self, images, text, class_chunk=None, upsample=True):
        logits = super().forward(images, text, class_chunk)
        if upsample:
            return logits
        x = (images - self.pixel_mean) / self.pixel_std
        side = self.cfg.clip.image_size
        if tuple(x.shape[-2:]) != (side, side):
            x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
        return self.head(x, text)


# ---------------------------------------------------------------------------------------------
# The official pipeline, transcribed


def official_get_output_shape(oldh, oldw, short_edge_length, max_size):
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
    neww = int(neww + 0.5)
    newh = int(newh + 0.5)
    return (newh, neww)


def official_mapper(image):
    """DatasetMapper(is_train=False): ResizeShortestEdge(640, 2560, "choice") -> ResizeTransform."""
    newh, neww = official_get_output_shape(image.shape[0], image.shape[1], 640, 2560)
    pil_image = Image.fromarray(image)
    pil_image = pil_image.resize((neww, newh), Image.BILINEAR)
    ret = np.asarray(pil_image)
    return {"image": torch.as_tensor(np.ascontiguousarray(ret.transpose(2, 0, 1))),
            "height": image.shape[0], "width": image.shape[1]}


def official_sem_seg_postprocess(result, img_size, output_height, output_width):
    result = result[:, : img_size[0], : img_size[1]].expand(1, -1, -1, -1)
    return F.interpolate(result, size=(output_height, output_width), mode="bilinear", align_corners=False)[0]


def official_image_list(tensors, size_divisibility, pad_value=0.0):
    """ImageList.from_tensors for one image: (padded batch, image_sizes)."""
    image_size = (tensors[0].shape[-2], tensors[0].shape[-1])
    max_size = torch.tensor(image_size)
    stride = size_divisibility
    max_size = (max_size + (stride - 1)).div(stride, rounding_mode="floor") * stride
    u0 = int(max_size[-1]) - image_size[1]
    u1 = int(max_size[-2]) - image_size[0]
    batched = F.pad(tensors[0], [0, u0, 0, u1], value=pad_value).unsqueeze_(0)
    return batched, [image_size]


def official_forward(stub, batched_inputs, text):
    """CATSeg.forward, eval mode, TEST.SLIDING_WINDOW False (size_divisibility = 32)."""
    clip_pixel_mean = torch.Tensor(CLIP_PIXEL_MEAN).view(-1, 1, 1)
    clip_pixel_std = torch.Tensor(CLIP_PIXEL_STD).view(-1, 1, 1)
    clip_resolution = (stub.cfg.clip.image_size, stub.cfg.clip.image_size)
    images = [x["image"] for x in batched_inputs]
    clip_images = [(x - clip_pixel_mean) / clip_pixel_std for x in images]
    clip_tensor, image_sizes = official_image_list(clip_images, 32)
    clip_images_resized = F.interpolate(clip_tensor, size=clip_resolution, mode="bilinear", align_corners=False)
    outputs = stub.head(clip_images_resized, text)
    outputs = outputs.sigmoid()
    image_size = image_sizes[0]
    height = batched_inputs[0].get("height", image_size[0])
    width = batched_inputs[0].get("width", image_size[1])
    return official_sem_seg_postprocess(outputs[0], image_size, height, width)


def official_sliding_window(stub, batched_inputs, text, kernel=384, overlap=0.333, out_res=(640, 640)):
    """CATSeg.inference_sliding_window."""
    out_res = list(out_res)
    clip_pixel_mean = torch.Tensor(CLIP_PIXEL_MEAN).view(-1, 1, 1)
    clip_pixel_std = torch.Tensor(CLIP_PIXEL_STD).view(-1, 1, 1)
    clip_resolution = (stub.cfg.clip.image_size, stub.cfg.clip.image_size)
    images = [x["image"].to(dtype=torch.float32) for x in batched_inputs]
    stride = int(kernel * (1 - overlap))
    unfold = nn.Unfold(kernel_size=kernel, stride=stride)
    fold = nn.Fold(out_res, kernel_size=kernel, stride=stride)

    image = F.interpolate(images[0].unsqueeze(0), size=out_res, mode="bilinear", align_corners=False).squeeze()
    image = unfold(image).reshape(3, kernel, kernel, -1).permute(3, 0, 1, 2)  # "(C H W) L -> L C H W"
    global_image = F.interpolate(images[0].unsqueeze(0), size=(kernel, kernel), mode="bilinear", align_corners=False)
    image = torch.cat((image, global_image), dim=0)

    clip_images = (image - clip_pixel_mean) / clip_pixel_std
    clip_images = F.interpolate(clip_images, size=clip_resolution, mode="bilinear", align_corners=False)
    outputs = stub.head(clip_images, text)

    outputs = F.interpolate(outputs, size=kernel, mode="bilinear", align_corners=False)
    outputs = outputs.sigmoid()

    global_output = outputs[-1:]
    global_output = F.interpolate(global_output, size=out_res, mode="bilinear", align_corners=False)
    outputs = outputs[:-1]
    outputs = fold(outputs.flatten(1).T) / fold(unfold(torch.ones([1] + out_res)))
    outputs = (outputs + global_output) / 2.0

    height = batched_inputs[0].get("height", out_res[0])
    width = batched_inputs[0].get("width", out_res[1])
    return official_sem_seg_postprocess(outputs[0], out_res, height, width)


def _image(height, width, seed=0):
    """A photo-like uint8 image: smooth colour fields plus noise, so every resize step matters."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width] / max(height, width)
    fields = [np.sin(6 * ys + 2 * c) * np.cos(9 * xs - c) for c in range(3)]
    smooth = (np.stack(fields, -1) + 1) * 110
    return np.clip(smooth + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)


def _compare(stub, rgb, protocol):
    text = stub.encode_text(NAMES)
    inputs = [official_mapper(rgb)]
    with torch.no_grad():
        if protocol == "sliding":
            reference = official_sliding_window(stub, inputs, text)
        else:
            reference = official_forward(stub, inputs, text)
    segmenter = Segmenter(stub, device="cpu", protocol=protocol, memory_budget_mb=None)
    result = segmenter.segment(rgb, NAMES, return_probs=True)
    assert result.info["resize"] == "official" and result.info["protocol"] == protocol
    assert result.probs.shape == (len(NAMES), *rgb.shape[:2])
    np.testing.assert_allclose(result.probs, reference.numpy(), atol=1e-5, rtol=0)
    assert np.array_equal(result.labels, reference.argmax(0).numpy())


# (60, 400), (400, 60): aspect > 4, so the mapper's long-side cap (2560 = 4 x 640) applies
SHAPES = [(384, 384), (333, 500), (500, 333), (1000, 750), (97, 61), (60, 400), (400, 60)]


@pytest.mark.parametrize("protocol", ["sliding", "single"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{h}x{w}" for h, w in SHAPES])
def test_segmenter_reproduces_the_official_pipeline(shape, protocol):
    _compare(StubModel(), _image(*shape), protocol)


@pytest.mark.parametrize("protocol", ["sliding", "single"])
def test_vit_l_sizes_clip_input_336_with_384_crops(protocol):
    """ViT-L/14: CLIP runs at 336 (clip_resolution) while the sliding window keeps 384 crops."""
    _compare(StubModel(clip_side=336, patch=14), _image(333, 500, seed=1), protocol)


@pytest.mark.parametrize("shape", [(333, 500), (97, 61)])
def test_single_view_with_a_model_that_returns_native_logits(shape):
    _compare(NativeStubModel(), _image(*shape, seed=2), "single")


def test_native_logits_are_recovered_from_the_upsampled_ones():
    stub, native = StubModel(), NativeStubModel()
    views = torch.rand(2, 3, 384, 384) * 255
    text = stub.encode_text(NAMES)
    expected = native(views, text, upsample=False)
    torch.testing.assert_close(native_logits(stub, views, text, None), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(native_logits(native, views, text, None), expected, atol=0, rtol=0)


@pytest.mark.parametrize("arch", ["catseg", "escnet"])
def test_native_logits_of_real_models(arch):
    """The recovery on escnet's models: the last module before their final resize (CAT-Seg's
    aggregator, ESC-Net's decoder) outputs the native logits."""
    from escnet.models.factory import create_model

    torch.manual_seed(0)
    model = create_model(arch, "tiny", **({"class_truncation": None} if arch == "catseg" else {})).eval()
    captured = []
    last = model.transformer if arch == "catseg" else model.decoder
    last.register_forward_hook(lambda module, args, out: captured.append(out))
    views = torch.rand(1, 3, 96, 96) * 255
    text = torch.nn.functional.normalize(torch.randn(3, model.cfg.clip.embed_dim), dim=-1)
    with torch.no_grad():
        recovered = native_logits(model, views, text, None)
    assert recovered.shape == captured[0].shape == (1, 3, 24, 24)
    torch.testing.assert_close(recovered, captured[0], atol=1e-5, rtol=0)


def test_single_view_pads_with_the_mean_colour_and_crops_with_the_image_size():
    stub = NativeStubModel(clip_side=32, patch=8)  # native 16 x 16
    seen = []
    stub.head = lambda x, text: (seen.append(x), torch.zeros(x.shape[0], text.shape[0], 16, 16))[1]
    probs = predict_single(stub, torch.full((3, 10, 40), 200.0), torch.zeros(2, 3))
    # 10 x 40 pads to 32 x 64; the padding is exactly 0 after normalisation (CLIP's mean colour)
    assert (seen[0][..., 20:, :] == 0).all()
    assert probs.shape == (2, 10, 16) and torch.all(probs == 0.5)  # crop [:10, :40] of a 16 x 16 map


def test_antialias_mode_is_recorded_and_changes_the_result():
    stub, rgb = StubModel(), _image(333, 500, seed=3)
    official = Segmenter(stub, device="cpu").segment(rgb, NAMES, return_probs=True)
    smooth = Segmenter(stub, device="cpu", resize="antialias").segment(rgb, NAMES, return_probs=True)
    assert official.info["resize"] == "official" and smooth.info["resize"] == "antialias"
    difference = np.abs(official.probs - smooth.probs).max()
    assert 1e-4 < difference < 0.2
    with pytest.raises(ValueError, match="unknown resize 'bicubic'"):
        Segmenter(stub, device="cpu", resize="bicubic")


def test_sliding_geometry_matches_catseg():
    assert sliding_geometry(384) == (640, 256, (0, 256))
    assert sliding_geometry(96) == (160, 64, (0, 64))


class ViewConstantModel(torch.nn.Module):
    """Stub whose probability for class 0 is (v + 1) / 10 on the whole of view v, and whose
    class 1 reproduces the red channel (probability = red / 255), so the protocol's crop
    placement, averaging and global view can be checked against known numbers."""

    def __init__(self, crop=48):
        super().__init__()
        self.cfg = SimpleNamespace(arch="stub", crop_size=crop)
        self.views = None

    def forward(self, images, text, class_chunk=None):
        self.views = images.clone()
        n, _, h, w = images.shape
        p0 = (torch.arange(n, dtype=torch.float32) + 1) / 10
        p1 = (images[:, 0] / 255).clamp(1e-6, 1 - 1e-6)
        return torch.stack([torch.logit(p0)[:, None, None].expand(n, h, w), torch.logit(p1)], dim=1)


def test_sliding_window_crops_and_averaging():
    crop = 48
    side, stride, _ = sliding_geometry(crop)  # 80, 32
    model = ViewConstantModel(crop)
    image = torch.rand(3, side, side) * 255
    probs = predict_sliding(model, image, torch.zeros(2, 4))
    assert probs.shape == (2, side, side)

    # The model saw the four crops in row-major order, then the whole image at crop size.
    offsets = [(0, 0), (0, stride), (stride, 0), (stride, stride)]
    for k, (y, x) in enumerate(offsets):
        torch.testing.assert_close(model.views[k], image[:, y:y + crop, x:x + crop])
    global_view = F.interpolate(image[None], size=(crop, crop), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(model.views[4], global_view)

    # Class 0: view v has probability (v + 1) / 10; the global view (0.5) is averaged in at half weight.
    p = [0.1, 0.2, 0.3, 0.4]
    expected = {
        (0, 0): p[0], (0, side - 1): p[1], (side - 1, 0): p[2], (side - 1, side - 1): p[3],
        (0, stride): (p[0] + p[1]) / 2, (stride, 0): (p[0] + p[2]) / 2,
        (stride, stride): sum(p) / 4, (crop - 1, crop - 1): sum(p) / 4, (crop, crop): p[3],
        (stride - 1, stride): (p[0] + p[1]) / 2,
    }
    for (y, x), crops_mean in expected.items():
        assert probs[0, y, x].item() == pytest.approx((crops_mean + 0.5) / 2, abs=1e-6), (y, x)

    # Class 1 reproduces the red channel: every crop agrees with the image wherever it lies.
    global_red = F.interpolate(global_view[None, :1] / 255, size=(side, side), mode="bilinear", align_corners=False)
    global_red = global_red[0, 0]
    torch.testing.assert_close(probs[1], (image[0] / 255 + global_red) / 2, atol=1e-5, rtol=0)


def test_sliding_window_on_a_wide_image_uses_the_short_side():
    crop = 48
    side, _, _ = sliding_geometry(crop)
    model = ViewConstantModel(crop)
    image = torch.rand(3, side, 2 * side) * 255  # short side already equals the window side
    predict_sliding(model, image, torch.zeros(2, 4))
    square = F.interpolate(image[None], size=(side, side), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(model.views[0], square[:, :crop, :crop])
    global_view = F.interpolate(image[None], size=(crop, crop), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(model.views[4], global_view)
