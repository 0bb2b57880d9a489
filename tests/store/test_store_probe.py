"""Issue 11, item 4 (store side): the probe set of real digits guards publish, promote and load.

A bundle whose ``conv1.W`` is 3e38 passes every structural check (finite float32 weights of
the right names and shapes, matching sha256) but overflows on real ink: every probability is
NaN. It must never be published, promoted (``--force`` or not) or loaded.
"""

import hashlib
import json

import numpy as np
import pytest

from convserve.cli import main
from tests.support import REPO
from tests.support.bundles import make_bundle
from training import probe as probe_module
from training.bundle import bundle_bytes, load_bundle
from training.errors import BundleInvalid
from training.probe import PROBE_TOLERANCE, load_probe_set, run_probe
from training.store import ModelStore

OVERFLOWING = np.float32(3e38)  # finite in float32, overflows on the first real pixel


def make_overflowing_bundle(path, *, test_accuracy=0.99):
    """An untrained bundle with every ``conv1.W`` entry 3e38 and a flattering test accuracy
    in its metadata (so the regression gate alone would let it through)."""
    source = load_bundle(make_bundle(path, test_accuracy=test_accuracy))
    state = {key: np.array(value) for key, value in source.network.state().items()}
    state["conv1.W"][...] = OVERFLOWING
    source.network.load_state(state)
    path.write_bytes(bundle_bytes(source.network, source.metadata))
    return path


def plant_old_version(store, name, version, bundle, *, test_accuracy=None):
    """Put a bundle in the store the way a convserve without the probe wrote it: a manifest
    with size, sha256 and metrics but no "probe" entry (like the embedded model's)."""
    version_dir = store.root / name / str(version)
    version_dir.mkdir(parents=True)
    data = bundle.read_bytes()
    (version_dir / "model.npz").write_bytes(data)
    metrics = {} if test_accuracy is None else {"test_accuracy": test_accuracy}
    manifest = {
        "format_version": 1,
        "name": name,
        "version": version,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "metrics": metrics,
    }
    (version_dir / "manifest.json").write_text(json.dumps(manifest))


def edit_manifest(store, version, **changes):
    path = store.bundle_path("mnist", version).with_name("manifest.json")
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


@pytest.fixture
def store(tmp_path):
    return ModelStore(tmp_path / "store")


@pytest.fixture
def run(tmp_path, capsys):
    """``convserve models ...`` in-process against the temp store: (exit code, out, err)."""

    def run_models(*args):
        code = main(["models", *args, "--store", str(tmp_path / "store")])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run_models


# ---------------------------------------------------------------------------------- the probe set


def test_the_probe_set_is_200_real_digits_in_mnist_form():
    probe_set = load_probe_set()
    assert probe_set.images.shape == (200, 28, 28) and probe_set.images.dtype == np.uint8
    assert np.bincount(probe_set.labels, minlength=10).tolist() == [20] * 10
    ink = probe_set.images.astype(np.float64)
    # MNIST's geometry: a 0 background, the ink inside the central 20x20-ish box, centre of
    # mass near (14, 14).
    assert (ink[:, :2, :] == 0).all() and (ink[:, :, :2] == 0).all()
    rows, columns = np.indices((28, 28))
    mass = ink.sum(axis=(1, 2))
    centre_row = (ink * rows).sum(axis=(1, 2)) / mass
    centre_column = (ink * columns).sum(axis=(1, 2)) / mass
    assert np.abs(centre_row - 14).max() < 1.5 and np.abs(centre_column - 14).max() < 1.5
    assert ink.max(axis=(1, 2)).min() > 200  # real ink, up to (nearly) full intensity


def test_the_embedded_model_reads_the_probe_digits():
    embedded = ModelStore(REPO / "model_store")
    if "mnist" not in embedded.models():
        pytest.skip("the repository's model_store has no embedded model")
    result = run_probe(embedded.load("mnist", 1))
    assert result.finite and result.scored == 200
    assert result.accuracy >= 0.9  # 0.95 when the probe set was made


def test_a_two_class_model_is_scored_on_its_own_digits_only(tmp_path):
    bundle = load_bundle(make_bundle(tmp_path / "binary.npz", classes=[0, 1]))
    result = run_probe(bundle)
    assert (result.images, result.scored, result.non_finite) == (200, 40, 0)
    assert 0 <= result.accuracy <= 1


# ---------------------------------------------------------------------------------- publish


def test_publish_records_the_probe_accuracy_and_its_floor(store, bundle_path):
    version = store.publish(bundle_path, "mnist")  # an untrained bundle: ~10 % is fine
    probe = store.manifest("mnist", version)["probe"]
    expected = run_probe(load_bundle(bundle_path)).accuracy
    assert probe["accuracy"] == expected
    assert probe["floor"] == pytest.approx(max(0.0, expected - PROBE_TOLERANCE))
    assert probe["tolerance"] == PROBE_TOLERANCE
    assert (probe["images"], probe["scored"]) == (200, 200)
    assert probe["set_sha256"] == load_probe_set().sha256
    assert store.load("mnist", version).network is not None


