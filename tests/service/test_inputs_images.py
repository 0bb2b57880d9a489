"""Request bodies -> pixels: image files (service/inputs/images.py, mnist_form.py).

Every error a client can cause must come out as BadRequest or PayloadTooLarge with a message
naming the problem; images of MNIST digits must come back close to the original digit.
"""

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy import ndimage

from service.errors import BadRequest, PayloadTooLarge
from service.inputs import pixels_to_png_data_url
from tests.support.inputs import pixels_from_image

# --------------------------------------------------------------------------------------------
# Images: MNIST digits round trip
# --------------------------------------------------------------------------------------------


def centre_by_mass(pixels: np.ndarray) -> np.ndarray:
    row, column = ndimage.center_of_mass(pixels)
    return ndimage.shift(pixels.astype(np.float64), (14 - row, 14 - column), order=1)


def correlation(pixels: np.ndarray, digit: np.ndarray) -> float:
    a, b = centre_by_mass(pixels).ravel(), centre_by_mass(digit).ravel()
    return float(np.corrcoef(a, b)[0, 1])


def render(digit: np.ndarray, *, scale: int = 10, dark_on_light: bool = True) -> Image.Image:
    """A 28x28 MNIST digit drawn large (smoothly upscaled) as an "L" image."""
    size = 28 * scale
    big = Image.fromarray(digit.astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
    return Image.fromarray(255 - np.asarray(big)) if dark_on_light else big


def encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


FORMATS_AND_MODES = [
    (image_format, mode)
    for image_format, modes in {
        "PNG": ["L", "RGB", "RGBA", "P"],
        "JPEG": ["L", "RGB"],
        "BMP": ["L", "RGB", "P"],
        "GIF": ["L", "P"],
        "WEBP": ["RGB", "RGBA"],
        "TIFF": ["L", "RGB", "RGBA", "CMYK"],
    }.items()
    for mode in modes
]


@pytest.mark.parametrize(("image_format", "mode"), FORMATS_AND_MODES)
@pytest.mark.parametrize("dark_on_light", [True, False], ids=["dark-on-light", "light-on-dark"])
def test_rendered_digit_round_trips(image_format, mode, dark_on_light, mnist_images):
    for digit in mnist_images[0][:2]:
        data = encode(render(digit, dark_on_light=dark_on_light).convert(mode), image_format)
        pixels = pixels_from_image(data)
        assert pixels.shape == (28, 28) and pixels.dtype == np.float32
        assert pixels.min() >= 0 and pixels.max() <= 255
        assert correlation(pixels, digit) > 0.9
        # MNIST geometry: the ink fits 20x20 and its centre of mass is near (14, 14).
        rows, columns = np.nonzero(pixels)
        assert max(np.ptp(rows), np.ptp(columns)) + 1 <= 20
        np.testing.assert_allclose(ndimage.center_of_mass(pixels), (14, 14), atol=0.6)


def test_mnist_sized_image_comes_back_almost_unchanged(mnist_images):
    for digit in mnist_images[0][:5]:
        pixels = pixels_from_image(encode(Image.fromarray(digit), "PNG"))
        assert correlation(pixels, digit) > 0.98


@pytest.mark.parametrize("stroke_colour", [0, 255], ids=["black-strokes", "white-strokes"])
def test_drawing_on_a_transparent_canvas(stroke_colour, mnist_images):
    digit = mnist_images[0][3]
    coverage = np.asarray(render(digit, dark_on_light=False))
    rgba = np.zeros((*coverage.shape, 4), dtype=np.uint8)  # transparent black canvas
    rgba[..., :3] = stroke_colour
    rgba[..., 3] = coverage
    pixels = pixels_from_image(encode(Image.fromarray(rgba), "PNG"))
    assert correlation(pixels, digit) > 0.9


def test_transparent_corners_of_a_photo_are_not_ink(mnist_images):
    digit = mnist_images[0][4]
    rgba = np.asarray(render(digit).convert("RGBA")).copy()
    rgba[:40, :40, :] = 0  # a fully transparent black corner on a white picture
    pixels = pixels_from_image(encode(Image.fromarray(rgba), "PNG"))
    assert correlation(pixels, digit) > 0.9


def test_palette_image_with_a_transparent_background(mnist_images):
    digit = mnist_images[0][5]
    image = render(digit).convert("P")
    image.info["transparency"] = image.getpixel((0, 0))  # the paper colour
    pixels = pixels_from_image(encode(image, "PNG"))
    assert correlation(pixels, digit) > 0.9
    gif = pixels_from_image(encode(image, "GIF", transparency=image.getpixel((0, 0))))
    assert correlation(gif, digit) > 0.9


def test_exif_orientation_is_applied(mnist_images):
    digit = mnist_images[0][6]
    stored = render(digit).convert("RGB").rotate(90, expand=True)  # as a sideways camera saves
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    pixels = pixels_from_image(encode(stored, "JPEG", exif=exif.tobytes()))
    assert correlation(pixels, digit) > 0.9
    unrotated = pixels_from_image(encode(stored, "JPEG"))
    assert correlation(unrotated, digit) < correlation(pixels, digit)


def test_sixteen_bit_greyscale(mnist_images):
    digit = mnist_images[0][7]
    sixteen = (255 - np.asarray(render(digit, dark_on_light=False)).astype(np.uint16)) * 257
    pixels = pixels_from_image(encode(Image.fromarray(sixteen), "PNG"))
    assert correlation(pixels, digit) > 0.9


def test_small_digit_on_a_large_canvas(mnist_images):
    digit = mnist_images[0][8]
    canvas = np.full((1500, 1200), 245, dtype=np.uint8)
    canvas[700:784, 500:584] = np.asarray(render(digit, scale=3))
    pixels = pixels_from_image(encode(Image.fromarray(canvas), "PNG"))
    assert correlation(pixels, digit) > 0.85


def test_polarity_is_judged_by_the_border_not_the_mean(mnist_images):
    """A bold digit covering most of the picture is still ink, not paper: it comes out as the
    same digit drawn with a wide margin of paper."""
    digit = ndimage.grey_dilation(mnist_images[0][9], size=(4, 4))
    rows, columns = np.nonzero(digit)
    tight = digit[rows.min() - 1 : rows.max() + 2, columns.min() - 1 : columns.max() + 2]
    picture = Image.fromarray(255 - tight).resize((tight.shape[1] * 10, tight.shape[0] * 10))
    assert np.asarray(picture).mean() < 128  # mostly dark: a mean-based rule would invert
    with_margin = Image.fromarray(np.pad(255 - tight, 20, constant_values=255))
    with_margin = with_margin.resize((with_margin.width * 10, with_margin.height * 10))
    pixels = pixels_from_image(encode(picture, "PNG"))
    assert correlation(pixels, pixels_from_image(encode(with_margin, "PNG"))) > 0.95


def synthetic_photo(digit: np.ndarray, rng: np.random.Generator, *, chalk: bool = False) -> bytes:
    """The digit ~10x larger, grey ink on paper lit from one corner, noise, a little blur,
    saved as a JPEG (chalk: light strokes on a dark, unevenly lit board)."""
    coverage = np.asarray(render(digit, dark_on_light=False), dtype=np.float64) / 255
    rows, columns = np.mgrid[0:280, 0:280] / 280
    if chalk:
        paper = 40 + 45 * columns + 20 * rows
        ink = 200.0
    else:
        paper = 235 - 60 * columns - 30 * rows
        ink = 70.0
    photo = paper * (1 - coverage) + ink * coverage
    photo = ndimage.gaussian_filter(photo, 1.2) + rng.normal(0, 6, photo.shape)
    rgb = np.repeat(np.clip(photo, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    rgb[..., 2] = np.clip(rgb[..., 2].astype(int) - 12, 0, 255)  # a warm tint
    return encode(Image.fromarray(rgb), "JPEG", quality=80)


@pytest.mark.parametrize("chalk", [False, True], ids=["pencil-on-paper", "chalk-on-board"])
def test_photo_of_a_digit_is_flattened_and_cleaned(chalk, mnist_images):
    rng = np.random.default_rng(0)
    for digit in mnist_images[0][10:14]:
        pixels = pixels_from_image(synthetic_photo(digit, rng, chalk=chalk))
        assert correlation(pixels, digit) > 0.8
        # Background: nothing left two pixels away from where the re-centred digit has ink.
        expected_ink = centre_by_mass(digit) > 0
        far_from_ink = ~ndimage.binary_dilation(expected_ink, iterations=2)
        shifted = centre_by_mass(pixels)
        assert shifted[far_from_ink].mean() < 3
        assert shifted[far_from_ink].max() < 40
        assert pixels.max() == pytest.approx(255, abs=1)  # stroke cores stretched to full ink


# --------------------------------------------------------------------------------------------
# Images: errors
# --------------------------------------------------------------------------------------------


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and a valid IHDR claiming width x height, no pixel data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload)
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def blank_photo() -> bytes:
    rng = np.random.default_rng(1)
    rows, columns = np.mgrid[0:300, 0:400] / 300
    paper = 230 - 70 * columns - 30 * rows + rng.normal(0, 5, rows.shape)
    return encode(Image.fromarray(np.clip(paper, 0, 255).astype(np.uint8)), "JPEG", quality=70)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (encode(Image.new("L", (200, 100), 255), "PNG"), "no ink found"),
        (encode(Image.new("RGB", (64, 64)), "JPEG"), "no ink found"),
        (encode(Image.new("L", (1, 1), 9), "PNG"), "no ink found"),
        (encode(Image.new("RGBA", (50, 50), (0, 0, 0, 0)), "PNG"), "no ink found"),
        (encode(Image.new("L", (50, 50), 128), "GIF"), "no ink found"),
        (blank_photo(), "no ink found"),
        (b"", "empty image file"),
        (b"definitely not an image", "cannot decode the image"),
        (b"\x89PNG\r\n\x1a\n", "cannot decode the image"),
        (encode(Image.new("L", (100, 100), 255), "PNG")[:60], "cannot decode the image"),
        (encode(Image.new("RGB", (100, 100), "white"), "JPEG")[:200], "cannot decode"),
        (png_header_only(64, 64), "cannot decode the image"),
    ],
    ids=[
        "white",
        "black-jpeg",
        "one-pixel",
        "transparent",
        "grey-gif",
        "blank-photo",
        "empty",
        "garbage",
        "signature-only",
        "truncated-png",
        "truncated-jpeg",
        "no-pixel-data",
    ],
)
def test_images_without_a_digit_are_bad_requests(data, message):
    with pytest.raises(BadRequest) as caught:
        pixels_from_image(data)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("data", "max_pixels"),
    [
        (png_header_only(100_000, 100_000), 40_000_000),  # 10^10 pixels claimed in 57 bytes
        (png_header_only(10_000, 10_000), 10**12),  # over Pillow's warning threshold
        (png_header_only(20_000, 20_000), 10**12),  # over Pillow's error threshold
        (encode(Image.new("L", (300, 200), 255), "PNG"), 59_999),
    ],
    ids=["header-bomb", "pillow-warning", "pillow-error", "over-max-pixels"],
)
def test_too_many_pixels_is_payload_too_large_before_decoding(data, max_pixels):
    with pytest.raises(PayloadTooLarge, match="pixel|too large"):
        pixels_from_image(data, max_pixels=max_pixels)


