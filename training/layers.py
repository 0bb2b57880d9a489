"""The layers of the network, used by training and serving alike.

Each layer is a small class in the style of *Deep Learning from Scratch* (`common/layers.py`):

- ``forward(x, train=True)`` computes the output. With ``train=True`` the layer keeps what its
  backward needs; with ``train=False`` (inference, what the service calls) it keeps nothing.
- ``backward(dout)`` takes dL/d(output) and returns dL/d(input), leaving parameter gradients in
  ``d<name>`` attributes (``dW``, ``db``, ...). It never modifies ``dout`` in place.

Images are NCHW: (batch, channels, height, width). The dtype follows the layer's weights, so a
float32 network computes in float32 and a float64 one (gradient checks) in float64.

Memory layout: the image layers accept NCHW arrays of any strides, and the 4-D arrays they create
are stored channels-first, batch-last ("CHWN": element (n, c, h, w) at ``base[c, h, w, n]``) and
returned as NCHW *views* of that storage. In that layout the patch matrix of a convolution is one
copy with long contiguous runs, its output is the matrix product itself (no transpose), and a
(C, H, W) feature map flattens for the dense layer as a free view. The values are the same
whatever the strides; only ``.flags`` tell the difference.

``ConvPool`` runs conv -> [ReLU] -> max-pool as one step with the same layer objects and math
(see its docstring); ``Network`` uses it where the pattern occurs.
"""

from __future__ import annotations

import math
import threading

import numpy as np
from scipy.special import expit, log_expit


class Layer:
    """Base class. ``param_names`` are trained by the optimizer; ``buffer_names`` are saved in the
    bundle but not trained (BatchNorm's running statistics)."""

    param_names: tuple[str, ...] = ()
    buffer_names: tuple[str, ...] = ()

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dout: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def params(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in self.param_names}

    def grads(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, "d" + name) for name in self.param_names}

    def buffers(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in self.buffer_names}


def _positive_int(value, what: str) -> int:
    if int(value) != value or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _non_negative_int(value, what: str) -> int:
    if int(value) != value or value < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {value!r}")
    return int(value)


def _window_output_size(size: int, window: int, stride: int, pad: int, what: str) -> int:
    out = (size + 2 * pad - window) // stride + 1
    if out < 1:
        raise ValueError(
            f"{what}: window {window} with stride {stride} and pad {pad} does not fit input "
            f"size {size}"
        )
    return out


# --------------------------------------------------------------------------- layout helpers


def _chwn_storage(
    x: np.ndarray, pad: int = 0, fill: float = 0.0, out: np.ndarray | None = None
) -> np.ndarray:
    """NCHW x (any strides) -> C-contiguous (C, H + 2*pad, W + 2*pad, N), border set to ``fill``.

    Without ``out``, no copy when x already is an NCHW view of contiguous CHWN storage and pad
    is 0; with ``out`` (C-contiguous, the right shape) the result is written there.
    """
    chwn = x.transpose(1, 2, 3, 0)
    if not pad:
        if out is None:
            return np.ascontiguousarray(chwn)
        np.copyto(out, chwn)
        return out
    c, h, w, n = chwn.shape
    padded = np.empty((c, h + 2 * pad, w + 2 * pad, n), x.dtype) if out is None else out
    # Only the border is filled: the interior is written once, by the copy.
    padded[:, :pad] = fill
    padded[:, -pad:] = fill
    padded[:, pad:-pad, :pad] = fill
    padded[:, pad:-pad, -pad:] = fill
    padded[:, pad:-pad, pad:-pad] = chwn
    return padded


def _nchw_view(storage: np.ndarray, shape_chwn: tuple[int, int, int, int]) -> np.ndarray:
    """Contiguous CHWN storage -> the (N, C, H, W) view of it (no copy)."""
    return storage.reshape(shape_chwn).transpose(3, 0, 1, 2)


def _strided_view(base: np.ndarray, shape: tuple[int, ...], strides: tuple[int, ...]):
    """A read-only view of the C-contiguous ``base`` with the given shape and byte strides.

    ``numpy.lib.stride_tricks.as_strided`` does the same with several microseconds of Python
    around it; at batch 1 that is a tenth of a forward pass. The caller guarantees every index
    stays inside ``base``.
    """
    view = np.ndarray(shape, base.dtype, buffer=base, strides=strides)
    view.flags.writeable = False
    return view