def test_publish_refuses_non_finite_outputs_before_touching_the_store(store, tmp_path):
    broken = make_overflowing_bundle(tmp_path / "broken.npz")
    assert np.isfinite(load_bundle(broken).network.state()["conv1.W"]).all()
    for force in (False, True):
        with pytest.raises(BundleInvalid, match="broken.npz as mnist: non-finite outputs"):
            store.publish(broken, "mnist", alias="production", force=force)
    assert not store.root.exists()


def test_models_publish_prints_one_line_and_exits_2(run, tmp_path):
    broken = make_overflowing_bundle(tmp_path / "broken.npz")
    code, out, err = run("publish", str(broken), "--name", "mnist", "--alias", "production")
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1 and "non-finite" in err and "Traceback" not in err
    assert run("publish", str(broken), "--name", "mnist", "--force")[0] == 2


def test_the_same_bytes_are_probed_once_per_process(store, tmp_path, monkeypatch):
    calls = []
    real_run_probe = probe_module.run_probe
    monkeypatch.setattr(
        probe_module, "run_probe", lambda bundle: calls.append(1) or real_run_probe(bundle)
    )
    path = make_bundle(tmp_path / "fresh.npz", seed=123)
    store.publish(path, "mnist")
    store.publish(path, "mnist")
    store.load("mnist", 1)
    store.verify()
    assert len(calls) == 1
    store.publish(make_bundle(tmp_path / "other.npz", seed=124), "mnist")
    assert len(calls) == 2


# ---------------------------------------------------------------------------------- load, promote


def test_an_old_version_with_non_finite_outputs_never_loads_or_promotes(store, tmp_path, run):
    good = make_bundle(tmp_path / "good.npz", test_accuracy=0.9)
    store.publish(good, "mnist", alias="production")
    plant_old_version(store, "mnist", 2, make_overflowing_bundle(tmp_path / "b.npz"))

    with pytest.raises(BundleInvalid, match="^mnist:2: non-finite outputs"):
        store.load("mnist", 2)
    for extra in ([], ["--force"]):
        code, out, err = run("promote", "mnist", "2", "--alias", "production", *extra)
        assert (code, out) == (2, "")
        assert err.startswith("convserve: error: mnist:2: non-finite") and err.count("\n") == 1
    assert store.aliases("mnist") == {"production": 1}
    assert [p.split(":")[1] for p in store.verify()] == ["2"]


def test_an_old_manifest_without_probe_fields_still_loads(store, tmp_path):
    plant_old_version(store, "mnist", 1, make_bundle(tmp_path / "old.npz"), test_accuracy=0.98)
    assert store.load("mnist", 1).network is not None
    store.promote("mnist", 1, "production")
    assert store.verify() == []


def test_a_probe_accuracy_below_the_recorded_floor_is_refused(store, bundle_path, run):
    store.publish(bundle_path, "mnist")
    store.publish(bundle_path, "mnist")
    # As if these weights scored far better when published than they do now (a broken BLAS).
    edit_manifest(store, 2, probe={**store.manifest("mnist", 2)["probe"], "floor": 1.0})
    with pytest.raises(BundleInvalid, match=r"^mnist:2: probe accuracy 0\.\d+ is below the floor"):
        store.load("mnist", 2)
    code, _, err = run("promote", "mnist", "2", "--alias", "production", "--force")
    assert code == 2 and "below the floor 1.0000" in err
    assert store.aliases("mnist") == {}
    assert store.load("mnist", 1).network is not None  # other versions are unaffected


def test_a_floor_measured_on_another_probe_set_is_not_applied(store, bundle_path):
    store.publish(bundle_path, "mnist")
    probe = store.manifest("mnist", 1)["probe"]
    edit_manifest(store, 1, probe={**probe, "floor": 1.0, "set_sha256": "0" * 64})
    assert store.load("mnist", 1).network is not None


@pytest.mark.parametrize("floor", ["high", -0.5, 2, True, [0.5]])
def test_a_malformed_probe_record_is_refused(store, bundle_path, floor):
    store.publish(bundle_path, "mnist")
    edit_manifest(store, 1, probe={**store.manifest("mnist", 1)["probe"], "floor": floor})
    with pytest.raises(BundleInvalid, match="^mnist:1: the manifest's probe floor"):
        store.load("mnist", 1)


def test_a_probe_entry_that_is_not_an_object_is_refused(store, bundle_path):
    store.publish(bundle_path, "mnist")
    edit_manifest(store, 1, probe="fine")
    with pytest.raises(BundleInvalid, match="'probe' entry must be an object"):
        store.load("mnist", 1)
