"""Sequential networks built from data: an architecture is a JSON-able spec, not code.

A spec looks like::

    {"name": "simpleconvnet", "input_shape": [1, 28, 28], "num_classes": 10,
     "loss": "softmax_cross_entropy",
     "layers": [{"type": "conv2d", "filters": 30, "kernel": 5},
                {"type": "relu"},
                {"type": "maxpool2d", "size": 2},
                {"type": "affine", "units": 100},
                {"type": "relu"},
                {"type": "affine", "units": "classes"}]}

``"units": "classes"`` in the last affine layer means the number of outputs the loss needs
(num_classes for softmax, 1 for the sigmoid binary loss). Parameters are named from the layer
structure (``conv1.W``, ``fc2.b``, ``bn1.running_mean``); the same names key the bundle's arrays
and the optimizer's state.

This module is what the service imports: it needs numpy and the layers, nothing else.
"""

from __future__ import annotations

import copy
import math

import numpy as np

from training.layers import (
    LOSSES,
    Affine,
    BatchNorm,
    Conv2D,
    ConvPool,
    Dropout,
    Flatten,
    Layer,
    MaxPool2D,
    ReLU,
    Sigmoid,
)

MNIST_INPUT_SHAPE = (1, 28, 28)

# Layer type -> (prefix for parameter names, allowed spec keys).
LAYER_TYPES: dict[str, tuple[str | None, set[str]]] = {
    "conv2d": ("conv", {"filters", "kernel", "stride", "pad"}),
    "maxpool2d": (None, {"size", "stride", "pad"}),
    "relu": (None, set()),
    "sigmoid": (None, set()),
    "flatten": (None, set()),
    "affine": ("fc", {"units"}),
    "dropout": (None, {"rate"}),
    "batchnorm": ("bn", {"momentum", "eps"}),
}


def preset(name: str, num_classes: int = 10, hidden: int = 100) -> dict:
    """The named architectures. ``hidden`` is the width of the mlp's hidden layer."""
    if name == "simpleconvnet":
        # Deep Learning from Scratch, ch. 7: conv 30@5x5 -> ReLU -> pool 2x2 -> 100 -> ReLU -> K.
        layers = [
            {"type": "conv2d", "filters": 30, "kernel": 5, "stride": 1, "pad": 0},
            {"type": "relu"},
            {"type": "maxpool2d", "size": 2},
            {"type": "affine", "units": 100},
            {"type": "relu"},
            {"type": "affine", "units": "classes"},
        ]
    elif name == "mlp":
        layers = [
            {"type": "flatten"},
            {"type": "affine", "units": hidden},
            {"type": "relu"},
            {"type": "affine", "units": "classes"},
        ]
    elif name == "tinyconv":
        # One 3x3 filter, like the seed's single-filter two-class network.
        layers = [
            {"type": "conv2d", "filters": 1, "kernel": 3, "stride": 1, "pad": 0},
            {"type": "relu"},
            {"type": "flatten"},
            {"type": "affine", "units": "classes"},
        ]
    elif name == "deepconvnet":
        # VGG-style: two 3x3 conv blocks with batch norm, then a dense head with dropout.
        def block(filters):
            return [
                {"type": "conv2d", "filters": filters, "kernel": 3, "stride": 1, "pad": 1},
                {"type": "batchnorm"},
                {"type": "relu"},
            ]

        layers = [
            *block(32),
            *block(32),
            {"type": "maxpool2d", "size": 2},
            *block(64),
            *block(64),
            {"type": "maxpool2d", "size": 2},
            {"type": "affine", "units": 256},
            {"type": "batchnorm"},
            {"type": "relu"},
            {"type": "dropout", "rate": 0.3},
            {"type": "affine", "units": "classes"},
        ]
    else:
        raise ValueError(f"unknown architecture preset {name!r}; choose one of {PRESETS}")
    return {
        "name": name,
        "input_shape": list(MNIST_INPUT_SHAPE),
        "num_classes": num_classes,
        "loss": "softmax_cross_entropy",
        "layers": layers,
    }


PRESETS = ("simpleconvnet", "mlp", "tinyconv", "deepconvnet")