def test_max_pixels_allows_images_up_to_the_limit(mnist_images):
    data = encode(render(mnist_images[0][0], scale=2), "PNG")
    assert pixels_from_image(data, max_pixels=56 * 56).shape == (28, 28)


@settings(deadline=None, max_examples=100)
@given(
    data=st.binary(max_size=300),
    prefix=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"\xff\xd8\xff", b"BM"]),
)
def test_arbitrary_bytes_give_an_image_or_a_client_error(data, prefix):
    try:
        pixels = pixels_from_image(prefix + data)
    except (BadRequest, PayloadTooLarge):
        return
    assert pixels.shape == (28, 28)


# --------------------------------------------------------------------------------------------
# What the model saw, for the web page
# --------------------------------------------------------------------------------------------


def test_png_data_url_round_trips(mnist_images):
    digit = mnist_images[0][0].astype(np.float32)
    url = pixels_to_png_data_url(digit)
    assert url.startswith("data:image/png;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert decoded.mode == "L" and decoded.size == (28, 28)
    np.testing.assert_array_equal(np.asarray(decoded), digit)


def test_png_data_url_clips_and_rounds():
    pixels = np.zeros((28, 28), dtype=np.float32)
    pixels[0, :3] = [-5, 127.6, 300]
    url = pixels_to_png_data_url(pixels)
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))
    assert decoded[0, :3].tolist() == [0, 128, 255]


def test_png_data_url_rejects_other_shapes():
    with pytest.raises(ValueError, match=r"\(28, 28\)"):
        pixels_to_png_data_url(np.zeros((1, 28, 28)))
