"""Calibrated confidence and the "not a digit" detector (training/calibration.py, ood.py,
posthoc.py, nondigits.py): the figures are right on cases with a known answer, the recipe fits
both on the tiny MNIST, they travel in the bundle (no pickle) and through the store, and an old
bundle without them still predicts and says the OOD score is unavailable."""

import json
import zipfile

import numpy as np
import pytest
from scipy.special import softmax

from service.inputs.mnist_form import normalise_like_mnist
from tests.support.bundles import make_bundle
from training.bundle import BundleInvalid, load_bundle, save_bundle
from training.calibration import (
    expected_calibration_error,
    fit_temperature,
    reliability,
)
from training.data import load_mnist
from training.nondigits import KINDS, fonts, glyph, in_mnist_field, nondigit_set
from training.ood import SHRINKAGE, ClassGaussians, OodDetector, auroc, histogram
from training.recipe import publish_trained, save_trained_bundle, train_and_evaluate
from training.store import ModelStore
from training.trainer import TrainConfig

CONFIG = TrainConfig(epochs=5, batch_size=20, shift=0)
# The mlp has no convolution block: its detector reads the penultimate features and logits.
DETECTOR_ARRAYS = [
    f"ood.{view}.{array}"
    for view in ("penultimate", "logits")
    for array in ("class_means", "whitening")
]


@pytest.fixture(scope="module")
def trained(tiny_mnist_dir):
    return train_and_evaluate(load_mnist(tiny_mnist_dir), "mlp", CONFIG, seed=7, val_size=100)


@pytest.fixture(scope="module")
def tiny_test_digits(tiny_mnist_dir):
    return load_mnist(tiny_mnist_dir).test