def validate_spec(spec: dict) -> dict:
    """Check an architecture spec and return a normalised deep copy. Raises ValueError naming the
    offending layer and key."""
    if not isinstance(spec, dict):
        raise ValueError(f"architecture spec must be a JSON object, got {type(spec).__name__}")
    spec = copy.deepcopy(spec)
    for key in ("input_shape", "num_classes", "layers"):
        if key not in spec:
            raise ValueError(f"architecture spec is missing {key!r}")
    spec.setdefault("name", "custom")
    spec.setdefault("loss", "softmax_cross_entropy")
    if spec["loss"] not in LOSSES:
        raise ValueError(f"unknown loss {spec['loss']!r}; choose one of {sorted(LOSSES)}")
    shape = spec["input_shape"]
    if not (
        isinstance(shape, list)
        and len(shape) == 3
        and all(isinstance(v, int) and v > 0 for v in shape)
    ):
        raise ValueError(f"input_shape must be [channels, height, width], got {shape!r}")
    k = spec["num_classes"]
    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {k!r}")
    if spec["loss"] == "sigmoid_binary_cross_entropy" and k != 2:
        raise ValueError("the sigmoid binary loss needs num_classes == 2")
    layers = spec["layers"]
    if not isinstance(layers, list) or not layers:
        raise ValueError("layers must be a non-empty list")
    for index, layer in enumerate(layers):
        if not isinstance(layer, dict) or "type" not in layer:
            raise ValueError(f"layer {index} must be an object with a 'type'")
        kind = layer["type"]
        if kind not in LAYER_TYPES:
            raise ValueError(f"layer {index}: unknown type {kind!r}; known: {sorted(LAYER_TYPES)}")
        unknown = set(layer) - {"type"} - LAYER_TYPES[kind][1]
        if unknown:
            raise ValueError(f"layer {index} ({kind}): unknown keys {sorted(unknown)}")
    if layers[-1]["type"] != "affine":
        raise ValueError("the last layer must be an affine layer producing the logits")
    return spec


def output_units(spec: dict) -> int:
    """Number of logits the loss expects."""
    return 1 if spec["loss"] == "sigmoid_binary_cross_entropy" else spec["num_classes"]


