"""JSON -> arrays of pixel values: the ``/predict`` JSON body, and lists of images in general
(the V2 protocol's ``data`` is brought to the same list-of-images form by service/v2.py).

Only what an array cannot express is checked here: that every value is a JSON number (not a
string, boolean, null, list or object) and that lists nest evenly, each error naming where the
problem is (``images[3][5][7]: expected a number, got a string``). Shape, batch size and the
0-255 range are ``validate.pixel_batch``'s job, the same for every way in.
"""

from __future__ import annotations

from numbers import Real

import numpy as np
import orjson

from service.errors import BadRequest, PayloadTooLarge
from service.inputs.validate import InputSpec, check_batch_size, describe_bad_number

# Separators a JSON body may hold besides those between pixel values (keys, objects, the V2
# request's fields): generous, since all it guards is memory.
_SPARE_SEPARATORS = 4096


def parse_json(body: bytes | str) -> object:
    """A request body -> the JSON value; BadRequest naming what is wrong with it.

    orjson rejects NaN/Infinity tokens, numbers beyond float64 and nesting deeper than 1024.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(_describe_json_error(body, exc)) from None


def check_json_value_count(raw: bytes, spec: InputSpec) -> None:
    """PayloadTooLarge for a JSON body holding more values than MAX_BATCH images have pixels,
    counted before parsing: every value after the first follows a comma, and one parsed
    value costs a Python object (~32 bytes), so 10 MiB of short numbers would take ~160 MiB
    to parse only to be refused. Counting commas is a memchr over the bytes."""
    limit = spec.max_batch * spec.image_values + _SPARE_SEPARATORS
    values = raw.count(b",") + 1
    if values > limit:
        raise PayloadTooLarge(
            f"the JSON body holds about {values} values; {spec.max_batch} images (MAX_BATCH) "
            f"of {spec.image_values} pixels need at most {limit}"
        )


def _describe_json_error(body: bytes | str, exc: Exception) -> str:
    raw = body.encode() if isinstance(body, str) else bytes(body)
    if not raw.strip():
        return 'empty body: expected JSON {"image": [...]} or {"images": [...]}'
    if b"NaN" in raw or b"Infinity" in raw:
        return "malformed JSON: NaN and Infinity are not numbers in JSON (pixels are 0-255)"
    message = str(exc)
    if "depth limit" in message or "recursion" in message.lower():
        return f"malformed JSON: nested too deeply ({message})"
    return f"malformed JSON: {message}"


def predict_body_values(body: bytes | str, spec: InputSpec) -> tuple[np.ndarray, str, bool]:
    """A ``/predict`` JSON body -> (values, where, single) for ``validate.pixel_batch``.

    ``{"image": <HxW nested list or H*W flat list>}`` or ``{"images": [<each as above>]}``.
    The hot path: a body that can only hold numbers skips the per-element type checks. The
    only strings a valid body holds are the key "image"/"images" (two quotes, no 'u' or 'l');
    without more quotes and without the letters of true/false/null every value is a number,
    list or empty object.
    """
    raw = body.encode() if isinstance(body, str) else bytes(body)
    check_json_value_count(raw, spec)
    numbers_only = raw.count(b'"') == 2 and b"u" not in raw and b"l" not in raw
    return predict_payload_values(parse_json(raw), spec, numbers_only=numbers_only)


def predict_payload_values(
    payload: object, spec: InputSpec, *, numbers_only: bool = False
) -> tuple[np.ndarray, str, bool]:
    """An already parsed ``/predict`` JSON payload -> (values, where, single)."""
    images, single = _unpack_payload(payload, spec)
    where = "image" if single else "images"
    values = images_array(images, spec, where, single=single, numbers_only=numbers_only)
    return (values[0] if single else values), where, single


def _unpack_payload(payload: object, spec: InputSpec) -> tuple[list, bool]:
    """-> (list of images as given, whether it was the single "image" form)."""
    if not isinstance(payload, dict):
        raise BadRequest(
            f'expected a JSON object {{"image": ...}} or {{"images": [...]}}, '
            f"got {describe_value(payload)}"
        )
    unknown = sorted(_quote(key) for key in payload if key not in ("image", "images"))
    if unknown:
        raise BadRequest(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: "
            'expected only "image" or "images" (model selection goes in ?version= or ?alias=)'
        )
    if "image" in payload and "images" in payload:
        raise BadRequest('give either "image" or "images", not both')
    if "image" in payload:
        return [payload["image"]], True
    if "images" not in payload:
        raise BadRequest('expected a JSON object with "image" or "images", got an empty object')
    images = payload["images"]
    if not isinstance(images, list):
        raise BadRequest(f"images: expected a list of images, got {describe_value(images)}")
    check_batch_size(len(images), spec, "images")
    return images, False


def _quote(key: object) -> str:
    """A key for an error message: quoted and cut short if a string, else its type."""
    if isinstance(key, str):
        return f'"{key[:40]}..."' if len(key) > 40 else f'"{key}"'
    return f"<{type(key).__name__}>"  # repr() of a 5000-digit int raises; keep it simple


def images_array(
    images: list, spec: InputSpec, where: str, *, single: bool = False, numbers_only: bool = False
) -> np.ndarray:
    """A list of images, each H rows of W numbers or H*W numbers -> an array (N, H, W) or
    (N, H*W) of the values as sent (uint8 or float64); BadRequest naming the first element
    that is not a number or a list of the wrong length (``where[i]...``, or ``where...`` when
    ``single``). ``numbers_only``: the caller has ruled out strings, booleans and null in the
    whole body, so NumPy may convert directly (else the images' element types are checked
    first, at C speed, for the same conclusion)."""
    if numbers_only or _plain_numbers(images):
        values = _try_byte_conversion(images, spec)
        if values is None:
            values = _try_float_conversion(images, spec)
        if values is not None:
            return values
    # The strict path: walks every element and says exactly where the first problem is.
    arrays = [
        _image_from_nested_list(image, where if single else f"{where}[{index}]", spec)
        for index, image in enumerate(images)
    ]
    if len({array.shape for array in arrays}) > 1:  # nested and flat images mixed
        arrays = [array.reshape(spec.image_shape) for array in arrays]
    return np.stack(arrays)


def _plain_numbers(images: list) -> bool:
    """True when every image is a list of ints and floats (no bool, None, str), flat or in
    rows; the strict path below says what is wrong otherwise."""
    for image in images:
        if type(image) is not list:
            return False
        rows = image if image and type(image[0]) is list else (image,)
        for row in rows:
            if type(row) is not list or not set(map(type, row)) <= _PLAIN_NUMBER_TYPES:
                return False
    return True


def _try_byte_conversion(images: list, spec: InputSpec) -> np.ndarray | None:
    """Images of plain integers 0-255 (what clients send) -> uint8 (N, H, W), else None.

    ``bytes(list)`` converts and range-checks a list of small integers in C, several times
    faster than NumPy's nested-list conversion (8 against 20 us for one image). Anything else
    (floats, values outside 0-255, other shapes) answers None and takes the general path. The
    caller has ruled out booleans, which ``bytes`` would take as 0 and 1.
    """
    height, width = spec.image_shape
    rows = []
    for image in images:
        if type(image) is not list:
            return None
        if len(image) == spec.image_values:
            rows.append(image)
        elif len(image) == height:
            for row in image:
                if type(row) is not list or len(row) != width:
                    return None
            rows.extend(image)
        else:
            return None
    try:
        data = b"".join(map(bytes, rows))  # every row is a list: bytes(n) is never called
    except (TypeError, ValueError, OverflowError):
        return None
    return np.frombuffer(data, dtype=np.uint8).reshape(len(images), height, width)


def _try_float_conversion(images: list, spec: InputSpec) -> np.ndarray | None:
    """One NumPy call for well-formed input -> float64 (N, H*W) or (N, H, W), else None."""
    try:
        values = np.array(images, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        return None
    if values.shape[1:] in (tuple(spec.image_shape), (spec.image_values,)):
        return values
    return None


def _image_from_nested_list(image: object, where: str, spec: InputSpec) -> np.ndarray:
    """One image as H rows of W numbers or H*W numbers -> float64 of the same shape; every
    element's type is checked (no strings, bools, nulls)."""
    height, width = spec.image_shape
    expected = f"{height}x{width} or {spec.image_values} values"
    if not isinstance(image, list):
        raise BadRequest(f"{where}: expected {expected}, got {describe_value(image)}")
    if len(image) == spec.image_values:
        _check_numbers(image, where)
    elif len(image) == height and any(isinstance(row, list) for row in image):
        for row_index, row in enumerate(image):
            row_where = f"{where}[{row_index}]"
            if not isinstance(row, list):
                raise BadRequest(
                    f"{row_where}: expected a row of {width} numbers, got {describe_value(row)}"
                )
            if len(row) != width:
                raise BadRequest(
                    f"{row_where}: expected a row of {width} numbers, got {_count(row)}"
                )
            _check_numbers(row, row_where)
    else:
        raise BadRequest(f"{where}: expected {expected}, got {_count(image)}")
    try:
        return np.array(image, dtype=np.float64)
    except OverflowError:  # an integer beyond float64: name it
        _raise_huge_integer(image, where, spec)
        raise  # unreachable: _raise_huge_integer always raises


