"""Request bodies -> pixels: JSON, .npy and image files (service/inputs/).

Every error a client can cause must come out as BadRequest or PayloadTooLarge with a message
naming the problem; images of MNIST digits must come back close to the original digit.
"""

import base64
import io
import json
import struct
import zlib

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy import ndimage

from service.errors import BadRequest, PayloadTooLarge
from service.inputs import InputSpec, pixel_batch, pixels_from_payload, pixels_to_png_data_url
from service.inputs.json_values import predict_payload_values
from tests.support.http_io import npy_bytes


def pixels_from_json_body(body: bytes, max_batch: int) -> np.ndarray:
    return pixels_from_payload("json", body, InputSpec(max_batch=max_batch))


def pixels_from_json(payload: object, max_batch: int) -> np.ndarray:
    """An already parsed payload, every element's type checked (no body-level shortcut)."""
    spec = InputSpec(max_batch=max_batch)
    values, where, single = predict_payload_values(payload, spec)
    return pixel_batch(values, spec, where, single=single)


def pixels_from_npy(body: bytes, max_batch: int) -> np.ndarray:
    return pixels_from_payload("npy", body, InputSpec(max_batch=max_batch))


def pixels_from_image(data: bytes, max_pixels: int = 25_000_000) -> np.ndarray:
    return pixels_from_payload("image", data, InputSpec(max_image_pixels=max_pixels))[0]


BLANK = [[0] * 28 for _ in range(28)]


def json_body(payload) -> bytes:
    return orjson.dumps(payload)


def image_with(row: int, column: int, value) -> list:
    """A blank 28x28 nested list with one element replaced."""
    image = [list(r) for r in BLANK]
    image[row][column] = value
    return image


# --------------------------------------------------------------------------------------------
# JSON: accepted forms
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("parse", ["body", "parsed"])
def test_json_single_image_nested_and_flat(parse, mnist_images):
    digit = mnist_images[0][0]
    for image in (digit.tolist(), digit.ravel().tolist(), (digit / 1.0).tolist()):
        payload = {"image": image}
        if parse == "body":
            pixels = pixels_from_json_body(json_body(payload), max_batch=4)
        else:
            pixels = pixels_from_json(payload, max_batch=4)
        assert pixels.shape == (1, 28, 28)
        assert pixels.dtype == np.float32
        np.testing.assert_array_equal(pixels[0], digit)


@pytest.mark.parametrize("parse", ["body", "parsed"])
def test_json_batch_may_mix_nested_and_flat(parse, mnist_images):
    digits = mnist_images[0][:3]
    payload = {"images": [digits[0].tolist(), digits[1].ravel().tolist(), digits[2].tolist()]}
    if parse == "body":
        pixels = pixels_from_json_body(json_body(payload), max_batch=3)
    else:
        pixels = pixels_from_json(payload, max_batch=3)
    assert pixels.shape == (3, 28, 28)
    np.testing.assert_array_equal(pixels, digits)


def test_json_body_accepts_boundary_values_and_fractions():
    image = image_with(0, 0, 255)
    image[27][27] = 0.5
    pixels = pixels_from_json_body(b'{"image": ' + json_body(image) + b"}", max_batch=1)
    assert pixels[0, 0, 0] == 255 and pixels[0, 27, 27] == 0.5


# --------------------------------------------------------------------------------------------
# JSON: errors
# --------------------------------------------------------------------------------------------

