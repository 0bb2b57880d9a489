"""The layers of the network, used by training and serving alike.

Each layer is a small class in the style of *Deep Learning from Scratch* (`common/layers.py`):

- ``forward(x, train=True)`` computes the output. With ``train=True`` the layer keeps what its
  backward needs; with ``train=False`` (inference, what the service calls) it keeps nothing.
- ``backward(dout)`` takes dL/d(output) and returns dL/d(input), leaving parameter gradients in
  ``d<name>`` attributes (``dW``, ``db``, ...). It never modifies ``dout`` in place.

Images are NCHW: (batch, channels, height, width). The dtype follows the layer's weights, so a
float32 network computes in float32 and a float64 one (gradient checks) in float64.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
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


class Conv2D(Layer):
    """2-D convolution (cross-correlation, as in every deep-learning library).

    W: (filters, channels, kh, kw); b: (filters,). Input x: (N, channels, H, W);
    output: (N, filters, OH, OW) with OH = (H + 2*pad - kh) // stride + 1.

    The input is unfolded once into patch rows (im2col, a single copy through
    ``sliding_window_view``) and the convolution is one matrix product.
    Set ``needs_input_grad = False`` on a first layer: nothing upstream learns, so its
    backward skips the input gradient (returns None) and saves a third of the work.
    """

    param_names = ("W", "b")

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

    def output_shape(self, input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """(C, H, W) -> (filters, OH, OW) for one image."""
        channels, height, width = input_shape
        filters, w_channels, kh, kw = self.W.shape
        if channels != w_channels:
            raise ValueError(f"Conv2D expects {w_channels} input channels, got {channels}")
        oh = _window_output_size(height, kh, self.stride, self.pad, "Conv2D")
        ow = _window_output_size(width, kw, self.stride, self.pad, "Conv2D")
        return filters, oh, ow

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        x = np.asarray(x, dtype=self.W.dtype)
        if x.ndim != 4:
            raise ValueError(f"Conv2D input must be (N, C, H, W), got shape {x.shape}")
        n = x.shape[0]
        filters, channels, kh, kw = self.W.shape
        _, oh, ow = self.output_shape(x.shape[1:])
        s, p = self.stride, self.pad
        if p:
            x = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
        # (N, C, OH, OW, kh, kw) view -> (N*OH*OW, C*kh*kw) rows, one copy.
        windows = sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::s, ::s]
        cols = windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, channels * kh * kw)
        out = cols @ self.W.reshape(filters, -1).T
        out += self.b
        if train:
            self._cache = (cols, x.shape)
        else:
            self._cache = None
        return out.reshape(n, oh, ow, filters).transpose(0, 3, 1, 2)

    def backward(self, dout: np.ndarray) -> np.ndarray | None:
        if self._cache is None:
            raise RuntimeError("Conv2D.backward called without a training forward")
        cols, padded_shape = self._cache
        filters, channels, kh, kw = self.W.shape
        n, _, oh, ow = dout.shape
        dout_rows = dout.transpose(0, 2, 3, 1).reshape(n * oh * ow, filters)
        self.db = dout_rows.sum(axis=0)
        self.dW = (dout_rows.T @ cols).reshape(self.W.shape)
        if not self.needs_input_grad:
            return None
        dcols = (dout_rows @ self.W.reshape(filters, -1)).reshape(n, oh, ow, channels, kh, kw)
        dx = np.zeros(padded_shape, dtype=self.W.dtype)
        s = self.stride
        # col2im: each filter tap adds its patch gradient back onto the input positions it read.
        for i in range(kh):
            for j in range(kw):
                dx[:, :, i : i + s * oh : s, j : j + s * ow : s] += dcols[
                    :, :, :, :, i, j
                ].transpose(0, 3, 1, 2)
        p = self.pad
        if p:
            dx = dx[:, :, p:-p, p:-p]
        return dx


class MaxPool2D(Layer):
    """Max pooling over (size × size) windows. Input (N, C, H, W) -> (N, C, OH, OW).

    Backward sends each window's gradient to the *first* position holding the maximum (as the
    book and PyTorch do). MNIST has exact ties inside windows (flat saturated strokes); a mask
    of all maxima would send the gradient to every tied position and be wrong.
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

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        if x.ndim != 4:
            raise ValueError(f"MaxPool2D input must be (N, C, H, W), got shape {x.shape}")
        n, c = x.shape[:2]
        _, oh, ow = self.output_shape(x.shape[1:])
        k, s, p = self.size, self.stride, self.pad
        if p:
            x = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=-np.inf)
        windows = sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::s, ::s][:, :, :oh, :ow]
        flat = windows.reshape(n, c, oh, ow, k * k)
        if not train:
            return flat.max(axis=-1)
        argmax = flat.argmax(axis=-1)  # first occurrence of the maximum
        out = np.take_along_axis(flat, argmax[..., None], axis=-1)[..., 0]
        self._cache = (argmax, x.shape, x.dtype)
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        if self._cache is None:
            raise RuntimeError("MaxPool2D.backward called without a training forward")
        argmax, padded_shape, dtype = self._cache
        n, c, oh, ow = dout.shape
        k, s, p = self.size, self.stride, self.pad
        dwindows = np.zeros((n, c, oh, ow, k * k), dtype=dtype)
        np.put_along_axis(dwindows, argmax[..., None], dout[..., None], axis=-1)
        dwindows = dwindows.reshape(n, c, oh, ow, k, k)
        dx = np.zeros(padded_shape, dtype=dtype)
        for i in range(k):
            for j in range(k):
                dx[:, :, i : i + s * oh : s, j : j + s * ow : s] += dwindows[..., i, j]
        if p:
            dx = dx[:, :, p:-p, p:-p]
        return dx


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
        return x.reshape(x.shape[0], -1)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        return dout.reshape(self._shape)


