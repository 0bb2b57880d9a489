"""The probe: run a bundle on a small fixed set of real handwritten digits before trusting it.

Weights can pass every structural check (names, shapes, dtypes, finite values, sha256) and
still be useless: a ``conv1.W`` of 3e38 overflows float32 on real ink and every probability
becomes NaN, although a warm-up on one blank image stays finite. The store therefore runs the
model on ``probe_digits.npz`` (200 real handwritten digits, 20 per class, in MNIST's form; see
``scripts/make_probe_set.py`` for the source and licence) when it publishes, promotes or loads
a version:

* non-finite outputs (NaN or infinity in any probability) are always refused;
* publish records the probe accuracy and a floor (accuracy minus ``PROBE_TOLERANCE``) in the
  manifest, and every later load refuses the version if its accuracy falls below that floor
  (the same bytes no longer compute what they did: a broken numeric library or platform).

One batched forward pass of 200 images: about 7 ms for the simpleconvnet with one BLAS thread,
run once per distinct bundle (by sha256) in a process; the floor is compared on every call.

Importable by the service: depends on numpy and ``training.bundle``/``training.errors`` only.
"""

from __future__ import annotations

import functools
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.bundle import Bundle
from training.errors import BundleInvalid

PROBE_SET_PATH = Path(__file__).with_name("probe_digits.npz")
# How far below its publish-time probe accuracy a version may fall before a load refuses it:
# 10 of the 200 probe digits. Generous on purpose: a different BLAS may flip a borderline
# digit or two, a broken one flips far more.
PROBE_TOLERANCE = 0.05
# Probe results of the bundles already probed in this process, by the sha256 of their bytes:
# the same bytes on the same platform give the same result, so a version published, promoted
# and loaded (or verified again and again) runs its forward pass once. Bounded, oldest out.
_RESULTS_BY_DIGEST: dict[str, ProbeResult] = {}
_RESULTS_KEPT = 256


@dataclass(frozen=True)
class ProbeSet:
    """The probe digits: ``images`` uint8 (N, 28, 28), 0 background, 255 ink; ``labels``
    uint8 (N,) in 0-9; ``sha256`` of the file they came from (identifies the set)."""

    images: np.ndarray
    labels: np.ndarray
    sha256: str


@dataclass(frozen=True)
class ProbeResult:
    """What one probe run found.

    ``images``: probe images run; ``non_finite``: how many of them got a NaN or infinite
    probability; ``scored``: how many show a digit that is one of the model's class labels
    (a 0-vs-1 model scores 40 of 200); ``accuracy``: the fraction of those classified right,
    None when none is scored (or when outputs are non-finite).
    """

    images: int
    non_finite: int
    scored: int
    accuracy: float | None

    @property
    def finite(self) -> bool:
        return self.non_finite == 0


@functools.cache
def load_probe_set(path: Path = PROBE_SET_PATH) -> ProbeSet:
    """Read the probe set once per process (arrays made read-only, shared by every probe)."""
    data = path.read_bytes()
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        images, labels = npz["images"], npz["labels"]
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{path}: images must be uint8 (N, 28, 28), got {images.shape}")
    if labels.shape != images.shape[:1]:
        raise ValueError(f"{path}: {labels.shape[0]} labels for {images.shape[0]} images")
    images.setflags(write=False)
    labels.setflags(write=False)
    return ProbeSet(images=images, labels=labels, sha256=hashlib.sha256(data).hexdigest())


def _class_index(class_labels: list, digits: np.ndarray) -> np.ndarray:
    """digits (N,) -> the index of each digit among ``class_labels`` (ints or their decimal
    strings), -1 where the model has no such class."""
    index_of = {str(label): i for i, label in enumerate(class_labels)}
    return np.array([index_of.get(str(int(d)), -1) for d in digits], dtype=np.int64)


