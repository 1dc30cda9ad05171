"""Pictures of a segmentation: a class palette, label PNGs and a blended overlay with a legend.

Colours come from the class names where a name is a colour ("red", "light yellow", "dark blue",
any CSS colour name, optionally with a light/dark tone) and "background" is black, so that a
class is never drawn in a colour its name contradicts; other classes get distinct colours by id.

The legend uses Pillow's built-in default font, so no font file is needed. Overlays of small
images are enlarged (nearest neighbour, whole factors) until their long side reaches
`MIN_DISPLAY_SIDE`, otherwise a 40-pixel image would carry an illegible legend.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageColor, ImageDraw, ImageFont

MIN_DISPLAY_SIDE = 384
MAX_LEGEND_ROWS = 24
MAX_LEGEND_CHARS = 40  # longer class names are ellipsised, so the legend's size is bounded
_GOLDEN = 0.6180339887498949


def palette(num_classes: int) -> np.ndarray:
    """Distinct, deterministic colours (T, 3) uint8: hues step by the golden ratio, and
    saturation/brightness cycle so that neighbouring ids also differ in lightness."""
    ids = np.arange(num_classes)
    hue = (ids * _GOLDEN) % 1.0
    sat = np.array([0.85, 0.55])[ids % 2]
    val = np.array([0.95, 0.75, 0.55])[(ids // 2) % 3]
    sector = np.floor(hue * 6).astype(int) % 6
    frac = hue * 6 - np.floor(hue * 6)
    p, q, t = val * (1 - sat), val * (1 - frac * sat), val * (1 - (1 - frac) * sat)
    # Standard HSV -> RGB, vectorised: each sector picks its (r, g, b) from (v, t, p, q).
    table = np.stack([
        np.stack([val, t, p], -1), np.stack([q, val, p], -1), np.stack([p, val, t], -1),
        np.stack([p, q, val], -1), np.stack([t, p, val], -1), np.stack([val, p, q], -1),
    ])
    rgb = table[sector, ids]
    return np.rint(rgb * 255).astype(np.uint8).reshape(num_classes, 3)


_TONES = {"light": lambda rgb: rgb + (255 - rgb) * 0.45, "pale": lambda rgb: rgb + (255 - rgb) * 0.45,
          "dark": lambda rgb: rgb * 0.45, "deep": lambda rgb: rgb * 0.45}
_BACKGROUND_NAMES = {"background", "bg", "others", "other"}


def name_colour(name: str) -> np.ndarray | None:
    """RGB (3,) uint8 a class name calls for, or None: a CSS colour name ("light yellow" as
    "lightyellow"), else a tone word before one ("dark yellow" = yellow at 45%), and black
    for "background"."""
    words = name.lower().replace("-", " ").split()
    if not words:
        return None
    if " ".join(words) in _BACKGROUND_NAMES:
        return np.zeros(3, np.uint8)
    for candidate, tone in (("".join(words), None), ("".join(words[1:]), _TONES.get(words[0]))):
        if not candidate or (candidate != "".join(words) and tone is None):
            continue
        try:
            rgb = np.array(ImageColor.getrgb(candidate)[:3], np.float64)
        except ValueError:
            continue
        return np.rint(tone(rgb) if tone else rgb).astype(np.uint8)
    return None


def palette_for(names: list[str]) -> np.ndarray:
    """Colours (T, 3) uint8 for display names: the colour a name calls for (`name_colour`),
    else the id palette's."""
    colours = palette(len(names))
    for i, name in enumerate(names):
        colour = name_colour(name)
        if colour is not None:
            colours[i] = colour
    return colours


def colorize(labels: np.ndarray, num_classes: int, names: list[str] | None = None) -> np.ndarray:
    """Label map (H, W) -> colour image (H, W, 3) uint8 (names: colours from the names)."""
    return (palette_for(names) if names is not None else palette(num_classes))[labels]


def label_image(labels: np.ndarray, num_classes: int, names: list[str] | None = None) -> Image.Image:
    """A PNG-ready image whose pixel values are the class ids: a palette ("P") image for up to
    256 classes (viewers show the class colours), 16-bit grey ("I;16") for larger vocabularies."""
    if num_classes <= 256:
        image = Image.fromarray(labels.astype(np.uint8))
        colours = np.zeros((256, 3), np.uint8)
        colours[:num_classes] = palette_for(names) if names is not None else palette(num_classes)
        image.putpalette(colours.reshape(-1).tolist())  # turns the "L" image into "P", values kept
        return image
    if num_classes <= 65536:
        return Image.fromarray(labels.astype(np.uint16))
    raise ValueError(f"cannot store {num_classes} classes in a PNG label image (at most 65536)")


def shorten(name: str, limit: int = MAX_LEGEND_CHARS) -> str:
    """`name` cut to at most `limit` characters, ending in an ellipsis when it was cut."""
    return name if len(name) <= limit else name[: limit - 1] + "\u2026"


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed-size bitmap font
        return ImageFont.load_default()


def overlay(
    image: np.ndarray,
    labels: np.ndarray,
    names: list[str],
    alpha: float = 0.5,
    legend: bool = True,
) -> Image.Image:
    """Blend class colours over the image (alpha = colour weight) and add a legend panel to the
    right listing the classes present, largest first, with their pixel percentages.

    image (H, W, 3) uint8, labels (H, W) ints in [0, T), names: T display names.
    """
    num_classes = len(names)
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colorize(labels, num_classes, names).astype(np.float32)
    picture = Image.fromarray(np.rint(blended).astype(np.uint8))
    scale = max(1, -(-MIN_DISPLAY_SIDE // max(labels.shape)))
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    if not legend:
        return picture
    return _with_legend(picture, labels, names)


def _with_legend(picture: Image.Image, labels: np.ndarray, names: list[str]) -> Image.Image:
    counts = np.bincount(labels.reshape(-1), minlength=len(names))
    fractions = counts / counts.sum()
    present = [int(i) for i in np.argsort(-counts, kind="stable") if counts[i] > 0]
    shown, hidden = present[:MAX_LEGEND_ROWS], present[MAX_LEGEND_ROWS:]
    colours = palette_for(names)

    font = _font(14)
    row, pad, swatch = 20, 8, 14
    lines = [(f"{shorten(names[i])}  {100 * fractions[i]:.1f}%", tuple(int(c) for c in colours[i])) for i in shown]
    if hidden:
        lines.append((f"+ {len(hidden)} more ({100 * fractions[hidden].sum():.1f}%)", None))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_width = max(measure.textlength(text, font=font) for text, _ in lines)
    panel_width = int(pad * 3 + swatch + text_width)
    height = max(picture.height, pad * 2 + row * len(lines))

    canvas = Image.new("RGB", (picture.width + panel_width, height), (255, 255, 255))
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    x = picture.width + pad
    for k, (text, colour) in enumerate(lines):
        y = pad + k * row
        if colour is not None:
            draw.rectangle([x, y + 2, x + swatch, y + 2 + swatch], fill=colour, outline=(0, 0, 0))
        draw.text((x + swatch + pad, y + 1), text, fill=(0, 0, 0), font=font)
    return canvas