class Network:
    """A sequential network built from a spec.

    ``params``: a mapping of parameter (and buffer) names to arrays, e.g. from a bundle; checked
    strictly (exact key set and shapes; the error names the key). Without it, weights are
    initialised with He scaling from ``rng`` in ``dtype``.
    """

    def __init__(
        self,
        spec: dict,
        params: dict[str, np.ndarray] | None = None,
        *,
        dtype=np.float32,
        rng: np.random.Generator | None = None,
    ):
        self.spec = validate_spec(spec)
        rng = rng if rng is not None else np.random.default_rng(0)
        if params is not None:
            dtypes = {np.asarray(v).dtype for v in params.values()}
            if len(dtypes) > 1:
                raise ValueError(f"parameters mix dtypes {sorted(map(str, dtypes))}")
            dtype = dtypes.pop() if dtypes else np.dtype(dtype)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"parameters must be float32 or float64, got {self.dtype}")
        self.layers: list[tuple[str, Layer]] = []
        self._build(rng, params)
        self.loss_layer = LOSSES[self.spec["loss"]]()

    # ------------------------------------------------------------------ construction
    def _build(self, rng: np.random.Generator, params: dict | None) -> None:
        shape: tuple[int, ...] = tuple(self.spec["input_shape"])
        counters: dict[str, int] = {}
        expected: dict[str, tuple[int, ...]] = {}
        for index, layer_spec in enumerate(self.spec["layers"]):
            kind = layer_spec["type"]
            prefix = LAYER_TYPES[kind][0]
            name = kind
            if prefix:
                counters[prefix] = counters.get(prefix, 0) + 1
                name = f"{prefix}{counters[prefix]}"
            else:
                name = f"{kind}{index}"
            try:
                layer, shape, shapes = self._make_layer(layer_spec, shape, rng, index)
            except ValueError as exc:
                raise ValueError(f"layer {index} ({kind}): {exc}") from None
            for key, value_shape in shapes.items():
                expected[f"{name}.{key}"] = value_shape
            self.layers.append((name, layer))
        self.output_shape = shape
        self.expected_shapes = expected
        if shape != (output_units(self.spec),):
            raise ValueError(
                f"the network outputs shape {shape}, the loss needs ({output_units(self.spec)},)"
            )
        if params is not None:
            self.load_state(params)
        # Nothing upstream of the first trainable layer learns: skip its input gradient.
        for _, layer in self.layers:
            if layer.param_names:
                if hasattr(layer, "needs_input_grad"):
                    layer.needs_input_grad = False
                break
        self.steps = self._plan_steps()

    def _plan_steps(self) -> list:
        """What forward and backward run: the layers in order, with each conv -> [ReLU] ->
        max-pool whose windows tile the conv output replaced by one ``ConvPool`` step over the
        same layer objects (same parameters, same math, see ``ConvPool``)."""
        layers = [layer for _, layer in self.layers]
        steps, i = [], 0
        while i < len(layers):
            conv = layers[i]
            relu = layers[i + 1] if i + 1 < len(layers) else None
            if not isinstance(relu, ReLU):
                relu = None
            pool_index = i + (2 if relu is not None else 1)
            pool = layers[pool_index] if pool_index < len(layers) else None
            if isinstance(conv, Conv2D) and isinstance(pool, MaxPool2D) and ConvPool.fits(pool):
                steps.append(ConvPool(conv, relu, pool))
                i = pool_index + 1
            else:
                steps.append(conv)
                i += 1
        return steps

    def _make_layer(self, spec: dict, shape: tuple, rng: np.random.Generator, index: int):
        kind = spec["type"]
        dt = self.dtype
        if kind == "conv2d":
            if len(shape) != 3:
                raise ValueError(f"needs (C, H, W) input, got {shape}")
            filters, kernel = spec["filters"], spec.get("kernel", 3)
            fan_in = shape[0] * kernel * kernel
            W = rng.standard_normal((filters, shape[0], kernel, kernel)) * math.sqrt(2 / fan_in)
            layer = Conv2D(
                W.astype(dt), np.zeros(filters, dt), spec.get("stride", 1), spec.get("pad", 0)
            )
            out = layer.output_shape(shape)
            return layer, out, {"W": layer.W.shape, "b": layer.b.shape}
        if kind == "maxpool2d":
            if len(shape) != 3:
                raise ValueError(f"needs (C, H, W) input, got {shape}")
            layer = MaxPool2D(spec.get("size", 2), spec.get("stride"), spec.get("pad", 0))
            return layer, layer.output_shape(shape), {}
        if kind == "affine":
            units = spec["units"]
            if units == "classes":
                units = output_units(self.spec)
            if not isinstance(units, int) or units < 1:
                raise ValueError(f"units must be a positive integer or 'classes', got {units!r}")
            fan_in = math.prod(shape)
            W = rng.standard_normal((fan_in, units)) * math.sqrt(2 / fan_in)
            layer = Affine(W.astype(dt), np.zeros(units, dt))
            return layer, (units,), {"W": layer.W.shape, "b": layer.b.shape}
        if kind == "batchnorm":
            features = shape[0]
            layer = BatchNorm(
                np.ones(features, dt),
                np.zeros(features, dt),
                momentum=spec.get("momentum", 0.9),
                eps=spec.get("eps", 1e-5),
            )
            return (
                layer,
                shape,
                {k: (features,) for k in ("gamma", "beta", "running_mean", "running_var")},
            )
        if kind == "flatten":
            return Flatten(), (math.prod(shape),), {}
        if kind == "relu":
            return ReLU(), shape, {}
        if kind == "sigmoid":
            return Sigmoid(), shape, {}
        if kind == "dropout":
            # A child generator: dropout masks are reproducible from the training seed.
            return (
                Dropout(spec.get("rate", 0.5), np.random.default_rng(rng.integers(2**63))),
                shape,
                {},
            )
        raise ValueError(f"unknown layer type {kind!r}")  # validate_spec catches this first

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, np.ndarray]:
        """All saved arrays (parameters and buffers) by name; live references."""
        out = {}
        for name, layer in self.layers:
            for key, value in {**layer.params(), **layer.buffers()}.items():
                out[f"{name}.{key}"] = value
        return out

    def params(self) -> dict[str, np.ndarray]:
        """Trainable parameters by name; live references (optimizers update them in place)."""
        return {f"{n}.{k}": v for n, layer in self.layers for k, v in layer.params().items()}

    def grads(self) -> dict[str, np.ndarray]:
        """Gradients from the last backward, keyed like ``params()``."""
        return {f"{n}.{k}": v for n, layer in self.layers for k, v in layer.grads().items()}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Replace all parameters and buffers. Strict: exact key set, shapes and one float dtype;
        the error names the failing key."""
        missing = sorted(set(self.expected_shapes) - set(arrays))
        if missing:
            raise ValueError(
                f"missing weight {missing[0]!r} (expected {sorted(self.expected_shapes)})"
            )
        unexpected = sorted(set(arrays) - set(self.expected_shapes))
        if unexpected:
            raise ValueError(f"unexpected weight {unexpected[0]!r}")
        for key, shape in self.expected_shapes.items():
            value = np.asarray(arrays[key])
            if value.dtype != self.dtype:
                raise ValueError(f"weight {key!r} has dtype {value.dtype}, expected {self.dtype}")
            if value.shape != shape:
                raise ValueError(f"weight {key!r} has shape {value.shape}, expected {shape}")
            if not np.all(np.isfinite(value)):
                raise ValueError(f"weight {key!r} contains NaN or infinity")
        layers = dict(self.layers)
        for key, value in arrays.items():
            layer_name, attr = key.split(".", 1)
            setattr(layers[layer_name], attr, np.array(value, dtype=self.dtype))

    def replica(self) -> Network:
        """A network with the same parameter arrays and layers of its own (caches, gradients):
        another thread's share of a batch runs through it while this one runs through the
        rest. Its layers hold the arrays this network's layers hold *now*; after
        ``load_state`` (which replaces them) point them again with ``share_parameters``."""
        clone = copy.copy(self)
        clone.layers = [(name, copy.copy(layer)) for name, layer in self.layers]
        clone.steps = clone._plan_steps()
        clone.loss_layer = type(self.loss_layer)()
        return clone

    def share_parameters(self, source: Network) -> None:
        """Point every layer's parameters and buffers at ``source``'s arrays (same spec)."""
        for (_, mine), (_, theirs) in zip(self.layers, source.layers, strict=True):
            for key in (*theirs.param_names, *theirs.buffer_names):
                setattr(mine, key, getattr(theirs, key))

    # ------------------------------------------------------------------ compute
    def forward(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        """x: (N, C, H, W) normalised input -> logits (N, output units)."""
        x = np.asarray(x, dtype=self.dtype)
        for step in self.steps:
            x = step.forward(x, train=train)
        return x

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """x: (N, C, H, W) normalised input -> class probabilities (N, num_classes)."""
        return self.loss_layer.probabilities(self.forward(x, train=False))

    def forward_outputs(self, x: np.ndarray) -> list[np.ndarray]:
        """Inference keeping what every step computes: x (N, C, H, W) normalised input -> the
        output of each step in order (conv blocks (N, C, H, W), dense (N, units), ...), the
        last being the logits (N, output units). The same steps as ``forward``; what the
        out-of-distribution detector reads its features from."""
        x = np.asarray(x, dtype=self.dtype)
        outputs = []
        for step in self.steps:
            x = step.forward(x, train=False)
            outputs.append(x)
        return outputs

    def loss(self, x: np.ndarray, labels: np.ndarray, train: bool = True) -> float:
        """Forward pass and mean loss; with train=True it prepares ``backward()``."""
        return self.loss_layer.forward(self.forward(x, train=train), labels)

    def backward(self, batch_size: int | None = None) -> dict[str, np.ndarray]:
        """Backpropagate the last training ``loss()``; returns ``grads()``. ``batch_size``: the
        loss is the mean over that many images (default: this call's own; the parts of a batch
        split over threads pass the whole batch's, see ``training.parallel``)."""
        dout = self.loss_layer.backward(batch_size)
        for step in reversed(self.steps):
            dout = step.backward(dout)
            if dout is None:  # the first trainable layer skipped its input gradient
                break
        return self.grads()

    def input_gradient(self, x: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """dLoss/dx for the whole network (used by gradient checks); computes every layer's
        input gradient, including the first's."""
        skipping = [layer for _, layer in self.layers if not getattr(layer, "needs_input_grad", 1)]
        for layer in skipping:
            layer.needs_input_grad = True
        try:
            self.loss(x, labels, train=True)
            dout = self.loss_layer.backward()
            for step in reversed(self.steps):
                dout = step.backward(dout)
            return dout
        finally:
            for layer in skipping:
                layer.needs_input_grad = False