class _Workspace(threading.local):
    """Arrays a layer reuses from call to call instead of allocating them.

    Why: a fresh multi-megabyte array costs a page fault per 4 KiB when first written (the
    allocator hands big freed blocks back to the OS), and on the VMs this runs on those faults
    took as long as the arithmetic. One set of arrays per thread, so concurrent inference calls
    never share one. Only scratch lives here, never an array returned to a caller; training
    and inference use different names, so an inference call between a training forward and its
    backward cannot overwrite what the backward needs.
    """

    def __reduce__(self):
        # Copies and pickles of a layer get an empty workspace of their own (and stay possible:
        # thread-local storage itself cannot be pickled).
        return (_Workspace, ())

    def array(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        """An uninitialised C-contiguous array: the front of a buffer kept under ``name``,
        which only grows, so alternating sizes (a batch's last, smaller chunk; training and
        validation batches) reuse it too."""
        buffers = self.__dict__.setdefault("buffers", {})
        size = math.prod(shape)
        buffer = buffers.get(name)
        if buffer is None or buffer.size < size or buffer.dtype != dtype:
            buffer = buffers[name] = np.empty(size, dtype)
        return buffer[:size].reshape(shape)


def _running_max(
    candidates: list[np.ndarray],
    keep_masks: bool,
    out: np.ndarray | None = None,
    mask_out: list[np.ndarray] | None = None,
):
    """Elementwise maximum of equally shaped arrays ("the window positions of a max-pool").

    Returns (maximum, masks); the maximum goes to ``out`` and the masks to ``mask_out`` when
    given. With ``keep_masks``, ``masks[q - 1]`` is True where candidate q is strictly greater
    than every candidate before it; the *first* position holding the maximum is then the last q
    whose mask is True (0 if none), which is where backward sends the gradient. Strict
    comparison is what makes ties go to the first position.
    """
    if mask_out is None:
        mask_out = [None] * (len(candidates) - 1)
    masks = []
    if len(candidates) == 1:
        if out is None:
            return candidates[0].copy(), masks
        np.copyto(out, candidates[0])
        return out, masks
    if keep_masks:
        masks.append(np.greater(candidates[1], candidates[0], out=mask_out[0]))
    best = np.maximum(candidates[0], candidates[1], out=out)
    for q, candidate in enumerate(candidates[2:], start=2):
        if keep_masks:
            masks.append(np.greater(candidate, best, out=mask_out[q - 1]))
        np.maximum(best, candidate, out=best)
    return best, masks


def _first_max_indicators(first: np.ndarray) -> np.ndarray:
    """Turn the strict-greater masks of ``_running_max`` into first-maximum indicators, in place.

    first: bool (Q, ...) with first[q] (q >= 1) holding ``masks[q - 1]`` on entry (candidate q
    beats every candidate before it); first[0] is scratch. On return first[q] is True exactly
    where candidate q is the *first* position holding the maximum: the last q whose mask is True,
    or 0 if none. Backward then routes a gradient as ``grad * first[q]`` (exact: grad * 1 or
    grad * 0), one multiply per candidate. Only booleans are touched here (a quarter of the bytes
    of the float passes this replaces: multiply-and-subtract over the gradient per candidate).
    """
    later = first[0]  # "some later candidate is the maximum", accumulated from the back
    if len(first) == 1:
        later.fill(False)
    else:
        np.copyto(later, first[-1])
    for q in range(len(first) - 2, 0, -1):
        np.greater(first[q], later, out=first[q])  # for booleans a > b is a and not b
        np.logical_or(later, first[q], out=later)
    np.logical_not(later, out=later)
    return first


# --------------------------------------------------------------------------- layers


class Conv2D(Layer):
    """2-D convolution (cross-correlation, as in every deep-learning library).

    W: (filters, channels, kh, kw); b: (filters,). Input x: (N, channels, H, W);
    output: (N, filters, OH, OW) with OH = (H + 2*pad - kh) // stride + 1.

    The input is unfolded once into a patch matrix (im2col: one copy through a strided view,
    in CHWN layout so the copy moves runs of N contiguous values) and the convolution is one
    matrix product W (filters, C*kh*kw) @ patches (C*kh*kw, OH*OW*N), whose result already is
    the output in CHWN storage.
    Set ``needs_input_grad = False`` on a first layer: nothing upstream learns, so its
    backward skips the input gradient (returns None) and saves a third of the work.
    """

    param_names = ("W", "b")
    small_product = 800_000  # M*N*K of the backward's matrix products (see _column_chunk)

    def __init__(self, W, b, stride: int = 1, pad: int = 0):
        W = np.asarray(W)
        if W.ndim != 4:
            raise ValueError(f"Conv2D W must be (filters, channels, kh, kw), got shape {W.shape}")
        if not np.issubdtype(W.dtype, np.floating):
            raise ValueError(f"Conv2D W must be floating point, got dtype {W.dtype}")
        b = np.asarray(b)
        if b.shape != (W.shape[0],):
            raise ValueError(f"Conv2D b must have shape ({W.shape[0]},), got {b.shape}")
        self.W = W
        self.b = b.astype(W.dtype, copy=False)
        self.stride = _positive_int(stride, "Conv2D stride")
        self.pad = _non_negative_int(pad, "Conv2D pad")
        self.dW: np.ndarray | None = None
        self.db: np.ndarray | None = None
        self.needs_input_grad = True
        self._cache = None
        self._workspace = _Workspace()

    def output_shape(self, input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """(C, H, W) -> (filters, OH, OW) for one image."""
        channels, height, width = input_shape
        filters, w_channels, kh, kw = self.W.shape
        if channels != w_channels:
            raise ValueError(f"Conv2D expects {w_channels} input channels, got {channels}")
        oh = _window_output_size(height, kh, self.stride, self.pad, "Conv2D")
        ow = _window_output_size(width, kw, self.stride, self.pad, "Conv2D")
        return filters, oh, ow

    def _checked_input(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=self.W.dtype)
        if x.ndim != 4:
            raise ValueError(f"Conv2D input must be (N, C, H, W), got shape {x.shape}")
        return x

    def _unfold(self, padded: np.ndarray, rows: int, cols: int, pool: int, purpose: str):
        """Patch matrix (C*kh*kw, pool*pool*rows*cols*N) of the padded CHWN input, in the
        workspace array named ``purpose + ".patches"``.

        Column order (qi, qj, r, c, n) for the output position (pool*r + qi, pool*c + qj): with
        pool 1 that is plain (oh, ow, n); with pool k the k*k positions of each k x k pooling
        window land in k*k contiguous blocks, so pooling is an elementwise max of blocks.
        """
        channels, _, _, n = padded.shape
        _, _, kh, kw = self.W.shape
        sc, sh, sw, sn = padded.strides
        s = self.stride
        shape = (channels, kh, kw, pool, pool, rows, cols, n)
        strides = (sc, sh, sw, s * sh, s * sw, s * pool * sh, s * pool * sw, sn)
        patches = self._workspace.array(
            purpose + ".patches", (channels * kh * kw, pool * pool * rows * cols * n), padded.dtype
        )
        np.copyto(patches.reshape(shape), _strided_view(padded, shape, strides))
        return patches

    def _padded_input(self, x: np.ndarray, purpose: str) -> np.ndarray:
        """x (N, C, H, W) -> zero-padded C-contiguous CHWN array: x's own storage when that
        already is one (a single image, or the output of a layer before), else a copy in the
        workspace."""
        n, c, h, w = x.shape
        p = self.pad
        if not p and x.transpose(1, 2, 3, 0).flags.c_contiguous:
            return x.transpose(1, 2, 3, 0)
        shape = (c, h + 2 * p, w + 2 * p, n)
        out = self._workspace.array(purpose + ".padded", shape, x.dtype)
        return _chwn_storage(x, p, out=out)

    def _fold(self, dpatches: np.ndarray, dx_padded: np.ndarray, rows: int, cols: int, pool):
        """Adjoint of ``_unfold``: add each patch gradient back onto the input position it read,
        into ``dx_padded`` (padded CHWN, any strides: it may be one chunk of a batch)."""
        channels, _, _, n = dx_padded.shape
        _, _, kh, kw = self.W.shape
        s = self.stride
        step = s * pool
        d = dpatches.reshape(channels, kh, kw, pool, pool, rows, cols, n)
        for i in range(kh):
            for j in range(kw):
                for qi in range(pool):
                    for qj in range(pool):
                        top, left = i + s * qi, j + s * qj
                        dx_padded[
                            :,
                            top : top + step * (rows - 1) + 1 : step,
                            left : left + step * (cols - 1) + 1 : step,
                        ] += d[:, i, j, qi, qj]

    def _filter_responses(self, patches: np.ndarray, out: np.ndarray | None = None, chunked=False):
        """W (filters, C*kh*kw) @ patches -> (filters, patch columns), without the bias.

        ``chunked`` (training): in column chunks as backward's products (``_column_chunk``), one
        stacked ``matmul`` call; 0.80 -> 0.46 ms for 50 images. Inference keeps one product, so
        what the service computes is unchanged; the two agree to float rounding.
        """
        weights = self.W.reshape(self.W.shape[0], -1)
        columns, chunk = patches.shape[1], self._column_chunk() if chunked else None
        if chunk is None or columns < 2 * chunk:
            return np.matmul(weights, patches, out=out)
        if out is None:
            out = np.empty((weights.shape[0], columns), patches.dtype)
        count = columns // chunk
        whole = count * chunk
        stacked_out = out[:, :whole].reshape(-1, count, chunk).transpose(1, 0, 2)  # a view
        stacked_p = patches[:, :whole].reshape(-1, count, chunk).transpose(1, 0, 2)
        np.matmul(weights, stacked_p, out=stacked_out)
        if whole < columns:
            np.matmul(weights, patches[:, whole:], out=out[:, whole:])
        return out

    def _column_chunk(self) -> int | None:
        """Patch columns per matrix product in backward, or None for one product.

        The backward products pair (filters) with (C*kh*kw) over tens of thousands of patch
        columns. OpenBLAS multiplies small matrices (M*N*K up to about a million) with kernels
        that skip its packing step; cut into column chunks under ``small_product`` the weight
        gradient of SimpleConvNet (30 x 28,800 @ 28,800 x 25, one thread) took 0.65 ms instead
        of 1.0 ms. Wide layers, whose chunks would be tiny, keep one product.
        """
        chunk = self.small_product // (self.W.shape[0] * self.W[0].size) // 64 * 64
        return chunk if chunk >= 256 else None

    def _weight_gradient(self, dresponses: np.ndarray, patches: np.ndarray) -> np.ndarray:
        """dL/dW from dL/d(responses) (filters, patch columns) and the patches they came from:
        one product per column chunk (``_column_chunk``), all in one stacked ``matmul`` call,
        then their sum."""
        filters, width = dresponses.shape[0], patches.shape[0]
        columns, chunk = patches.shape[1], self._column_chunk()
        if chunk is None or columns < 2 * chunk:
            return (dresponses @ patches.T).reshape(self.W.shape)
        count = columns // chunk
        whole = count * chunk
        stacked_d = dresponses[:, :whole].reshape(filters, count, chunk).transpose(1, 0, 2)
        stacked_p = patches[:, :whole].reshape(width, count, chunk).transpose(1, 2, 0)
        dW = np.matmul(stacked_d, stacked_p).sum(axis=0)
        if whole < columns:
            dW += dresponses[:, whole:] @ patches[:, whole:].T
        return dW.reshape(self.W.shape)

    def _add_input_gradient(self, dresponses, dx_padded, rows: int, cols: int, pool: int):
        """Add dL/d(input) for dL/d(responses) (filters, patch columns, ordered as ``_unfold``
        with these rows, cols, pool) to ``dx_padded`` (padded CHWN, any strides)."""
        filters = self.W.shape[0]
        dpatches = self._workspace.array(
            "train.dpatches", (self.W[0].size, dresponses.shape[1]), dresponses.dtype
        )
        weights_t = self.W.reshape(filters, -1).T
        chunk = self._column_chunk() or dresponses.shape[1]
        for start in range(0, dresponses.shape[1], chunk):
            part = slice(start, start + chunk)
            np.matmul(weights_t, dresponses[:, part], out=dpatches[:, part])
        self._fold(dpatches, dx_padded, rows, cols, pool)

    def _unpadded(self, dx_padded: np.ndarray) -> np.ndarray:
        """Padded CHWN gradient -> the NCHW view of its interior."""
        p = self.pad
        if p:
            dx_padded = dx_padded[:, p:-p, p:-p]
        return dx_padded.transpose(3, 0, 1, 2)

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        x = self._checked_input(x)
        filters, oh, ow = self.output_shape(x.shape[1:])
        purpose = "train" if train else "infer"
        padded = self._padded_input(x, purpose)
        patches = self._unfold(padded, oh, ow, 1, purpose)
        out = self._filter_responses(patches, chunked=train)
        out += self.b[:, None]
        self._cache = (patches, padded.shape, oh, ow) if train else None
        return _nchw_view(out, (filters, oh, ow, x.shape[0]))

    def backward(self, dout: np.ndarray) -> np.ndarray | None:
        if self._cache is None:
            raise RuntimeError("Conv2D.backward called without a training forward")
        patches, padded_shape, oh, ow = self._cache
        dresponses = _chwn_storage(dout).reshape(self.W.shape[0], -1)
        self.db = dresponses.sum(axis=1)
        self.dW = self._weight_gradient(dresponses, patches)
        if not self.needs_input_grad:
            return None
        dx = np.zeros(padded_shape, dtype=patches.dtype)
        self._add_input_gradient(dresponses, dx, oh, ow, 1)
        return self._unpadded(dx)


class MaxPool2D(Layer):
    """Max pooling over (size × size) windows. Input (N, C, H, W) -> (N, C, OH, OW).

    Backward sends each window's gradient to the *first* position holding the maximum (as the
    book and PyTorch do). MNIST has exact ties inside windows (flat saturated strokes); a mask
    of all maxima would send the gradient to every tied position and be wrong.

    The maximum is a running elementwise max over the size*size window offsets, each a strided
    view of the input (no window copy, no argmax over a short axis).
    """

    def __init__(self, size: int = 2, stride: int | None = None, pad: int = 0):
        self.size = _positive_int(size, "MaxPool2D size")
        self.stride = _positive_int(self.size if stride is None else stride, "MaxPool2D stride")
        self.pad = _non_negative_int(pad, "MaxPool2D pad")
        self._cache = None

    def output_shape(self, input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        channels, height, width = input_shape
        oh = _window_output_size(height, self.size, self.stride, self.pad, "MaxPool2D")
        ow = _window_output_size(width, self.size, self.stride, self.pad, "MaxPool2D")
        return channels, oh, ow

    def _offsets(self, oh: int, ow: int) -> list[tuple[slice, slice]]:
        """(rows, cols) slices of each window offset, in row-major window order."""
        k, s = self.size, self.stride
        return [
            (slice(i, i + s * (oh - 1) + 1, s), slice(j, j + s * (ow - 1) + 1, s))
            for i in range(k)
            for j in range(k)
        ]

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        if x.ndim != 4:
            raise ValueError(f"MaxPool2D input must be (N, C, H, W), got shape {x.shape}")
        _, oh, ow = self.output_shape(x.shape[1:])
        if self.pad:
            x = _chwn_storage(x, self.pad, fill=-np.inf).transpose(3, 0, 1, 2)
        candidates = [x[:, :, rows, cols] for rows, cols in self._offsets(oh, ow)]
        if not train:
            self._cache = None
            return _running_max(candidates, keep_masks=False)[0]
        # Indicators stored (window offset, C, OH, OW, N), like the gradient parts of backward.
        n, c = x.shape[:2]
        first = np.empty((len(candidates), c, oh, ow, n), np.bool_)
        mask_out = [part.transpose(3, 0, 1, 2) for part in first[1:]]
        out, _ = _running_max(candidates, keep_masks=True, mask_out=mask_out)
        self._cache = (_first_max_indicators(first), x.shape, x.dtype)
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        if self._cache is None:
            raise RuntimeError("MaxPool2D.backward called without a training forward")
        first, (n, c, h, w), dtype = self._cache
        _, _, oh, ow = dout.shape
        # parts[q]: the gradient of the window offset q, (C, OH, OW, N).
        parts = np.multiply(dout.transpose(1, 2, 3, 0)[None], first, dtype=dtype)
        dx = np.zeros((c, h, w, n), dtype=dtype)
        for part, (rows, cols) in zip(parts, self._offsets(oh, ow), strict=True):
            # += rather than =: with stride < size the windows overlap.
            dx[:, rows, cols] += part
        p = self.pad
        if p:
            dx = dx[:, p:-p, p:-p]
        return dx.transpose(3, 0, 1, 2)


class ConvPool:
    """conv -> [ReLU] -> max-pool (size k, stride k, no padding) as one step: the same layer
    objects, the same math, less memory traffic.

    - The conv's patch columns are ordered so the k*k positions of each pooling window form k*k
      contiguous blocks (``Conv2D._unfold`` with ``pool=k``); pooling is then an elementwise
      running max of whole blocks (``_running_max``, as in ``MaxPool2D``). Positions no window
      covers (odd sizes) are never computed: they do not reach the output.
    - Max-pooling runs *before* the bias and ReLU: max commutes with the per-channel increasing
      map t -> max(t + b, 0), so the output is the same, with k*k times fewer elementwise
      operations. Backward routes each window's gradient to its first maximum of the bias-free
      responses; that is where the layers in sequence route it too, except when adding the
      bias rounds two different responses to the same float (then this picks the true larger).
    - The batch goes through in chunks of images (``inference_chunk``, ``training_chunk``),
      which bounds the workspace (at inference about 16 MB float32 per thread for 28x28 inputs
      and 30 filters). Chunks are large on purpose: smaller ones keep the responses in cache
      and used less CPU time, but every chunk is one more multithreaded BLAS call, and on a
      busy machine each such call can wait for a descheduled BLAS thread (batch 1000 at load
      4 on 2 cores: 32-image chunks 544 ms, 128: 154 ms, one chunk: 78 ms).

    Parameters and gradients stay in the conv layer (``conv.dW``, ``conv.db``).
    """

    inference_chunk = 128  # images
    training_chunk = 128

    def __init__(self, conv: Conv2D, relu: ReLU | None, pool: MaxPool2D):
        if not ConvPool.fits(pool):
            raise ValueError("ConvPool needs a max-pool with stride == size and no padding")
        self.conv, self.relu, self.pool = conv, relu, pool
        self._cache = None

    @staticmethod
    def fits(pool: MaxPool2D) -> bool:
        """Whether the pooling windows tile the conv output without overlap or padding."""
        return pool.stride == pool.size and pool.pad == 0

    def _pooled_responses(self, x, out, rows: int, cols: int, purpose: str, train: bool):
        """Max over each pooling window of the bias-free filter responses of x (n, C, H, W),
        written to ``out`` (filters, rows*cols, n). Returns (first-maximum indicators, patches)
        for backward; ``purpose`` names the workspace arrays (a chunk's own in training)."""
        conv, k = self.conv, self.pool.size
        workspace = conv._workspace
        filters, n = conv.W.shape[0], x.shape[0]
        padded = conv._padded_input(x, purpose)
        patches = conv._unfold(padded, rows, cols, k, purpose)
        # Scratch shared by all chunks: only needed until the pooling below.
        responses = workspace.array("responses", (filters, patches.shape[1]), patches.dtype)
        conv._filter_responses(patches, out=responses, chunked=train)
        blocks = responses.reshape(filters, k * k, rows * cols, n)
        if not train:
            # One reduction call instead of k*k - 1: what matters at batch 1 is the call count.
            np.maximum.reduce(blocks, axis=1, out=out)
            return [], None
        # Indicators (filters, k*k, rows*cols, n): the layout of the blocks, so backward routes
        # the gradient to every block with one broadcast multiply.
        first = workspace.array(f"{purpose}.first_max", blocks.shape, np.bool_)
        mask_out = [first[:, q] for q in range(1, k * k)]
        _running_max([blocks[:, q] for q in range(k * k)], True, out=out, mask_out=mask_out)
        return _first_max_indicators(first.swapaxes(0, 1)).swapaxes(0, 1), patches

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        conv = self.conv
        x = conv._checked_input(x)
        n = x.shape[0]
        filters, oh, ow = conv.output_shape(x.shape[1:])
        _, rows, cols = self.pool.output_shape((filters, oh, ow))
        out = np.empty((filters, rows * cols, n), x.dtype)
        size = self.training_chunk if train else self.inference_chunk
        chunks = [slice(start, min(start + size, n)) for start in range(0, n, size)]
        saved = [
            self._pooled_responses(
                x[part], out[:, :, part], rows, cols, f"train{i}" if train else "infer", train
            )
            for i, part in enumerate(chunks)
        ]
        out += conv.b[:, None, None]
        relu_mask = None
        if self.relu is not None:
            if train:
                relu_mask = np.greater(
                    out, 0, out=conv._workspace.array("train.relu_mask", out.shape, np.bool_)
                )
            np.maximum(out, 0, out=out)
        if train:
            p = conv.pad
            padded_shape = (x.shape[1], x.shape[2] + 2 * p, x.shape[3] + 2 * p, n)
            self._cache = (chunks, saved, relu_mask, padded_shape, rows, cols)
        else:
            self._cache = None
        return _nchw_view(out, (filters, rows, cols, n))

    def backward(self, dout: np.ndarray) -> np.ndarray | None:
        if self._cache is None:
            raise RuntimeError("ConvPool.backward called without a training forward")
        chunks, saved, relu_mask, padded_shape, rows, cols = self._cache
        conv, k = self.conv, self.pool.size
        workspace = conv._workspace
        filters = conv.W.shape[0]
        grad = _chwn_storage(dout).reshape(filters, rows * cols, -1)
        if relu_mask is not None:
            grad = np.multiply(
                grad, relu_mask, out=workspace.array("train.grad", grad.shape, grad.dtype)
            )
        # db: every pooled gradient lands on exactly one response, so summing the pooled
        # gradients (k*k times fewer) gives the sum over all responses.
        db = grad.reshape(filters, -1).sum(axis=1)
        dW = None
        dx = np.zeros(padded_shape, dtype=grad.dtype) if conv.needs_input_grad else None
        for part, (first, patches) in zip(chunks, saved, strict=True):
            # Each window's gradient goes to its first maximum: grad * indicator, per block.
            dresponses = workspace.array("train.dresponses", first.shape, grad.dtype)
            np.multiply(grad[:, None, :, part], first, out=dresponses)
            dresponses = dresponses.reshape(filters, -1)
            chunk_dW = conv._weight_gradient(dresponses, patches)
            dW = chunk_dW if dW is None else np.add(dW, chunk_dW, out=dW)
            if dx is not None:
                conv._add_input_gradient(dresponses, dx[..., part], rows, cols, k)
        conv.dW, conv.db = dW, db
        return None if dx is None else conv._unpadded(dx)


class ReLU(Layer):
    """max(x, 0), elementwise; any shape."""

    def __init__(self):
        self._mask = None

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        out = np.maximum(x, 0)
        self._mask = (x > 0) if train else None
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        if self._mask is None:
            raise RuntimeError("ReLU.backward called without a training forward")
        return dout * self._mask


class Sigmoid(Layer):
    """1 / (1 + exp(-x)), elementwise; any shape."""

    def __init__(self):
        self._out = None

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        out = expit(x)
        self._out = out if train else None
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        if self._out is None:
            raise RuntimeError("Sigmoid.backward called without a training forward")
        return dout * self._out * (1.0 - self._out)


class Flatten(Layer):
    """(N, ...) -> (N, prod(...))."""

    def __init__(self):
        self._shape = None

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        if train:
            self._shape = x.shape
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))

    def backward(self, dout: np.ndarray) -> np.ndarray:
        return dout.reshape(self._shape)


class Affine(Layer):
    """Dense layer: x (N, in) @ W (in, out) + b (out,) -> (N, out).

    An input with more than two axes is flattened per sample, as in the book; backward returns
    the gradient in the input's original shape, stored in the input's memory order (a
    column-major (N, in) input, such as a flattened CHWN feature map, gets a column-major
    gradient, so the layer before needs no transpose).
    """

    param_names = ("W", "b")

    def __init__(self, W, b):
        W = np.asarray(W)
        if W.ndim != 2:
            raise ValueError(f"Affine W must be (inputs, outputs), got shape {W.shape}")
        if not np.issubdtype(W.dtype, np.floating):
            raise ValueError(f"Affine W must be floating point, got dtype {W.dtype}")
        b = np.asarray(b)
        if b.shape != (W.shape[1],):
            raise ValueError(f"Affine b must have shape ({W.shape[1]},), got {b.shape}")
        self.W = W
        self.b = b.astype(W.dtype, copy=False)
        self.dW: np.ndarray | None = None
        self.db: np.ndarray | None = None
        self.needs_input_grad = True
        self._cache = None

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        x = np.asarray(x, dtype=self.W.dtype)
        shape = x.shape
        x2 = x.reshape(shape[0], math.prod(shape[1:]))  # -1 fails on an empty batch
        if x2.shape[1] != self.W.shape[0]:
            raise ValueError(f"Affine expects {self.W.shape[0]} inputs, got {x2.shape[1]}")
        out = x2 @ self.W
        out += self.b
        self._cache = (x2, shape) if train else None
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray | None:
        if self._cache is None:
            raise RuntimeError("Affine.backward called without a training forward")
        x2, shape = self._cache
        self.dW = x2.T @ dout
        self.db = dout.sum(axis=0)
        if not self.needs_input_grad:
            return None
        if x2.flags.f_contiguous and not x2.flags.c_contiguous:
            # (W @ dout^T)^T: the same numbers, computed straight into the input's order.
            return (self.W @ dout.T).T.reshape(shape)
        return (dout @ self.W.T).reshape(shape)


class Dropout(Layer):
    """Inverted dropout: in training each unit is zeroed with probability ``rate`` and the rest
    are scaled by 1/(1-rate), so inference is the identity."""

    def __init__(self, rate: float = 0.5, rng: np.random.Generator | None = None):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"Dropout rate must be in [0, 1), got {rate!r}")
        self.rate = float(rate)
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self._mask = None

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        if not train or self.rate == 0.0:
            self._mask = None
            return x
        keep = self.rng.random(x.shape, dtype=np.float32) >= self.rate
        self._mask = keep.astype(x.dtype) / x.dtype.type(1.0 - self.rate)
        return x * self._mask

    def backward(self, dout: np.ndarray) -> np.ndarray:
        return dout if self._mask is None else dout * self._mask