# --------------------------------------------------------------------------- calibration
def over_confident(count: int = 4000, seed: int = 0):
    """Logits whose arg-max is right 70 % of the time but whose softmax says ~99 %."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 10, count)
    predicted = np.where(rng.random(count) < 0.7, targets, rng.integers(0, 10, count))
    logits = rng.normal(0, 1, (count, 10))
    logits[np.arange(count), predicted] += 8.0
    return logits, targets


def test_temperature_lowers_the_ece_of_an_over_confident_model():
    logits, targets = over_confident()
    before = expected_calibration_error(softmax(logits, axis=1), targets)
    temperature = fit_temperature(logits, targets)
    after = expected_calibration_error(softmax(logits / temperature, axis=1), targets)
    assert temperature > 2  # it had to soften
    assert before > 0.2 and after < before / 3
    np.testing.assert_array_equal(  # the arg-max, so the accuracy, cannot move
        softmax(logits / temperature, axis=1).argmax(axis=1), logits.argmax(axis=1)
    )


def test_fit_temperature_recovers_the_temperature_labels_were_drawn_at():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (20000, 10))
    probabilities = softmax(logits / 2.0, axis=1)
    targets = (probabilities.cumsum(axis=1) > rng.random((20000, 1))).argmax(axis=1)
    assert fit_temperature(logits, targets) == pytest.approx(2.0, rel=0.05)


def test_ece_and_reliability_on_a_case_worked_by_hand():
    # Ten predictions all 90 % sure, half right: one bin, gap 0.4.
    probabilities = np.tile([0.9, 0.1], (10, 1))
    targets = np.array([0, 1] * 5)
    table = reliability(probabilities, targets)
    assert table["ece"] == pytest.approx(0.4)
    assert sum(table["count"]) == 10 and table["count"][13] == 10  # (0.867, 0.933]
    assert table["accuracy"][13] == 0.5 and table["confidence"][13] == pytest.approx(0.9)
    assert table["accuracy"][0] is None  # empty bins say so, JSON-able
    json.dumps(table)


# --------------------------------------------------------------------------- figures
def test_auroc_equals_the_pairwise_count_with_ties_halved():
    rng = np.random.default_rng(2)
    inside, outside = rng.integers(0, 5, 40), rng.integers(2, 8, 30)
    pairs = (outside[:, None] > inside[None, :]) + 0.5 * (outside[:, None] == inside[None, :])
    assert auroc(inside, outside) == pytest.approx(pairs.mean())
    assert auroc([0, 1], [2, 3]) == 1.0 and auroc([2, 3], [0, 1]) == 0.0


def test_histogram_buckets_are_upper_bounds_with_an_overflow_bucket():
    counts = histogram(np.array([0.1, 0.25, 0.3, 1.0, 99.0]), (0.25, 0.5, 1.0))
    assert counts == {"le": [0.25, 0.5, 1.0], "counts": [2, 1, 1, 1], "total": 5}


# --------------------------------------------------------------------------- detector
def test_detector_distances_are_mahalanobis_distances_to_the_nearest_mean():
    rng = np.random.default_rng(3)
    features = rng.normal(0, 1, (3000, 4)) * [1, 2, 3, 4]
    targets = rng.integers(0, 2, 3000)
    features[targets == 1] += 10
    gaussians = ClassGaussians.fit(features, targets, 2)
    means = np.stack([features[targets == k].mean(axis=0) for k in (0, 1)])
    centred = features - means[targets]
    covariance = centred.T @ centred / len(features)
    # The detector shrinks the shared covariance a little towards a multiple of I.
    shrunk = (1 - SHRINKAGE) * covariance + SHRINKAGE * np.trace(covariance) / 4 * np.eye(4)
    precision = np.linalg.inv(shrunk)
    probe = rng.normal(5, 3, (5, 4))
    expected = np.sqrt(
        np.min([np.einsum("nd,de,ne->n", probe - m, precision, probe - m) for m in means], 0)
    )
    np.testing.assert_allclose(gaussians.distances(probe), expected, rtol=1e-4)


def test_views_are_combined_and_thresholded_at_the_true_positive_rate():
    rng = np.random.default_rng(4)
    targets = rng.integers(0, 3, 4000)
    views = {
        "channel_stats": rng.normal(0, 1, (4000, 6)) + targets[:, None],
        "logits": rng.normal(0, 2, (4000, 3)) + 5 * np.eye(3)[targets],
    }
    detector = OodDetector.fit(views, targets, 3).with_threshold(views, 0.95)
    assert detector.views == ("channel_stats", "logits")
    assert np.mean(detector.scores(views) > 1) == pytest.approx(0.05, abs=0.002)
    for view, scale in zip(detector.views, detector.scales, strict=True):
        alone = detector.gaussians[detector.views.index(view)].distances(views[view])
        assert np.mean(alone > scale) == pytest.approx(0.05, abs=0.002)
    far = {view: values + 50 for view, values in views.items()}
    assert (detector.scores(far) > 1).all()


def test_recipe_detector_flags_far_inputs_and_passes_the_digits(trained, tiny_test_digits):
    bundle_like = trained_bundle(trained)
    digits = bundle_like.predict(tiny_test_digits.images)
    assert digits.ood_available and digits.calibrated
    assert digits.not_a_digit.mean() <= 0.15  # ~5 % by construction, a tiny split is noisy
    nondigits = nondigit_set()
    for kind in ("noise", "textures"):
        assert bundle_like.predict(nondigits[kind]).not_a_digit.mean() >= 0.9, kind
    blank = bundle_like.predict(np.zeros((3, 28, 28)))
    assert blank.not_a_digit.all()


def trained_bundle(trained):
    """The trained model as the service sees it: saved and loaded again."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as scratch:
        return load_bundle(save_trained_bundle(trained, Path(scratch) / "model.npz"))


def test_recipe_records_calibration_detector_and_distributions(trained):
    metadata, metrics = trained.metadata, trained.metadata["metrics"]
    assert metadata["calibration"]["method"] == "temperature"
    assert metadata["calibration"]["temperature"] > 0
    assert metrics["test_ece"] == metadata["calibration"]["test_ece_after"]
    ood = metadata["ood"]
    assert ood["method"] == "mahalanobis" and ood["tpr"] == 0.95 and ood["threshold"] > 0
    assert [view["name"] for view in ood["views"]] == ["penultimate", "logits"]  # an mlp
    assert set(ood["nondigits"]) == set(KINDS)
    assert 0 <= metrics["ood_auroc"] <= 1
    for name in ("confidence", "ood_score"):
        assert metadata["distributions"][name]["total"] == 100  # the validation split
    assert set(trained.arrays) == set(DETECTOR_ARRAYS)


