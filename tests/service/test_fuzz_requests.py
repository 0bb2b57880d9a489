"""Property: whatever a client sends to /predict or the V2 infer route - any body, any content
type, any query, any binary header - the answer is never a 5xx, and every error is JSON in the
route's error shape."""

import io
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from tests.support.apps import build_app
from tests.support.http_io import npy_bytes, png_bytes
from tests.support.mnist import synthetic_digit

FUZZ_SETTINGS = settings(
    deadline=None,
    max_examples=200,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory):
    from tests.support.bundles import make_store

    directory = tmp_path_factory.mktemp("fuzz")
    make_store(
        directory, dict(seed=1, test_accuracy=0.5, alias="production"), dict(seed=2, classes=[0, 1])
    )
    app = build_app(directory / "store", LOG_LEVEL="warning")
    return app.test_client()


# ------------------------------------------------------------------------------ strategies

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=40,
)
pixel_values = st.integers(min_value=-5, max_value=300) | st.floats(
    allow_nan=True, allow_infinity=True
)
image_like = st.lists(st.lists(pixel_values, min_size=0, max_size=30), min_size=0, max_size=30)
flat_like = st.lists(pixel_values, min_size=780, max_size=790)
almost_valid_images = st.one_of(
    image_like,
    flat_like,
    st.just(synthetic_digit().tolist()),
    st.builds(
        lambda rows, row: rows[:row] + [["x"] * 28] + rows[row + 1 :],
        st.just(synthetic_digit().tolist()),
        st.integers(0, 27),
    ),
)
json_payloads = st.one_of(
    json_values,
    st.fixed_dictionaries({"image": almost_valid_images}),
    st.fixed_dictionaries({"images": st.lists(almost_valid_images, max_size=10)}),
    st.fixed_dictionaries({"image": json_values}),
    st.fixed_dictionaries({"images": json_values}),
    st.dictionaries(st.sampled_from(["image", "images", "extra"]), json_values, max_size=3),
)


@st.composite
def json_bodies(draw) -> bytes:
    # allow_nan: Python's json writes NaN/Infinity literals, which strict parsers must refuse.
    return json.dumps(draw(json_payloads)).encode()


@st.composite
def npy_bodies(draw) -> bytes:
    dtype = draw(
        st.sampled_from(["u1", "i2", "<i8", ">f4", "<f2", "<f8", "?", "<c8", "U3", "<M8[s]"])
    )
    shape = draw(
        st.sampled_from(
            [(28, 28), (1, 28, 28), (3, 28, 28), (0, 28, 28), (784,), (2, 2), (), (9, 28, 28)]
        )
    )
    array = draw(hnp.arrays(np.dtype(dtype), shape))
    data = npy_bytes(array)
    if draw(st.booleans()):  # damage it
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] + draw(st.binary(max_size=20))
    return data


@st.composite
def image_bodies(draw) -> bytes:
    width = draw(st.integers(1, 64))
    height = draw(st.integers(1, 64))
    mode = draw(st.sampled_from(["L", "RGB", "RGBA", "1", "P", "LA"]))
    seed = draw(st.integers(0, 2**16))
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=draw(st.sampled_from(["PNG", "GIF", "BMP", "TIFF"])))
    except (OSError, ValueError, KeyError):  # that format cannot hold that mode
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
    data = buffer.getvalue()
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(data)))
        data = data[:cut]
    return data


@st.composite
def multipart_bodies(draw) -> tuple[bytes, str]:
    boundary = "fuzzboundary"
    parts = []
    for index in range(draw(st.integers(0, 10))):
        content = draw(
            st.one_of(
                image_bodies(), st.binary(max_size=200), st.just(png_bytes(synthetic_digit()))
            )
        )
        if draw(st.booleans()):
            disposition = f'form-data; name="image"; filename="f{index}.png"'
        else:
            disposition = f'form-data; name="field{index}"'
        parts.append(
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
            + content
            + b"\r\n"
        )
    body = b"".join(parts) + (f"--{boundary}--\r\n".encode() if draw(st.booleans()) else b"")
    if draw(st.booleans()):
        body = body[: draw(st.integers(0, len(body)))]
    content_type = draw(
        st.sampled_from(
            [
                f"multipart/form-data; boundary={boundary}",
                "multipart/form-data",
                "multipart/form-data; boundary=other",
            ]
        )
    )
    return body, content_type