JSON_BODY_ERRORS = [
    (b"", "empty body"),
    (b"   ", "empty body"),
    (b"{", "malformed JSON"),
    (b'{"image": [1,]}', "malformed JSON"),
    (b"\xff\xfe", "malformed JSON"),
    (b'{"image": [NaN]}', "NaN"),
    (b'{"image": [Infinity]}', "Infinity"),
    (b'{"image": [1e400]}', "malformed JSON"),
    (b"[" * 100_000, "nested too deeply"),
    (b'{"image": ' + b"[" * 100_000, "malformed JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (b'"image"', "expected a JSON object"),
    (b"null", "expected a JSON object"),
    (b"{}", 'with "image" or "images"'),
    (b'{"imgs": []}', 'unknown key "imgs"'),
    (b'{"image": [], "version": 2}', 'unknown key "version"'),
    (b'{"image": [], "images": []}', "not both"),
    (b'{"images": []}', "images: empty batch"),
    (b'{"images": {}}', "images: expected a list of images, got an object"),
    (b'{"image": 3}', "image: expected 28x28 or 784 values, got a number"),
    (b'{"image": "0,0,0"}', "image: expected 28x28 or 784 values, got a string"),
    (b'{"image": []}', "image: expected 28x28 or 784 values, got an empty list"),
    (json_body({"image": [0] * 783}), "image: expected 28x28 or 784 values, got a list of 783"),
    (json_body({"image": [0] * 28}), "got a list of 28 numbers"),
    (json_body({"image": [[0] * 784]}), "got a list of 1"),
    (json_body({"images": [BLANK, BLANK[:27]]}), "images[1]: expected 28x28 or 784 values"),
    (json_body({"images": [BLANK, BLANK[:27] + [[0] * 27]]}), "images[1][27]: expected a row"),
    (json_body({"images": [BLANK, BLANK[:27] + [5]]}), "images[1][27]: expected a row"),
    (json_body({"image": image_with(3, 4, "7")}), "image[3][4]: expected a number, got a string"),
    (json_body({"image": image_with(3, 4, None)}), "image[3][4]: expected a number, got null"),
    (json_body({"image": image_with(3, 4, True)}), "image[3][4]: expected a number, got a boolean"),
    (
        json_body({"image": image_with(0, 0, False)}),
        "image[0][0]: expected a number, got a boolean",
    ),
    (json_body({"image": image_with(3, 4, [1])}), "image[3][4]: expected a number, got a list"),
    (json_body({"image": image_with(3, 4, {})}), "image[3][4]: expected a number, got an object"),
    (json_body({"image": image_with(3, 4, 256)}), "image[3][4]: 256 is outside 0-255"),
    (json_body({"image": image_with(3, 4, -0.5)}), "image[3][4]: -0.5 is outside 0-255"),
    (json_body({"image": [0] * 783 + [1e300]}), "image[783]: 1e+300 is outside 0-255"),
    (json_body({"image": [0] * 783 + ["x"]}), "image[783]: expected a number, got a string"),
    (json_body({"images": [BLANK, image_with(27, 0, 300)]}), "images[1][27][0]: 300 is outside"),
    (json_body({"images": [BLANK, [0] * 784, image_with(1, 2, -1)]}), "images[2][1][2]"),
    (b'{"image": [' + b"0," * 783 + b"18446744073709551616]}", "image[783]"),
    (b'{"image": [' + b"0," * 783 + b"-9223372036854775809]}", "image[783]"),
]


@pytest.mark.parametrize(("body", "message"), JSON_BODY_ERRORS)
def test_json_body_errors_name_the_problem(body, message):
    with pytest.raises(BadRequest) as caught:
        pixels_from_json_body(body, max_batch=8)
    assert message in str(caught.value)
    assert caught.value.status == 400


def parses(body: bytes) -> bool:
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return True


@pytest.mark.parametrize(
    ("body", "message"), [(body, message) for body, message in JSON_BODY_ERRORS if parses(body)]
)
def test_parsed_json_errors_match_the_body_errors(body, message):
    with pytest.raises(BadRequest) as caught:
        pixels_from_json(orjson.loads(body), max_batch=8)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"image": image_with(1, 1, float("nan"))}, "image[1][1]: NaN is not a pixel value"),
        ({"image": image_with(1, 1, float("inf"))}, "image[1][1]: inf is not a pixel value"),
        ({"image": image_with(1, 1, 10**400)}, "image[1][1]: a huge integer is outside 0-255"),
        ({"image": image_with(1, 1, np.bool_(True))}, "expected a number, got a boolean"),
        ({"image": tuple(BLANK)}, "got a tuple"),
        ({1: BLANK}, "unknown key <int>"),
        ({10**5000: BLANK}, "unknown key <int>"),
        ({"x" * 10_000: BLANK}, 'unknown key "xxxxxxxxxx'),
    ],
)
def test_parsed_json_python_only_values(payload, message):
    with pytest.raises(BadRequest) as caught:
        pixels_from_json(payload, max_batch=8)
    assert message in str(caught.value)