class BatchNorm(Layer):
    """Batch normalisation over the batch (and spatial axes for (N, C, H, W) input).

    gamma, beta, running_mean, running_var: (features,) where features is C for 4-D input and
    D for (N, D) input. Training normalises with the batch statistics and updates the running
    ones with ``momentum``; inference uses the running statistics.
    """

    param_names = ("gamma", "beta")
    buffer_names = ("running_mean", "running_var")

    def __init__(self, gamma, beta, running_mean=None, running_var=None, momentum=0.9, eps=1e-5):
        gamma = np.asarray(gamma)
        if gamma.ndim != 1:
            raise ValueError(f"BatchNorm gamma must be 1-D, got shape {gamma.shape}")
        dtype = gamma.dtype
        features = gamma.shape[0]
        self.gamma = gamma
        self.beta = np.asarray(beta, dtype=dtype)
        self.running_mean = (
            np.zeros(features, dtype) if running_mean is None else np.asarray(running_mean, dtype)
        )
        self.running_var = (
            np.ones(features, dtype) if running_var is None else np.asarray(running_var, dtype)
        )
        for name in ("beta", "running_mean", "running_var"):
            if getattr(self, name).shape != (features,):
                raise ValueError(f"BatchNorm {name} must have shape ({features},)")
        self.momentum = float(momentum)
        self.eps = float(eps)
        self.dgamma = None
        self.dbeta = None
        self._cache = None

    @staticmethod
    def _features_first(x: np.ndarray) -> np.ndarray:
        """(N, C, H, W) -> (C, H*W*N) or (N, D) -> (D, N): statistics run along axis 1. A view
        when x is stored CHWN (what the image layers produce) or (N, D) in either order."""
        if x.ndim == 4:
            return _chwn_storage(x).reshape(x.shape[1], -1)
        return x.T

    @staticmethod
    def _restore(y: np.ndarray, like_shape: tuple[int, ...]) -> np.ndarray:
        if len(like_shape) == 4:
            n, c, h, w = like_shape
            return _nchw_view(y, (c, h, w, n))
        return y.T

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        x2 = self._features_first(np.asarray(x, dtype=self.gamma.dtype))
        gamma, beta = self.gamma[:, None], self.beta[:, None]
        if train:
            mean = x2.mean(axis=1)
            xc = x2 - mean[:, None]
            var = (xc * xc).mean(axis=1)
            std = np.sqrt(var + self.eps)
            xn = xc / std[:, None]
            m = self.momentum
            self.running_mean = m * self.running_mean + (1 - m) * mean
            self.running_var = m * self.running_var + (1 - m) * var
            self._cache = (xn, std, x.shape)
        else:
            std = np.sqrt(self.running_var + self.eps)
            xn = (x2 - self.running_mean[:, None]) / std[:, None]
            self._cache = None
        return self._restore(gamma * xn + beta, x.shape)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        if self._cache is None:
            raise RuntimeError("BatchNorm.backward called without a training forward")
        xn, std, shape = self._cache
        d2 = self._features_first(dout)
        self.dbeta = d2.sum(axis=1)
        self.dgamma = (d2 * xn).sum(axis=1)
        dxn = d2 * self.gamma[:, None]
        # d/dx of (x - mean)/std with batch mean and variance, in closed form.
        dx = dxn - dxn.mean(axis=1, keepdims=True) - xn * (dxn * xn).mean(axis=1, keepdims=True)
        dx /= std[:, None]
        return self._restore(dx, shape)


