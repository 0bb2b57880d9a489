"""Things that are not digits, drawn in MNIST's terms, to measure the "not a digit" detector.

Everything is generated from sources inside installed packages (nothing downloaded, no MNIST):
letters and symbols from Pillow's own scalable font (``ImageFont.load_default(size=)``) and
from the TrueType fonts found under /usr/share/fonts (DejaVu, Liberation) when present; shapes
drawn with ``ImageDraw``; blank and near-blank pages; noise; textures (gratings, checks,
smoothed "cloud" noise standing in for crops of natural photos).

Two forms: ``ink_drawings`` gives large ink canvases (H, W) float32, 0 background, 255 ink,
for a caller to photograph or bring to MNIST form with the service's own pipeline (the
benchmark does); ``nondigit_set`` gives (N, 28, 28) uint8 images already in MNIST's form, which
the recipe scores at train time. training/ may not import service/ (tests/test_layering.py),
so ``in_mnist_field`` places a drawing the way ``service.inputs.mnist_form.normalise_like_mnist``
does (crop to the ink, fit 20x20, centre of mass at the centre; a test keeps the two equal).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

FONT_DIRECTORY = Path("/usr/share/fonts/truetype")
# Glyphs that take a digit's shape once brought to MNIST form (O/0, I/l/1, Z/2, S/5, and a
# bracket or "!" fitted into 20x20 is a vertical stroke, a "1"): the detector cannot be asked
# to call them "not a digit". They are kept apart as the kind "digit-like", measured and
# reported (docs/TRAINING.md, limits) but not counted in the targets.
DIGIT_LIKE = "OoDIlijSsZzBbGgqQT![]{}|§$"
LETTERS = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" if c not in DIGIT_LIKE]
SYMBOLS = list("+*#%&@?=<>~^¶€£¥©®±÷×")
SHAPES = ("square", "triangle", "star", "cross", "disc", "frame", "arrow", "heart", "grid")
CANVAS = 112
KINDS = ("letters", "symbols", "shapes", "blank", "noise", "textures")


def font_files(directory: Path = FONT_DIRECTORY) -> list[Path]:
    """The TrueType fonts installed under ``directory`` (sorted; [] when there are none)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.rglob("*.ttf") if "Math" not in p.name)


def fonts(size: int, limit: int | None = None) -> list[tuple[str, ImageFont.FreeTypeFont]]:
    """(name, font) pairs at ``size`` px: Pillow's built-in scalable font, then the installed
    TrueType fonts (at most ``limit`` of them, spread over the list)."""
    found = [("pillow-default", ImageFont.load_default(size=size))]
    files = font_files()
    if limit is not None and len(files) > limit:
        files = [files[i] for i in np.linspace(0, len(files) - 1, limit).round().astype(int)]
    found.extend((path.stem, ImageFont.truetype(str(path), size)) for path in files)
    return found


def glyph(character: str, font: ImageFont.FreeTypeFont) -> np.ndarray:
    """One character as ink (CANVAS, CANVAS) float32 (0 background, 255 ink)."""
    image = Image.new("L", (CANVAS, CANVAS), 0)
    draw = ImageDraw.Draw(image)
    draw.text((CANVAS / 2, CANVAS / 2), character, fill=255, font=font, anchor="mm")
    return np.asarray(image, dtype=np.float32)


