"""Weight bundles: one ``.npz`` holding the named weight arrays plus a JSON metadata entry.

Everything needed to rebuild *and feed* the model travels with the weights (the idea of the
safetensors header): the architecture spec, the input contract (28x28 pixels, 0-255, MNIST
convention, the normalisation computed on the training split), the class labels, how it was
trained, its metrics. Nothing goes through pickle: the metadata is a 0-d unicode array and the
file is read with ``numpy.load(..., allow_pickle=False)``.

Importable by the service: depends on numpy and the network only.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training import __version__
from training.calibration import calibrated_probabilities
from training.errors import BundleInvalid
from training.fileio import write_atomically
from training.network import Network
from training.ood import ARRAY_PREFIX, DetectorInvalid, OodDetector, views_of

FORMAT_VERSION = 1
METADATA_KEY = "__metadata__"
IMAGE_SHAPE = (28, 28)


def input_contract(mean: float, std: float) -> dict:
    """The input description stored in a bundle: raw pixels (0 background, 255 ink) are scaled
    to [0, 1], then standardised with the training split's mean and std."""
    return {
        "shape": list(IMAGE_SHAPE),
        "pixel_range": [0, 255],
        "convention": "MNIST: 0 is background, 255 is ink",
        "scale": 1.0 / 255.0,
        "mean": float(mean),
        "std": float(std),
    }


def normalise(pixels: np.ndarray, contract: dict, dtype=np.float32) -> np.ndarray:
    """Raw pixels (N, 28, 28) in 0-255 -> network input (N, 1, 28, 28) in ``dtype``.

    Trainer and service share this one function, so both see the same numbers.
    """
    x = np.asarray(pixels, dtype=dtype).reshape(-1, 1, *IMAGE_SHAPE)
    # One fused affine map: (p * scale - mean) / std == p * a + c.
    a = dtype(contract["scale"] / contract["std"])
    c = dtype(-contract["mean"] / contract["std"])
    return x * a + c


@dataclass(frozen=True)
class Prediction:
    """What ``Bundle.predict`` answers for N images.

    probabilities: (N, K) in the network's dtype, calibrated (softmax(logits / T)) when the
    bundle has a temperature, else the network's own. ood_score: (N,) float64, the distance to
    the digit clusters in units of the bundle's threshold (> 1: not a digit).
    not_a_digit: (N,) bool. ood_available: False for a bundle without a detector; then
    ood_score is all 0.0 and not_a_digit all False, placeholders that must be shown as
    "unavailable", never as a score. calibrated: whether a temperature was applied.
    """

    probabilities: np.ndarray
    ood_score: np.ndarray
    not_a_digit: np.ndarray
    ood_available: bool
    calibrated: bool


@dataclass
class Bundle:
    """A loaded, validated bundle: the network, its metadata and where it came from, with its
    calibration ``temperature`` and ``detector`` (None for bundles trained without them)."""

    network: Network
    metadata: dict
    path: Path | None = None
    temperature: float | None = None
    detector: OodDetector | None = field(default=None, repr=False)

    @property
    def class_labels(self) -> list:
        return self.metadata["class_labels"]

    @property
    def input(self) -> dict:
        return self.metadata["input"]

    def predict(self, pixels: np.ndarray) -> Prediction:
        """pixels (N, 28, 28) in 0-255 (MNIST convention) -> ``Prediction``: calibrated
        probabilities, the OOD score and the not-a-digit flag, from one forward pass."""
        x = normalise(pixels, self.input, self.network.dtype.type)
        if self.detector is None:
            probabilities = self._probabilities(self.network.forward(x, train=False))
            count = len(probabilities)
            return Prediction(
                probabilities=probabilities,
                ood_score=np.zeros(count),
                not_a_digit=np.zeros(count, dtype=bool),
                ood_available=False,
                calibrated=self.temperature is not None,
            )
        outputs = self.network.forward_outputs(x)
        scores = self.detector.scores(views_of(outputs, self.detector.views))
        return Prediction(
            probabilities=self._probabilities(outputs[-1]),
            ood_score=scores,
            not_a_digit=scores > 1.0,
            ood_available=True,
            calibrated=self.temperature is not None,
        )

    def predict_proba(self, pixels: np.ndarray) -> np.ndarray:
        """pixels (N, 28, 28) in 0-255 (MNIST convention) -> probabilities (N, num_classes),
        calibrated when the bundle has a temperature (the same numbers as ``predict``)."""
        x = normalise(pixels, self.input, self.network.dtype.type)
        return self._probabilities(self.network.forward(x, train=False))

    def _probabilities(self, logits: np.ndarray) -> np.ndarray:
        if self.temperature is None:
            return self.network.loss_layer.probabilities(logits)
        calibrated = calibrated_probabilities(logits, self.temperature)
        return calibrated.astype(self.network.dtype, copy=False)