# --------------------------------------------------------------------------- bundles
def test_calibration_and_detector_round_trip_without_pickle(trained, tmp_path):
    path = save_trained_bundle(trained, tmp_path / "model.npz")
    with zipfile.ZipFile(path) as archive:
        assert {f"{name}.npy" for name in DETECTOR_ARRAYS} <= set(archive.namelist())
    with np.load(path, allow_pickle=False) as npz:
        for name in DETECTOR_ARRAYS:
            np.testing.assert_array_equal(npz[name], trained.arrays[name])
    bundle = load_bundle(path)
    assert bundle.temperature == trained.metadata["calibration"]["temperature"]
    assert bundle.detector.threshold == trained.metadata["ood"]["threshold"]
    pixels = load_mnist_like(bundle)
    prediction = bundle.predict(pixels)
    np.testing.assert_array_equal(prediction.probabilities, bundle.predict_proba(pixels))
    assert prediction.probabilities.dtype == np.float32
    np.testing.assert_allclose(prediction.probabilities.sum(axis=1), 1, rtol=1e-5)
    raw = bundle.network.predict_proba(
        (pixels.reshape(-1, 1, 28, 28) / 255 - bundle.input["mean"]) / bundle.input["std"]
    )
    np.testing.assert_array_equal(prediction.probabilities.argmax(1), raw.argmax(1))
    empty = bundle.predict(np.zeros((0, 28, 28)))
    assert empty.probabilities.shape == (0, 10) and empty.ood_score.shape == (0,)


def load_mnist_like(bundle, count: int = 8) -> np.ndarray:
    return nondigit_set()["letters"][:count].astype(np.float32)


def test_published_version_carries_the_figures_and_the_detector(trained, tmp_path):
    store = ModelStore(tmp_path / "store")
    version = publish_trained(trained, store, "mnist", alias="production")
    manifest = store.manifest("mnist", version)
    for key in ("test_ece", "test_ece_uncalibrated", "ood_auroc", "ood_test_digits_flagged"):
        assert manifest["metrics"][key] == trained.metadata["metrics"][key]
    assert manifest["calibration"]["temperature"] == trained.metadata["calibration"]["temperature"]
    assert manifest["ood"]["nondigits"] == trained.metadata["ood"]["nondigits"]
    assert manifest["distributions"] == trained.metadata["distributions"]
    loaded = store.load("mnist", version)
    assert loaded.detector is not None and loaded.temperature is not None


def test_an_old_bundle_predicts_and_says_the_score_is_unavailable(tmp_path):
    bundle = load_bundle(make_bundle(tmp_path / "old.npz"))
    assert bundle.temperature is None and bundle.detector is None
    pixels = np.random.default_rng(0).uniform(0, 255, (4, 28, 28))
    prediction = bundle.predict(pixels)
    assert not prediction.ood_available and not prediction.calibrated
    np.testing.assert_array_equal(prediction.probabilities, bundle.predict_proba(pixels))
    assert prediction.ood_score.shape == (4,) and np.all(prediction.ood_score == 0)
    assert prediction.not_a_digit.dtype == bool and not prediction.not_a_digit.any()
    assert np.isfinite(prediction.ood_score).all()