def test_parsed_json_deeply_nested_list_is_a_bad_request():
    nested: list = [0]
    for _ in range(100_000):
        nested = [nested]
    with pytest.raises(BadRequest):
        pixels_from_json({"image": nested}, max_batch=1)
    with pytest.raises(BadRequest):
        pixels_from_json({"images": nested}, max_batch=1)


@pytest.mark.parametrize("parse", ["body", "parsed"])
def test_json_batch_over_the_limit_is_payload_too_large(parse):
    payload = {"images": [BLANK] * 5}
    with pytest.raises(PayloadTooLarge, match="batch of 5 is over the limit of 4"):
        if parse == "body":
            pixels_from_json_body(json_body(payload), max_batch=4)
        else:
            pixels_from_json(payload, max_batch=4)
    assert pixels_from_json(payload, max_batch=5).shape == (5, 28, 28)


# --------------------------------------------------------------------------------------------
# JSON: properties
# --------------------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(min_value=0, max_value=255)
    | st.text(max_size=5)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.sampled_from(["image", "images", "x"]) | st.text(max_size=3), children)
    ),
    max_leaves=20,
)


def pixels_or_client_error(convert) -> tuple[np.ndarray | None, Exception | None]:
    """Run a conversion that must either return valid pixels (at most 4 images) or raise
    BadRequest / PayloadTooLarge with a message; anything else fails the test."""
    try:
        pixels = convert()
    except (BadRequest, PayloadTooLarge) as exc:
        assert str(exc)
        return None, exc
    assert pixels.dtype == np.float32 and pixels.ndim == 3 and pixels.shape[1:] == (28, 28)
    assert 1 <= pixels.shape[0] <= 4
    assert np.isfinite(pixels).all() and pixels.min() >= 0 and pixels.max() <= 255
    return pixels, None


@settings(deadline=None, max_examples=300)
@given(payload=json_values)
def test_arbitrary_json_values_give_pixels_or_a_client_error(payload):
    pixels_or_client_error(lambda: pixels_from_json(payload, max_batch=4))


@settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    layout=st.sampled_from(["nested", "flat", "batch"]),
    row=st.integers(0, 27),
    column=st.integers(0, 27),
    value=json_values,
)
def test_one_odd_element_in_a_valid_image(layout, row, column, value):
    """Near-valid images reach the element checks: the fast (body) and the strict (parsed)
    paths must agree, and a rejection must name the element's position."""
    image = image_with(row, column, value)
    if layout == "flat":
        image = [v for r in image for v in r]
        payload, position = {"image": image}, f"image[{row * 28 + column}]"
    elif layout == "batch":
        payload, position = {"images": [BLANK, image]}, f"images[1][{row}][{column}]"
    else:
        payload, position = {"image": image}, f"image[{row}][{column}]"

    parsed, error = pixels_or_client_error(lambda: pixels_from_json(payload, max_batch=4))
    if error is not None:
        assert position in str(error)
    try:
        body = orjson.dumps(payload)  # NaN/inf become null, which is rejected all the same
    except orjson.JSONEncodeError:
        return  # integers beyond 64 bits: no body to compare
    from_body, body_error = pixels_or_client_error(lambda: pixels_from_json_body(body, 4))
    if parsed is None:
        assert from_body is None and position in str(body_error)
    else:
        np.testing.assert_array_equal(parsed, from_body)


@settings(deadline=None, max_examples=200)
@given(body=st.binary(max_size=200) | st.builds(json.dumps, json_values).map(str.encode))
def test_arbitrary_bytes_give_pixels_or_a_client_error(body):
    pixels_or_client_error(lambda: pixels_from_json_body(body, max_batch=4))


# --------------------------------------------------------------------------------------------
# .npy
# --------------------------------------------------------------------------------------------


def npy_header_only(shape, descr="<f4") -> bytes:
    buffer = io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


@pytest.mark.parametrize("dtype", ["uint8", "int16", ">i4", "float16", "float32", ">f8"])
def test_npy_batches_of_any_real_dtype(dtype, mnist_images):
    digits = mnist_images[0][:3]
    pixels = pixels_from_npy(npy_bytes(digits.astype(dtype)), max_batch=3)
    assert pixels.shape == (3, 28, 28) and pixels.dtype == np.float32
    np.testing.assert_array_equal(pixels, digits)


