"""Request bodies -> pixels: JSON and .npy (service/inputs/); image files are in
test_inputs_images.py.

Every error a client can cause must come out as BadRequest or PayloadTooLarge with a message
naming the problem; images of MNIST digits must come back close to the original digit.
"""

import io
import json

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.errors import BadRequest, PayloadTooLarge
from tests.support.http_io import npy_bytes
from tests.support.inputs import (
    pixels_from_json,
    pixels_from_json_body,
    pixels_from_npy,
    pixels_or_client_error,
)

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
