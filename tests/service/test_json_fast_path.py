"""The fast paths of JSON pixels (a body that can only hold numbers skips the per-element type
checks, and integer images are converted by ``bytes``) must give exactly what the strict path
gives: the same pixels, or the same error."""

import json

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.errors import BadRequest, PayloadTooLarge
from service.inputs import InputSpec, pixel_batch
from service.inputs.json_values import predict_payload_values

SPEC = InputSpec(max_batch=4)

INTEGER_IMAGE = [[(row * 28 + column) % 256 for column in range(28)] for row in range(28)]
FLAT_IMAGE = [value for row in INTEGER_IMAGE for value in row]


def outcome(body: bytes, *, fast: bool):
    """(pixels bytes, dtype, shape) or (error class, message) for one body."""
    try:
        values, where, single = predict_payload_values(orjson.loads(body), SPEC, numbers_only=fast)
        pixels = pixel_batch(values, SPEC, where, single=single)
    except (BadRequest, PayloadTooLarge) as exc:
        return type(exc), str(exc)
    assert pixels.flags.c_contiguous and pixels.flags.writeable
    return pixels.tobytes(), pixels.dtype, pixels.shape


def assert_same_either_way(payload) -> None:
    body = json.dumps(payload).encode()
    assert outcome(body, fast=True) == outcome(body, fast=False)


@pytest.mark.parametrize(
    "payload",
    [
        {"image": INTEGER_IMAGE},
        {"image": FLAT_IMAGE},
        {"images": [INTEGER_IMAGE, FLAT_IMAGE, INTEGER_IMAGE]},
        {"image": [[0.5] * 28] * 28},  # floats: the general path
        {"image": [[255] * 27 + [256]] * 28},
        {"image": [[-1] * 28] * 28},
        {"image": [[10**30] * 28] * 28},
        {"image": [[[1]] + [0] * 27] * 28},  # a list where a number goes
        {"image": [[0] * 27] * 28},
        {"image": [[0] * 29] + [[0] * 27] + [[0] * 28] * 26},  # 784 values, ragged rows
        {"image": [0] * 28},
        {"image": [{}] + [0] * 783},
        {"images": [FLAT_IMAGE, 5]},
        {"images": [FLAT_IMAGE] * 5},  # over the batch limit of 4
    ],
)
def test_fast_path_matches_the_general_path(payload):
    assert_same_either_way(payload)


def test_integer_images_take_the_byte_path():
    payload = {"images": [INTEGER_IMAGE, FLAT_IMAGE]}
    values, _, _ = predict_payload_values(payload, SPEC, numbers_only=True)
    assert values.dtype == np.uint8 and values.shape == (2, 28, 28)
    np.testing.assert_array_equal(values[0], np.array(INTEGER_IMAGE))
    np.testing.assert_array_equal(values[1], values[0])


values = st.one_of(
    st.integers(-2, 300), st.floats(-1, 300, allow_nan=False), st.just([]), st.just({})
)


@settings(max_examples=200, deadline=None)
@given(row=st.integers(0, 27), column=st.integers(0, 27), value=values, flat=st.booleans())
def test_one_odd_value_is_handled_alike(row, column, value, flat):
    image = [list(r) for r in INTEGER_IMAGE]
    image[row][column] = value
    if flat:
        image = [v for r in image for v in r]
    assert_same_either_way({"images": [FLAT_IMAGE, image]})