def rewrite(path, metadata_change=None, drop=(), replace=None):
    """Rewrite a bundle with its metadata changed, arrays dropped or replaced."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    metadata = json.loads(str(arrays.pop("__metadata__")))
    if metadata_change:
        metadata_change(metadata)
    for key in drop:
        arrays.pop(key)
    arrays.update(replace or {})
    arrays["__metadata__"] = np.array(json.dumps(metadata))
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"drop": DETECTOR_ARRAYS}, "needs both"),
        ({"metadata_change": lambda m: m.pop("ood")}, "needs both"),
        ({"drop": ["ood.logits.whitening"]}, "exactly"),
        ({"replace": {"ood.logits.whitening": np.eye(3, dtype=np.float32)}}, "gives 10 features"),
        ({"replace": {"ood.extra": np.eye(3, dtype=np.float32)}}, "exactly"),
        ({"replace": {"ood.logits.class_means": np.full((10, 10), np.nan, np.float32)}}, "finite"),
        ({"replace": {"ood.logits.class_means": np.zeros((9, 10), np.float32)}}, "(10, 10)"),
        ({"metadata_change": lambda m: m["ood"].update(threshold=-1)}, "positive"),
        ({"metadata_change": lambda m: m["ood"]["views"][0].update(name="x")}, "unknown view"),
        ({"metadata_change": lambda m: m["ood"]["views"][1].update(scale=0)}, "positive"),
        ({"metadata_change": lambda m: m["calibration"].update(temperature=0)}, "positive"),
        ({"metadata_change": lambda m: m["calibration"].update(temperature="2")}, "a number"),
    ],
)
def test_a_damaged_calibration_or_detector_is_refused_by_name(trained, tmp_path, change, message):
    path = rewrite(save_trained_bundle(trained, tmp_path / "model.npz"), **change)
    with pytest.raises(BundleInvalid, match=message):
        load_bundle(path)


def test_extra_arrays_must_be_detector_arrays(trained, tmp_path):
    with pytest.raises(ValueError, match="ood"):
        save_bundle(tmp_path / "x.npz", trained.network, trained.metadata, {"fc1.W": np.eye(2)})


# --------------------------------------------------------------------------- non-digits
def test_nondigits_are_drawn_the_way_the_service_brings_drawings_to_mnist_form():
    for character in "AK#":
        ink = glyph(character, fonts(80)[0][1])
        ours = in_mnist_field(ink).astype(np.float64)
        service = np.clip(np.rint(normalise_like_mnist(ink)), 0, 255)
        assert np.abs(ours - service).max() <= 1, character


def test_nondigit_set_holds_every_kind_in_mnist_terms():
    sets = nondigit_set(font_limit=0)
    assert tuple(sets) == KINDS
    for kind, images in sets.items():
        assert images.dtype == np.uint8 and images.shape[1:] == (28, 28) and len(images), kind
    drawn = sets["letters"][0]
    rows, columns = np.nonzero(drawn)
    assert max(np.ptp(rows), np.ptp(columns)) + 1 <= 20  # MNIST's 20x20 box


def test_a_conv_network_detector_reads_channel_statistics_and_round_trips(tmp_path):
    from training.bundle import build_metadata, input_contract
    from training.data import synthetic_digits
    from training.network import Network, preset
    from training.posthoc import view_features

    network = Network(preset("tinyconv"), rng=np.random.default_rng(0))
    contract = input_contract(0.1307, 0.3081)
    images, labels = synthetic_digits(300)
    views = view_features(network, images, contract)
    assert set(views) == {"channel_stats", "logits"} and views["channel_stats"].shape == (300, 2)
    detector = OodDetector.fit(views, labels, 10).with_threshold(views)
    metadata = build_metadata(network, contract=contract, class_labels=list(range(10)))
    metadata["ood"] = {**detector.record(), "tpr": 0.95}
    bundle = load_bundle(save_bundle(tmp_path / "conv.npz", network, metadata, detector.arrays()))
    noise = np.random.default_rng(1).uniform(0, 255, (5, 28, 28))
    np.testing.assert_allclose(
        bundle.predict(noise).ood_score,
        detector.scores(view_features(network, noise, contract)),
        rtol=1e-6,
    )


def test_train_and_models_show_print_the_figures(tiny_mnist_dir, tmp_path, capsys):
    from convserve.cli import main

    out, store = tmp_path / "cli.npz", tmp_path / "store"
    options = ["--arch", "mlp", "--epochs", "5", "--batch-size", "20", "--shift", "0"]
    options += ["--seed", "7", "--val-size", "100", "--quiet", "--out", str(out)]
    options += ["--publish", "--name", "mnist", "--store", str(store)]
    assert main(["train", "--data-dir", str(tiny_mnist_dir), *options]) == 0
    printed = capsys.readouterr().out
    assert "calibration: temperature " in printed and "accuracy unchanged" in printed
    assert "not a digit: mahalanobis, threshold at 95% of validation split digits" in printed
    assert main(["models", "show", "mnist:1", "--store", str(store)]) == 0
    shown = capsys.readouterr().out
    assert "calibration    temperature " in shown and "(15 bins)" in shown
    assert "not-a-digit    mahalanobis on penultimate (100) + logits (10)" in shown  # an mlp
    assert "  noise" in shown and "AUROC" in shown
