from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from escnet.data.images import ImageError, load_image, resize_labels, resize_rgb, working_size


def _check_rgb(array, height, width):
    assert array.dtype == np.uint8 and array.shape == (height, width, 3)


def test_rgb_file_round_trip(tmp_path: Path):
    rgb = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_image(tmp_path / "a.png"), rgb)
    np.testing.assert_array_equal(load_image(str(tmp_path / "a.png")), rgb)


def test_pil_and_array_inputs_agree():
    rgb = np.random.default_rng(1).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    np.testing.assert_array_equal(load_image(Image.fromarray(rgb)), rgb)
    np.testing.assert_array_equal(load_image(rgb), rgb)


def test_rgba_is_composited_over_white():
    rgba = np.array([[[255, 0, 0, 255], [255, 0, 0, 0], [0, 0, 255, 128]]], dtype=np.uint8)
    out = load_image(Image.fromarray(rgba, "RGBA"))
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(out[0, 1], [255, 255, 255])
    np.testing.assert_array_equal(out[0, 2], [127, 127, 255])
    np.testing.assert_array_equal(load_image(rgba), out)


def test_grey_palette_and_bilevel_modes():
    grey = np.array([[0, 100, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(load_image(Image.fromarray(grey, "L"))[0, :, 0], [0, 100, 255])
    np.testing.assert_array_equal(load_image(Image.fromarray(grey, "L"))[..., 2], grey)
    pal = Image.fromarray(np.array([[0, 1]], dtype=np.uint8), "P")
    pal.putpalette([10, 20, 30, 40, 50, 60] + [0] * 762)
    np.testing.assert_array_equal(load_image(pal)[0], [[10, 20, 30], [40, 50, 60]])
    bilevel = Image.fromarray(np.array([[0, 255]], dtype=np.uint8)).convert("1")
    np.testing.assert_array_equal(load_image(bilevel)[0, :, 0], [0, 255])


def test_palette_with_transparency_goes_over_white():
    pal = Image.fromarray(np.array([[0, 1]], dtype=np.uint8), "P")
    pal.putpalette([10, 20, 30, 40, 50, 60] + [0] * 762)
    pal.info["transparency"] = 0
    np.testing.assert_array_equal(load_image(pal)[0], [[255, 255, 255], [40, 50, 60]])


def test_sixteen_bit_grey_uses_the_full_range(tmp_path: Path):
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as deep:
        assert deep.mode.startswith("I")
    np.testing.assert_array_equal(load_image(tmp_path / "deep.png")[0, :, 1], [0, 100, 255])
    np.testing.assert_array_equal(load_image(values)[0, :, 1], [0, 100, 255])


def test_int32_and_float_modes_are_stretched():
    out = load_image(Image.fromarray(np.array([[-5, 0, 5]], dtype=np.int32), "I"))
    np.testing.assert_array_equal(out[0, :, 0], [0, 128, 255])
    out = load_image(Image.fromarray(np.array([[2.0, 3.0]], dtype=np.float32), "F"))
    np.testing.assert_array_equal(out[0, :, 0], [0, 255])


def test_cmyk_and_ycbcr_convert(tmp_path: Path):
    cmyk = Image.new("CMYK", (3, 2), (0, 255, 255, 0))  # no black ink, full magenta + yellow = red
    _check_rgb(load_image(cmyk), 2, 3)
    np.testing.assert_array_equal(load_image(cmyk)[0, 0], [255, 0, 0])
    cmyk.save(tmp_path / "c.jpg")
    assert load_image(tmp_path / "c.jpg")[0, 0, 0] > 200
    ycc = Image.new("RGB", (2, 2), (0, 200, 0)).convert("YCbCr")
    assert abs(int(load_image(ycc)[0, 0, 1]) - 200) <= 2


def test_exif_orientation_is_applied(tmp_path: Path):
    rgb = np.zeros((10, 20, 3), dtype=np.uint8)  # 20 wide, 10 high, red top-left corner
    rgb[0, 0] = [255, 0, 0]
    image = Image.fromarray(rgb)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    image.save(tmp_path / "rotated.png", exif=exif)
    out = load_image(tmp_path / "rotated.png")
    _check_rgb(out, 20, 10)
    np.testing.assert_array_equal(out[0, -1], [255, 0, 0])  # top-left went to top-right


@pytest.mark.parametrize("array", [
    np.full((3, 4), 7, np.uint8), np.full((3, 4, 1), 7, np.uint8), np.full((3, 4), 7, np.int64),
])
def test_grey_arrays(array):
    out = load_image(array)
    _check_rgb(out, 3, 4)
    assert (out == 7).all()


def test_bool_and_float_arrays():
    np.testing.assert_array_equal(load_image(np.array([[True, False]]))[0, :, 0], [255, 0])
    np.testing.assert_array_equal(load_image(np.array([[0.0, 0.5, 1.0]]))[0, :, 0], [0, 128, 255])


@pytest.mark.parametrize("array, message", [
    (np.zeros((3, 32, 32), np.uint8), r"looks channel-first \(C, H, W\)"),
    (np.zeros((5, 6, 2), np.uint8), r"expected \(H, W\), \(H, W, 1\), \(H, W, 3\) or \(H, W, 4\)"),
    (np.zeros((0, 4, 3), np.uint8), "the image is empty"),
    (np.full((2, 2), 300, np.int32), "integer values must lie in 0..255"),
    (np.full((2, 2), 200.0), r"floating-point values must lie in \[0, 1\] \(found 200..200\)"),
    (np.array([[np.nan]]), "contains NaN or infinite values"),
    (np.zeros((2, 2), np.complex64), "unsupported dtype"),
])
def test_bad_arrays(array, message):
    with pytest.raises(ImageError, match=message):
        load_image(array)


def test_bad_input_type():
    with pytest.raises(ImageError, match="expected a file path, a PIL image or a numpy array, got list"):
        load_image([[0, 1]])


def test_missing_file_and_directory(tmp_path: Path):
    with pytest.raises(ImageError, match=r"nope.png: no such file"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="is a directory, not an image file"):
        load_image(tmp_path)


def test_non_image_file(tmp_path: Path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture")
    with pytest.raises(ImageError, match=r"notes.jpg: not an image file \(format not recognised\)"):
        load_image(path)


def test_truncated_file(tmp_path: Path):
    rgb = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"cut.jpg: corrupt or truncated image"):
        load_image(tmp_path / "cut.jpg")


def test_decompression_bomb_is_reported(tmp_path: Path, monkeypatch):
    Image.new("RGB", (100, 100)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageError, match="big.png: image too large to decode safely"):
        load_image(tmp_path / "big.png")


def test_working_size_policy():
    assert working_size(300, 200) == (300, 200)
    assert working_size(5000, 3000) == (4096, 2458)
    assert working_size(10, 20000, max_side=100) == (1, 100)


def test_resize_rgb_and_nearest_labels():
    rgb = np.zeros((40, 20, 3), np.uint8)
    assert resize_rgb(rgb, (10, 5)).shape == (10, 5, 3)
    labels = np.array([[0, 1], [2, 3]])
    expected = np.repeat(np.repeat(labels, 3, axis=0), 2, axis=1)
    np.testing.assert_array_equal(resize_labels(labels, (6, 4)), expected)


ALL_MODES = ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "F", "LA", "La", "PA", "RGBX", "RGBa",
             "I;16", "I;16L", "I;16B", "I;16N"]


@pytest.mark.parametrize("mode", ALL_MODES)
def test_every_pil_mode_reads_or_gives_an_image_error(mode):
    from escnet.data.images import ImageError, load_image

    image = Image.new(mode, (5, 4))
    out = load_image(image)
    assert out.dtype == np.uint8 and out.shape == (4, 5, 3)
    with pytest.raises(ImageError, match="empty"):
        load_image(Image.new(mode, (0, 0)))


def test_premultiplied_grey_alpha_goes_over_white():
    from escnet.data.images import load_image

    la = Image.merge("La", [Image.new("L", (2, 1), 40), Image.new("L", (2, 1), 128)])
    assert load_image(la)[0, 0].tolist() == [40 + 255 - 128] * 3


def test_closed_image_and_mutated_files_give_image_errors(tmp_path):
    import io
    import random

    from escnet.data.images import ImageError, load_image

    closed = Image.new("RGB", (4, 4))
    closed.close()
    with pytest.raises(ImageError, match="closed"):
        load_image(closed)
    rng = random.Random(0)
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "DDS", "TGA", "ICO", "PPM"):
        buf = io.BytesIO()
        Image.new("RGB", (40, 30), (10, 200, 30)).save(buf, format=fmt)
        data = buf.getvalue()
        variants = [data[:len(data) // 2], data[:20], data[:-3]]
        for _ in range(20):
            mutated = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            variants.append(bytes(mutated))
        for i, variant in enumerate(variants):
            path = tmp_path / f"{fmt}_{i}.{fmt.lower()}"
            path.write_bytes(variant)
            try:
                out = load_image(path)
            except ImageError as exc:
                assert str(path) in str(exc)
            else:
                assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