def shape(name: str, rng: np.random.Generator) -> np.ndarray:
    """A drawn shape as ink (CANVAS, CANVAS) float32, with a random stroke width."""
    image = Image.new("L", (CANVAS, CANVAS), 0)
    draw = ImageDraw.Draw(image)
    width = int(rng.integers(6, 14))
    low, high, mid = 16, CANVAS - 16, CANVAS // 2
    if name == "square":
        draw.rectangle((low, low, high, high), outline=255, width=width)
    elif name == "triangle":
        draw.polygon([(mid, low), (high, high), (low, high)], outline=255, width=width)
    elif name == "star":
        angles = np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, mid - low, (mid - low) * 0.4)
        points = [
            (mid + r * np.cos(a), mid - r * np.sin(a)) for r, a in zip(radii, angles, strict=True)
        ]
        draw.polygon(points, fill=255)
    elif name == "cross":
        draw.line((low, low, high, high), fill=255, width=width)
        draw.line((low, high, high, low), fill=255, width=width)
    elif name == "disc":
        draw.ellipse((low, low, high, high), fill=255)
    elif name == "frame":
        draw.rectangle((low, low + 20, high, high - 20), outline=255, width=width)
    elif name == "arrow":
        draw.line((low, mid, high - 10, mid), fill=255, width=width)
        draw.polygon([(high, mid), (high - 30, mid - 25), (high - 30, mid + 25)], fill=255)
    elif name == "heart":
        draw.ellipse((low, low + 10, mid + 4, mid + 10), fill=255)
        draw.ellipse((mid - 4, low + 10, high, mid + 10), fill=255)
        draw.polygon([(low + 2, mid), (high - 2, mid), (mid, high)], fill=255)
    elif name == "grid":
        for at in np.linspace(low, high, 4):
            draw.line((at, low, at, high), fill=255, width=width // 2)
            draw.line((low, at, high, at), fill=255, width=width // 2)
    else:
        raise ValueError(f"unknown shape {name!r}; known: {SHAPES}")
    return np.asarray(image, dtype=np.float32)


def ink_drawings(rng: np.random.Generator, font_limit: int | None = None) -> dict[str, list]:
    """The drawable kinds as large ink canvases: {"letters": [...], "symbols": [...],
    "shapes": [...], "digit-like": [...]}, each a list of (CANVAS, CANVAS) float32 arrays."""
    drawn: dict[str, list] = {"letters": [], "symbols": [], "shapes": [], "digit-like": []}
    for _, font in fonts(80, font_limit):
        drawn["letters"].extend(glyph(c, font) for c in LETTERS)
        drawn["symbols"].extend(glyph(c, font) for c in SYMBOLS)
        drawn["digit-like"].extend(glyph(c, font) for c in DIGIT_LIKE)
    for kind in ("symbols", "digit-like"):
        drawn[kind] = [ink for ink in drawn[kind] if ink.any()]  # a font without the glyph
    for _ in range(6):
        drawn["shapes"].extend(shape(name, rng) for name in SHAPES)
    return drawn


def in_mnist_field(ink: np.ndarray) -> np.ndarray:
    """Ink (H, W) float, 0 background -> uint8 (28, 28) in MNIST's form: cropped to the ink,
    fitted into 20x20 keeping the aspect ratio (Lanczos), centre of mass at (14, 14)."""
    rows, columns = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    crop = np.ascontiguousarray(ink[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1])
    scale = 20 / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    fitted = Image.fromarray(crop.astype(np.float32)).resize(size, Image.Resampling.LANCZOS)
    digit = np.clip(np.asarray(fitted, dtype=np.float32), 0.0, 255.0)
    centre_row, centre_column = ndimage.center_of_mass(digit)
    top = int(np.clip(round(14.0 - centre_row), 0, 28 - digit.shape[0]))
    left = int(np.clip(round(14.0 - centre_column), 0, 28 - digit.shape[1]))
    field = np.zeros((28, 28), dtype=np.float32)
    field[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    return np.clip(np.rint(field), 0, 255).astype(np.uint8)


def full_field_kinds(rng: np.random.Generator, count: int = 60) -> dict[str, np.ndarray]:
    """Kinds that fill the 28x28 field as they are (what a JSON or .npy client can send):
    "blank" (empty, faint uniform grey, a few specks), "noise" (uniform, salt and pepper,
    Gaussian), "textures" (gratings, checks, smoothed cloud noise). Each (count, 28, 28)
    uint8."""
    third = count // 3
    blank = np.zeros((count, 28, 28))
    blank[third : 2 * third] = rng.uniform(2, 40, (third, 1, 1))
    for image in blank[2 * third :]:
        image[rng.integers(0, 28, 3), rng.integers(0, 28, 3)] = rng.uniform(60, 255, 3)
    noise = np.concatenate(
        [
            rng.uniform(0, 255, (third, 28, 28)),
            255.0 * (rng.random((third, 28, 28)) < rng.uniform(0.05, 0.3, (third, 1, 1))),
            np.clip(rng.normal(100, 60, (count - 2 * third, 28, 28)), 0, 255),
        ]
    )
    rows, columns = np.mgrid[0:28, 0:28]
    textures = []
    for index in range(count):
        angle, period = rng.uniform(0, np.pi), rng.uniform(3, 9)
        if index % 3 == 0:
            phase = (np.cos(angle) * columns + np.sin(angle) * rows) * 2 * np.pi / period
            textures.append(127.5 + 127.5 * np.sin(phase))
        elif index % 3 == 1:
            step = int(rng.integers(2, 8))
            textures.append(255.0 * (((rows // step) + (columns // step)) % 2))
        else:
            cloud = ndimage.gaussian_filter(rng.normal(size=(28, 28)), rng.uniform(1.5, 4))
            cloud = (cloud - cloud.min()) / max(np.ptp(cloud), 1e-9)
            textures.append(255.0 * cloud)
    as_pixels = lambda a: np.clip(np.rint(a), 0, 255).astype(np.uint8)  # noqa: E731
    return {"blank": as_pixels(blank), "noise": as_pixels(noise), "textures": as_pixels(textures)}


def nondigit_set(seed: int = 0, font_limit: int | None = 4) -> dict[str, np.ndarray]:
    """Every kind in MNIST's form: {kind: (N, 28, 28) uint8} for KINDS (not "digit-like").
    Drawn kinds are brought
    to the 28x28 field by ``in_mnist_field``; ``font_limit`` installed fonts besides Pillow's
    (None: all)."""
    rng = np.random.default_rng(seed)
    drawn = ink_drawings(rng, font_limit)
    sets = {kind: np.stack([in_mnist_field(ink) for ink in drawn[kind]]) for kind in KINDS[:3]}
    sets.update(full_field_kinds(rng))
    return {kind: sets[kind] for kind in KINDS}
