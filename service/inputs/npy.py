"""``application/x-npy`` bodies (``numpy.save`` output) -> arrays of pixel values.

The header is read and checked (shape, dtype, batch size) before any data is touched, so a
forged shape cannot make us allocate; object arrays (pickle) are refused. The values
themselves are checked by ``validate.pixel_batch``, as for every other way in.
"""

from __future__ import annotations

import io
import math

import numpy as np

from service.errors import BadRequest
from service.inputs.validate import InputSpec, batch_count, check_batch_size


def npy_values(body: bytes, spec: InputSpec) -> tuple[np.ndarray, str, bool]:
    """A ``.npy`` body -> (values, where, single) for ``validate.pixel_batch``.

    The array is (H, W) for one image, or a batch (N, H, W) / (N, 1, H, W) / (N, H*W), of any
    real numeric dtype (integers or floats, any byte order).
    """
    stream = io.BytesIO(body)
    shape, fortran_order, dtype = _read_header(stream)
    if dtype.hasobject:
        raise BadRequest(".npy object arrays are not accepted (they need pickle)")
    if dtype.kind not in "iuf" or dtype.subdtype is not None:
        raise BadRequest(f".npy dtype {dtype} is not a real number type (integers or floats)")
    single = len(shape) == 2 and shape == tuple(spec.image_shape)
    where = "image" if single else "images"
    count = batch_count(shape, spec, where, single=single)
    check_batch_size(count, spec, where)
    data = memoryview(body)[stream.tell() :]
    expected_bytes = math.prod(shape) * dtype.itemsize
    if len(data) != expected_bytes:
        problem = "truncated" if len(data) < expected_bytes else "trailing bytes after the data"
        raise BadRequest(
            f".npy array {problem}: shape {shape} {dtype} needs {expected_bytes} bytes "
            f"of data, got {len(data)}"
        )
    values = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran_order else "C")
    return values, where, single


def _read_header(stream: io.BytesIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(stream)
    except ValueError:
        raise BadRequest("not a .npy file: the body does not start with the NumPy magic") from None
    try:
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(stream)
        if version == (2, 0):
            return np.lib.format.read_array_header_2_0(stream)
    except (ValueError, TypeError, SyntaxError) as exc:
        raise BadRequest(f"malformed .npy header: {exc}") from None
    raise BadRequest(f".npy format version {version[0]}.{version[1]} is not supported")