class Affine(Layer):
    """Dense layer: x (N, in) @ W (in, out) + b (out,) -> (N, out).

    An input with more than two axes is flattened per sample, as in the book; backward returns
    the gradient in the input's original shape.
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
        x2 = x.reshape(shape[0], -1)
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
    def _to_2d(x: np.ndarray) -> np.ndarray:
        if x.ndim == 4:
            return x.transpose(0, 2, 3, 1).reshape(-1, x.shape[1])
        return x

    @staticmethod
    def _from_2d(y: np.ndarray, like_shape: tuple[int, ...]) -> np.ndarray:
        if len(like_shape) == 4:
            n, c, h, w = like_shape
            return y.reshape(n, h, w, c).transpose(0, 3, 1, 2)
        return y

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        x2 = self._to_2d(np.asarray(x, dtype=self.gamma.dtype))
        if train:
            mean = x2.mean(axis=0)
            xc = x2 - mean
            var = (xc * xc).mean(axis=0)
            std = np.sqrt(var + self.eps)
            xn = xc / std
            m = self.momentum
            self.running_mean = m * self.running_mean + (1 - m) * mean
            self.running_var = m * self.running_var + (1 - m) * var
            self._cache = (xn, std, x.shape)
        else:
            xn = (x2 - self.running_mean) / np.sqrt(self.running_var + self.eps)
            self._cache = None
        return self._from_2d(self.gamma * xn + self.beta, x.shape)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        if self._cache is None:
            raise RuntimeError("BatchNorm.backward called without a training forward")
        xn, std, shape = self._cache
        d2 = self._to_2d(dout)
        self.dbeta = d2.sum(axis=0)
        self.dgamma = (d2 * xn).sum(axis=0)
        dxn = d2 * self.gamma
        # d/dx of (x - mean)/std with batch mean and variance, in closed form.
        dx = (dxn - dxn.mean(axis=0) - xn * (dxn * xn).mean(axis=0)) / std
        return self._from_2d(dx, shape)


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

    def backward(self) -> np.ndarray:
        log_probs, labels = self._cache
        grad = np.exp(log_probs)
        grad[np.arange(len(labels)), labels] -= 1
        grad /= len(labels)
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

    def backward(self) -> np.ndarray:
        z, y, shape = self._cache
        return ((expit(z) - y) / len(y)).reshape(shape)

    @staticmethod
    def probabilities(logits: np.ndarray) -> np.ndarray:
        """(N, 1) logits -> (N, 2) probabilities of class 0 and class 1."""
        p1 = expit(logits.reshape(len(logits)))
        return np.stack([1 - p1, p1], axis=1)


LOSSES = {
    "softmax_cross_entropy": SoftmaxCrossEntropy,
    "sigmoid_binary_cross_entropy": SigmoidBinaryCrossEntropy,
}