def run_probe(bundle: Bundle, probe_set: ProbeSet | None = None) -> ProbeResult:
    """Run ``bundle`` on the probe set in one batched forward pass.

    Raises BundleInvalid only when the forward pass itself fails (shapes the network cannot
    take); NaN and infinity are reported in the result, not raised.
    """
    probe_set = probe_set or load_probe_set()
    try:
        # Huge weights overflow float32 by design here: the result is checked below.
        with np.errstate(all="ignore"):
            probabilities = bundle.predict_proba(probe_set.images)
    except (ValueError, FloatingPointError) as exc:
        raise BundleInvalid(f"the probe forward pass failed ({exc})") from None
    non_finite = int(np.count_nonzero(~np.isfinite(probabilities).all(axis=1)))
    expected = _class_index(bundle.class_labels, probe_set.labels)
    scored = expected >= 0
    accuracy = None
    if non_finite == 0 and scored.any():
        predicted = probabilities[scored].argmax(axis=1)
        accuracy = float(np.mean(predicted == expected[scored]))
    return ProbeResult(
        images=len(probe_set.labels),
        non_finite=non_finite,
        scored=int(scored.sum()),
        accuracy=accuracy,
    )


def non_finite_message(result: ProbeResult) -> str:
    """The refusal text for non-finite outputs (callers put ``name:version:`` in front)."""
    return (
        f"non-finite outputs (NaN or infinity) on {result.non_finite} of the {result.images} "
        "probe digits: the weights cannot serve; refused"
    )


def probe_record(result: ProbeResult, probe_set: ProbeSet | None = None) -> dict:
    """What publish writes to the manifest under ``"probe"``: ``accuracy`` and ``floor`` (None
    when no probe digit is one of the model's classes), ``tolerance``, ``images``, ``scored``,
    and ``set_sha256`` (the floor only applies to the set it was measured on)."""
    probe_set = probe_set or load_probe_set()
    floor = None
    if result.accuracy is not None:
        floor = round(max(0.0, result.accuracy - PROBE_TOLERANCE), 6)
    return {
        "accuracy": result.accuracy,
        "floor": floor,
        "tolerance": PROBE_TOLERANCE,
        "images": result.images,
        "scored": result.scored,
        "set_sha256": probe_set.sha256,
    }


def recorded_floor(record: object, label: str) -> float | None:
    """The floor from a manifest's ``"probe"`` entry, if it applies to the probe set in use.

    None when there is no record (manifests written before the probe existed), no floor, or a
    record made on another probe set. BundleInvalid when the record is malformed (a manifest
    edited by hand cannot lower the bar by writing nonsense).
    """
    if record is None:
        return None
    if not isinstance(record, dict):
        raise BundleInvalid(f"{label}: the manifest's 'probe' entry must be an object")
    floor = record.get("floor")
    if floor is None:
        return None
    if isinstance(floor, bool) or not isinstance(floor, int | float) or not 0 <= floor <= 1:
        raise BundleInvalid(f"{label}: the manifest's probe floor {floor!r} is not in [0, 1]")
    if record.get("set_sha256") != load_probe_set().sha256:
        return None
    return float(floor)


def _probe_once(bundle: Bundle, digest: str | None) -> ProbeResult:
    """``run_probe``, remembered by ``digest`` (the sha256 of the bundle's bytes) if given."""
    if digest is not None and digest in _RESULTS_BY_DIGEST:
        return _RESULTS_BY_DIGEST[digest]
    result = run_probe(bundle)
    if digest is not None:
        if len(_RESULTS_BY_DIGEST) >= _RESULTS_KEPT:
            _RESULTS_BY_DIGEST.pop(next(iter(_RESULTS_BY_DIGEST)), None)
        _RESULTS_BY_DIGEST[digest] = result
    return result


def check_probe(
    bundle: Bundle, label: str, record: object = None, *, digest: str | None = None
) -> ProbeResult:
    """Probe ``bundle`` and refuse (BundleInvalid, message starting ``label:``) non-finite
    outputs, or an accuracy below the floor in ``record`` (a manifest's ``"probe"`` entry).
    Returns the result otherwise. ``digest``: the sha256 of the bundle's bytes, to reuse the
    result of an earlier probe of the same bytes in this process."""
    try:
        result = _probe_once(bundle, digest)
    except BundleInvalid as exc:
        raise BundleInvalid(f"{label}: {exc}") from None
    if not result.finite:
        raise BundleInvalid(f"{label}: {non_finite_message(result)}")
    floor = recorded_floor(record, label)
    if floor is not None and result.accuracy is not None and result.accuracy < floor:
        raise BundleInvalid(
            f"{label}: probe accuracy {result.accuracy:.4f} is below the floor {floor:.4f} "
            "recorded when it was published (the same weights now compute something else: "
            "check the numeric libraries); refused"
        )
    return result