content_types = st.sampled_from(
    [
        "application/json",
        "application/json; charset=latin-1",
        "application/x-npy",
        "image/png",
        "image/svg+xml",
        "text/plain",
        "",
        "application/vnd.api+json",
        "multipart/form-data",
    ]
)
queries = st.one_of(
    st.sampled_from(
        [
            "",
            "?explain=1",
            "?version=2",
            "?version=1&explain=true",
            "?alias=production",
            "?alias=latest",
            "?version=99",
        ]
    ),
    st.builds(
        lambda key, value: f"?{key}={value}",
        st.sampled_from(["version", "alias", "explain", "x"]),
        st.from_regex(r"[ -~]{0,12}", fullmatch=True).map(
            lambda t: t.replace("&", "").replace("#", "")
        ),
    ),
)


def assert_answer_is_sound(response, v2: bool = False) -> None:
    assert response.status_code < 500, response.get_data()[:500]
    if response.status_code >= 400:
        document = json.loads(response.get_data())
        if v2:
            assert isinstance(document["error"], str)
        else:
            assert set(document["error"]) == {"code", "message"}


# ------------------------------------------------------------------------------ properties


@FUZZ_SETTINGS
@given(
    body=st.one_of(json_bodies(), npy_bodies(), image_bodies(), st.binary(max_size=3000)),
    content_type=content_types,
    query=queries,
)
def test_predict_never_answers_5xx(fuzz_client, body, content_type, query):
    response = fuzz_client.post(
        "/predict" + query, data=body, headers={"Content-Type": content_type}
    )
    assert_answer_is_sound(response)


@FUZZ_SETTINGS
@given(multipart=multipart_bodies(), query=queries)
def test_predict_multipart_never_answers_5xx(fuzz_client, multipart, query):
    body, content_type = multipart
    response = fuzz_client.post(
        "/predict" + query, data=body, headers={"Content-Type": content_type}
    )
    assert_answer_is_sound(response)


tensor_shapes = st.one_of(
    st.sampled_from(
        [[1, 28, 28], [2, 1, 28, 28], [1, 784], [0, 784], [9, 784], [1, 27, 28], [], [1]]
    ),
    st.lists(st.integers(-2, 1000) | st.text(max_size=2) | st.none(), max_size=5),
)
v2_tensors = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["input", "x", ""]) | st.none(),
        "shape": tensor_shapes,
        "datatype": st.sampled_from(["FP32", "UINT8", "FP16", "INT64", "BOOL", "BYTES", "fp32"])
        | st.none(),
    },
    optional={
        "data": st.one_of(
            json_values, flat_like, st.just([0] * 784), st.just(synthetic_digit().tolist())
        ),
        "parameters": st.one_of(
            json_values,
            st.fixed_dictionaries({"binary_data_size": st.integers(-5, 5000) | json_values}),
        ),
    },
)
v2_documents = st.fixed_dictionaries(
    {"inputs": st.one_of(st.lists(v2_tensors, max_size=3), json_values)},
    optional={
        "id": json_values,
        "parameters": st.one_of(
            json_values, st.fixed_dictionaries({"binary_data_output": json_values})
        ),
        "outputs": st.one_of(
            json_values,
            st.lists(
                st.fixed_dictionaries(
                    {"name": st.sampled_from(["label", "probabilities", "other"]) | json_values},
                    optional={
                        "parameters": st.fixed_dictionaries({"binary_data": json_values})
                        | json_values
                    },
                ),
                max_size=3,
            ),
        ),
    },
)


@FUZZ_SETTINGS
@given(
    document=st.one_of(v2_documents, json_values),
    tail=st.binary(max_size=4000),
    header=st.one_of(st.none(), st.just("exact"), st.from_regex(r"[ -~]{0,6}", fullmatch=True)),
    path=st.sampled_from(
        [
            "/v2/models/mnist/infer",
            "/v2/models/mnist/versions/2/infer",
            "/v2/models/mnist/versions/x/infer",
        ]
    ),
)
def test_v2_infer_never_answers_5xx(fuzz_client, document, tail, header, path):
    head = json.dumps(document).encode()
    headers = {"Content-Type": "application/json"}
    if header == "exact":
        headers["Inference-Header-Content-Length"] = str(len(head))
    elif header is not None:
        headers["Inference-Header-Content-Length"] = header
    body = head + tail if header is not None else head
    response = fuzz_client.post(path, data=body, headers=headers)
    assert_answer_is_sound(response, v2=True)