@pytest.mark.parametrize("shape", [(3, 1, 28, 28), (3, 784)])
def test_npy_takes_the_batch_shapes_v2_takes(shape, mnist_images):
    digits = mnist_images[0][:3]
    pixels = pixels_from_npy(npy_bytes(digits.reshape(shape)), max_batch=3)
    np.testing.assert_array_equal(pixels, digits)


def test_npy_single_image_and_fortran_order(mnist_images):
    digit = mnist_images[0][0]
    single = pixels_from_npy(npy_bytes(digit), max_batch=1)
    assert single.shape == (1, 28, 28)
    np.testing.assert_array_equal(single[0], digit)
    fortran = np.asfortranarray(mnist_images[0][:2].astype(np.float64))
    np.testing.assert_array_equal(pixels_from_npy(npy_bytes(fortran), 2), mnist_images[0][:2])


NPY_ERRORS = [
    (b"", BadRequest, "not a .npy file"),
    (b"PK\x03\x04 a zip", BadRequest, "not a .npy file"),
    (b"\x93NUMPY\x01\x00\x10\x00{'descr'", BadRequest, "malformed .npy header"),
    (npy_bytes(np.zeros((28, 28), dtype=object), allow_pickle=True), BadRequest, "object"),
    (npy_bytes(np.zeros((28, 28), dtype=complex)), BadRequest, "not a real number type"),
    (npy_bytes(np.zeros((28, 28), dtype=bool)), BadRequest, "not a real number type"),
    (npy_bytes(np.zeros((28, 28), dtype="U3")), BadRequest, "not a real number type"),
    (npy_bytes(np.zeros((28, 28), dtype=[("a", "<f4")])), BadRequest, "not a real number"),
    (npy_bytes(np.zeros(784)), BadRequest, "for one image, got (784,)"),
    (npy_bytes(np.zeros((2, 2, 28, 28))), BadRequest, "got (2, 2, 28, 28)"),
    (npy_bytes(np.zeros((28, 27))), BadRequest, "got (28, 27)"),
    (npy_bytes(np.zeros((0, 28, 28))), BadRequest, "empty batch"),
    (npy_bytes(np.zeros((5, 28, 28))), PayloadTooLarge, "batch of 5 is over the limit of 4"),
    (npy_bytes(np.zeros((2, 28, 28)))[:-1], BadRequest, "truncated"),
    (npy_bytes(np.zeros((2, 28, 28))) + b"\0", BadRequest, "trailing bytes"),
    (npy_bytes(np.full((28, 28), np.nan)), BadRequest, "image[0][0]: NaN"),
    (npy_bytes(np.full((2, 28, 28), -np.inf)), BadRequest, "images[0][0][0]: -inf"),
    (npy_bytes(np.eye(28)[None].repeat(2, 0) * 256), BadRequest, "images[0][0][0]: 256 is outside"),
    (npy_bytes(np.full((28, 28), -1, dtype=np.int8)), BadRequest, "image[0][0]: -1 is outside"),
    (npy_header_only((10**12, 28, 28)), PayloadTooLarge, "over the limit"),
]


@pytest.mark.parametrize(("body", "error", "message"), NPY_ERRORS)
def test_npy_errors_name_the_problem(body, error, message):
    with pytest.raises(error) as caught:
        pixels_from_npy(body, max_batch=4)
    assert message in str(caught.value)


def test_npy_forged_shape_is_refused_before_allocating():
    # 10^12 images claimed, none sent: must not try to allocate terabytes.
    with pytest.raises(BadRequest, match="truncated"):
        pixels_from_npy(npy_header_only((10**12, 28, 28)), max_batch=10**13)


@settings(deadline=None, max_examples=200)
@given(body=st.binary(max_size=300), prefix=st.sampled_from([b"", b"\x93NUMPY\x01\x00"]))
def test_npy_arbitrary_bytes_give_pixels_or_a_client_error(body, prefix):
    pixels_or_client_error(lambda: pixels_from_npy(prefix + body, max_batch=4))


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