# Exact types JSON parsers produce for numbers; anything else takes the slower ABC check.
_PLAIN_NUMBER_TYPES = frozenset({int, float})


def _check_numbers(values: list, where: str) -> None:
    """Raise BadRequest naming the first element of a flat list that is not a real number."""
    if set(map(type, values)) <= _PLAIN_NUMBER_TYPES:
        return
    for index, value in enumerate(values):
        if isinstance(value, bool | np.bool_) or not isinstance(value, Real):
            raise BadRequest(f"{where}[{index}]: expected a number, got {describe_value(value)}")


def _raise_huge_integer(image: list, where: str, spec: InputSpec) -> None:
    """``image`` (types checked) holds an integer float64 cannot hold: name the first one."""
    flat = len(image) == spec.image_values
    for row_index, row in enumerate([image] if flat else image):
        for column, value in enumerate(row):
            if not 0 <= value <= 255:
                prefix = where if flat else f"{where}[{row_index}]"
                raise BadRequest(f"{prefix}[{column}]: {describe_bad_number(value)}")
    raise BadRequest(f"{where}: values must be numbers within 0-255")


def _count(items: list) -> str:
    if not items:
        return "an empty list"
    if all(isinstance(item, Real) and not isinstance(item, bool) for item in items):
        return f"a list of {len(items)} number{'s' if len(items) != 1 else ''}"
    return f"a list of {len(items)}"


def describe_value(value: object) -> str:
    """A short description of a JSON-ish value for error messages ("a string", "null")."""
    if value is None:
        return "null"
    if isinstance(value, bool | np.bool_):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Real):
        return "a number"
    if isinstance(value, list):
        return _count(value)
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"