def build_metadata(
    network: Network,
    *,
    contract: dict,
    class_labels: list,
    training: dict | None = None,
    metrics: dict | None = None,
    data_fingerprint: dict | None = None,
    history: list | None = None,
) -> dict:
    """The metadata dict for ``save_bundle``, with the fields every bundle has."""
    if len(class_labels) != network.spec["num_classes"]:
        raise ValueError(
            f"{len(class_labels)} class labels for a {network.spec['num_classes']}-class network"
        )
    return {
        "format_version": FORMAT_VERSION,
        "architecture": network.spec,
        "dtype": str(network.dtype),
        "input": contract,
        "class_labels": list(class_labels),
        "training": training or {},
        "metrics": metrics or {},
        "history": history or [],
        "data_fingerprint": data_fingerprint or {},
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "convserve_version": __version__,
    }


def bundle_bytes(
    network: Network, metadata: dict, extra_arrays: dict[str, np.ndarray] | None = None
) -> bytes:
    """Serialise a network, its metadata and ``extra_arrays`` (the detector's ``ood.*``
    arrays) to ``.npz`` bytes."""
    arrays = {key: np.ascontiguousarray(value) for key, value in network.state().items()}
    if METADATA_KEY in arrays:
        raise ValueError(f"parameter name {METADATA_KEY!r} is reserved")
    for key, value in (extra_arrays or {}).items():
        if not key.startswith(ARRAY_PREFIX) or key in arrays:
            raise ValueError(f"extra array {key!r} must be named {ARRAY_PREFIX}*")
        arrays[key] = np.ascontiguousarray(value)
    arrays[METADATA_KEY] = np.array(json.dumps(metadata, sort_keys=True))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def save_bundle(
    path: str | os.PathLike,
    network: Network,
    metadata: dict,
    extra_arrays: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write a bundle atomically (``training.fileio.write_atomically``): a reader never sees
    half a bundle. extra_arrays: the detector's ``ood.*`` arrays, if any."""
    path = Path(path)
    data = bundle_bytes(network, metadata, extra_arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, data)
    return path


def _read_npz(source, label: str) -> dict[str, np.ndarray]:
    # numpy.load falls back to unpickling for anything that is neither .npz nor .npy; refuse
    # those up front so the message says what the file really is.
    if isinstance(source, io.BytesIO):
        head = source.getvalue()[:4]
    else:
        with open(source, "rb") as handle:
            head = handle.read(4)
    if head != b"PK\x03\x04":
        what = "a .npy array" if head.startswith(b"\x93NUM") else "not a zip archive"
        raise BundleInvalid(f"{label}: not an .npz bundle ({what})")
    try:
        with np.load(source, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise BundleInvalid(f"{label}: contains a pickled object array; refused") from None
        raise BundleInvalid(f"{label}: not a valid .npz bundle ({exc})") from None
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as exc:
        raise BundleInvalid(f"{label}: not a readable .npz bundle ({exc})") from None


def parse_bundle(arrays: dict[str, np.ndarray], label: str = "bundle") -> Bundle:
    """Validate the arrays of a bundle and build its network. Raises BundleInvalid naming the
    bundle and the offending key."""
    if METADATA_KEY not in arrays:
        raise BundleInvalid(f"{label}: missing the {METADATA_KEY!r} entry")
    raw = arrays.pop(METADATA_KEY)
    if raw.shape != () or raw.dtype.kind != "U":
        raise BundleInvalid(f"{label}: {METADATA_KEY!r} must be a JSON string")
    try:
        metadata = json.loads(str(raw))
    except json.JSONDecodeError as exc:
        raise BundleInvalid(f"{label}: metadata is not valid JSON ({exc})") from None
    if not isinstance(metadata, dict):
        raise BundleInvalid(f"{label}: metadata must be a JSON object")
    for key in ("format_version", "architecture", "input", "class_labels"):
        if key not in metadata:
            raise BundleInvalid(f"{label}: metadata is missing {key!r}")
    if metadata["format_version"] != FORMAT_VERSION:
        raise BundleInvalid(
            f"{label}: format version {metadata['format_version']!r} is not supported "
            f"(this is convserve {__version__}, format {FORMAT_VERSION})"
        )
    contract = metadata["input"]
    for key in ("scale", "mean", "std"):
        value = contract.get(key) if isinstance(contract, dict) else None
        if not isinstance(value, int | float) or not np.isfinite(value):
            raise BundleInvalid(f"{label}: input contract needs a finite number {key!r}")
    if contract["std"] <= 0:
        raise BundleInvalid(f"{label}: input contract 'std' must be positive")
    detector_arrays = {k: arrays.pop(k) for k in list(arrays) if k.startswith(ARRAY_PREFIX)}
    for key, value in arrays.items():
        if value.dtype not in (np.float32, np.float64):
            raise BundleInvalid(f"{label}: weight {key!r} has dtype {value.dtype}, not float")
    try:
        network = Network(metadata["architecture"], params=arrays)
    except ValueError as exc:
        raise BundleInvalid(f"{label}: {exc}") from None
    if len(metadata["class_labels"]) != network.spec["num_classes"]:
        raise BundleInvalid(f"{label}: class_labels does not match num_classes")
    return Bundle(
        network=network,
        metadata=metadata,
        temperature=_temperature(metadata, label),
        detector=_detector(network, metadata, detector_arrays, label),
    )


def _temperature(metadata: dict, label: str) -> float | None:
    """The calibration temperature in the metadata (None: not calibrated). BundleInvalid
    unless it is a finite positive number."""
    record = metadata.get("calibration")
    if record is None:
        return None
    value = record.get("temperature") if isinstance(record, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BundleInvalid(f"{label}: metadata 'calibration.temperature' must be a number")
    if not (np.isfinite(value) and value > 0):
        raise BundleInvalid(f"{label}: 'calibration.temperature' must be finite and positive")
    return float(value)


def _detector(
    network: Network, metadata: dict, arrays: dict[str, np.ndarray], label: str
) -> OodDetector | None:
    """The OOD detector from the ``ood.*`` arrays and metadata ``ood`` (None when the bundle
    has neither). BundleInvalid when one comes without the other or they do not fit."""
    record = metadata.get("ood")
    if record is None and not arrays:
        return None
    if record is None or not arrays:
        raise BundleInvalid(f"{label}: the detector needs both its arrays and metadata 'ood'")
    # One blank image through the network gives every view's width to check the arrays by.
    outputs = network.forward_outputs(np.zeros((1, *network.spec["input_shape"]), network.dtype))
    try:
        return OodDetector.from_bundle(arrays, record, outputs)
    except DetectorInvalid as exc:
        raise BundleInvalid(f"{label}: {exc}") from None


def load_bundle(path: str | os.PathLike) -> Bundle:
    """Load and validate a bundle file. Raises BundleInvalid with the path and the problem."""
    path = Path(path)
    if not path.is_file():
        raise BundleInvalid(f"{path}: no such bundle file")
    bundle = parse_bundle(_read_npz(path, str(path)), str(path))
    bundle.path = path
    return bundle


def load_bundle_bytes(data: bytes, label: str = "bundle") -> Bundle:
    """Like ``load_bundle`` for bytes already in memory (the store hashes and loads one read)."""
    return parse_bundle(_read_npz(io.BytesIO(data), label), label)
