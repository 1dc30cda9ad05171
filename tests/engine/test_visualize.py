from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from escnet.inference.visualize import MIN_DISPLAY_SIDE, colorize, label_image, overlay, palette


def test_palette_is_deterministic_and_distinct():
    colours = palette(300)
    assert colours.shape == (300, 3) and colours.dtype == np.uint8
    np.testing.assert_array_equal(colours[:20], palette(20))
    assert len({tuple(c) for c in colours[:150]}) == 150


def test_colorize_uses_the_palette():
    labels = np.array([[0, 2], [1, 2]])
    np.testing.assert_array_equal(colorize(labels, 3)[1, 0], palette(3)[1])


def test_label_png_keeps_ids(tmp_path: Path):
    labels = np.random.default_rng(0).integers(0, 5, (9, 13))
    label_image(labels, 5).save(tmp_path / "small.png")
    with Image.open(tmp_path / "small.png") as reread:
        assert reread.mode == "P"
        np.testing.assert_array_equal(np.asarray(reread), labels)
        assert reread.getpalette()[3:6] == list(palette(5)[1])

    big = np.random.default_rng(1).integers(0, 847, (9, 13))
    label_image(big, 847).save(tmp_path / "big.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "big.png")), big)


def test_too_many_classes_for_png():
    with pytest.raises(ValueError, match="cannot store 70000 classes in a PNG label image"):
        label_image(np.zeros((2, 2), int), 70000)


def test_overlay_blends_and_adds_a_legend():
    image = np.full((400, 500, 3), 200, np.uint8)
    labels = np.zeros((400, 500), int)
    labels[:, 250:] = 2
    picture = overlay(image, labels, ["cat", "dog", "sky"], alpha=0.5)
    assert picture.height == 400 and picture.width > 500
    pixels = np.asarray(picture)
    expected = np.rint(0.5 * 200 + 0.5 * palette(3)[0].astype(float))
    np.testing.assert_array_equal(pixels[10, 10], expected)
    legend = pixels[:, 500:]
    assert (legend != 255).any()  # swatches and text were drawn
    # Only the two classes present get a swatch: look for their colours in the legend.
    colours = {tuple(c) for c in legend.reshape(-1, 3)}
    assert tuple(palette(3)[0]) in colours and tuple(palette(3)[2]) in colours
    assert tuple(palette(3)[1]) not in colours
    assert overlay(image, labels, ["cat", "dog", "sky"], legend=False).size == (500, 400)


def test_small_images_are_enlarged_for_display():
    picture = overlay(np.zeros((10, 20, 3), np.uint8), np.zeros((10, 20), int), ["cat"], legend=False)
    assert picture.width >= MIN_DISPLAY_SIDE and picture.width % 20 == 0


def test_long_legends_are_summarised():
    labels = np.arange(40 * 10).reshape(40, 10) % 40
    picture = overlay(np.zeros((40, 10, 3), np.uint8), labels, [f"class {i}" for i in range(40)])
    assert picture.height > MIN_DISPLAY_SIDE  # 24 rows + the "+ N more" line extend the canvas


def test_colour_names_are_drawn_in_their_colour():
    from escnet.data.synthetic import colour_of, vocabulary
    from escnet.inference.visualize import name_colour, palette_for

    names = ["background", "light yellow", "dark red", "sky", "Red", "dark blue", "light purple"]
    colours = palette_for(names).astype(int)
    assert colours[0].tolist() == [0, 0, 0]  # background is not tinted red
    r, g, b = colours[1]
    assert r > 200 and g > 200 and b < r - 20  # light yellow is yellow, not brown
    assert colours[2].tolist() == [139, 0, 0]  # CSS darkred
    assert colours[4].tolist() == [255, 0, 0]
    assert name_colour("sky") is None and colours[3].tolist() == palette(4)[3].tolist()
    for name in vocabulary().all[1:]:  # every synthetic class: the hue its name says
        drawn, true = name_colour(name).astype(float), colour_of(name).astype(float)
        assert np.argmax(drawn) == np.argmax(true) or np.abs(drawn - true).max() < 80, name
def test_legend_size_is_bounded_for_long_names():
    from escnet.inference.visualize import MAX_LEGEND_CHARS, shorten

    image = np.zeros((64, 64, 3), np.uint8)
    labels = np.zeros((64, 64), np.int64)
    labels[:, 32:] = 1
    short = overlay(image, labels, ["cat", "dog"])
    long = overlay(image, labels, ["x" * 39_990, "dog"])
    assert long.size[0] <= short.size[0] + 8 * MAX_LEGEND_CHARS and long.size[1] == short.size[1]
    assert shorten("y" * 100) == "y" * (MAX_LEGEND_CHARS - 1) + "\u2026" and shorten("cat") == "cat"