# --------------------------------------------------------------------------- losses


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, K) logits, shifted by the row max for stability."""
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


class SoftmaxCrossEntropy:
    """Mean cross-entropy of softmax(logits (N, K)) against integer labels (N,)."""

    def __init__(self):
        self._cache = None

    def forward(self, logits: np.ndarray, labels: np.ndarray) -> float:
        labels = np.asarray(labels, dtype=np.intp)
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        self._cache = (log_probs, labels)
        return float(-log_probs[np.arange(len(labels)), labels].mean())

    def backward(self, batch_size: int | None = None) -> np.ndarray:
        """dLoss/dlogits (N, K). ``batch_size``: the mean is over that many images (default N):
        the parts of a batch split over threads pass the whole batch's size, so their gradients
        are each image's own and add up to the batch's."""
        log_probs, labels = self._cache
        grad = np.exp(log_probs)
        grad[np.arange(len(labels)), labels] -= 1
        grad /= len(labels) if batch_size is None else batch_size
        return grad

    @staticmethod
    def probabilities(logits: np.ndarray) -> np.ndarray:
        return softmax(logits)


class SigmoidBinaryCrossEntropy:
    """Mean binary cross-entropy of sigmoid(logits (N, 1)) against 0/1 labels (N,)."""

    def __init__(self):
        self._cache = None

    def forward(self, logits: np.ndarray, labels: np.ndarray) -> float:
        z = logits.reshape(len(logits))
        y = np.asarray(labels, dtype=logits.dtype)
        self._cache = (z, y, logits.shape)
        # -[y log s(z) + (1-y) log(1 - s(z))] with log s(-z) = log(1 - s(z)), stable for any z.
        return float(-(y * log_expit(z) + (1 - y) * log_expit(-z)).mean())

    def backward(self, batch_size: int | None = None) -> np.ndarray:
        """dLoss/dlogits (N, 1); ``batch_size`` as in ``SoftmaxCrossEntropy.backward``."""
        z, y, shape = self._cache
        return ((expit(z) - y) / (len(y) if batch_size is None else batch_size)).reshape(shape)

    @staticmethod
    def probabilities(logits: np.ndarray) -> np.ndarray:
        """(N, 1) logits -> (N, 2) probabilities of class 0 and class 1."""
        p1 = expit(logits.reshape(len(logits)))
        return np.stack([1 - p1, p1], axis=1)


LOSSES = {
    "softmax_cross_entropy": SoftmaxCrossEntropy,
    "sigmoid_binary_cross_entropy": SigmoidBinaryCrossEntropy,
}
