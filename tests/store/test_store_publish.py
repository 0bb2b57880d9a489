"""Publishing, listing, resolving, manifests, loading and change tokens."""

import errno
import hashlib
import json
import shutil

import numpy as np
import pytest

from tests.support import REPO
from tests.support.bundles import make_bundle, publish_versions
from training import store as store_module
from training.bundle import bundle_bytes, load_bundle
from training.errors import BundleInvalid
from training.store import (
    AliasNotFound,
    InvalidName,
    ModelNotFound,
    ModelStore,
    StoreError,
    VersionNotFound,
)


@pytest.fixture
def store(tmp_path):
    return ModelStore(tmp_path / "store")


def test_publish_numbers_versions_from_one_and_keeps_the_bytes(store, tmp_path, bundle_path):
    assert store.models() == []
    assert store.publish(bundle_path, "mnist") == 1
    assert store.publish(bundle_path, "mnist") == 2
    assert store.models() == ["mnist"]
    assert store.versions("mnist") == [1, 2]
    assert store.latest("mnist") == 2
    stored = store.bundle_path("mnist", 2)
    assert stored == tmp_path / "store" / "mnist" / "2" / "model.npz"
    assert stored.read_bytes() == bundle_path.read_bytes()


def test_manifest_records_provenance_and_metrics(store, tmp_path):
    source = load_bundle(make_bundle(tmp_path / "seed.npz", test_accuracy=0.75))
    metadata = dict(source.metadata)
    metadata["metrics"] = {
        "test_accuracy": 0.75,
        "test_loss": 0.6,
        "val_accuracy": 0.7,
        "per_class_accuracy": [0.75] * 10,
        "confusion_matrix": np.eye(10, dtype=int).tolist(),
    }
    metadata["history"] = [{"epoch": 1, "train_loss": 1.0, "val_accuracy": 0.7}]
    metadata["data_fingerprint"] = {"train-images": {"sha256": "ab" * 32, "size": 123}}
    path = tmp_path / "rich.npz"
    path.write_bytes(bundle_bytes(source.network, metadata))

    version = store.publish(path, "mnist", note="retrained with shifts", parent_version=7)
    manifest = store.manifest("mnist", version)

    data = path.read_bytes()
    assert manifest["name"] == "mnist" and manifest["version"] == version
    assert manifest["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["size"] == len(data)
    assert manifest["created"].endswith("+00:00")
    assert manifest["metrics"] == metadata["metrics"]
    assert manifest["history"] == metadata["history"]
    assert manifest["training"] == metadata["training"]
    assert manifest["data_fingerprint"] == metadata["data_fingerprint"]
    assert manifest["architecture"] == "simpleconvnet"
    assert manifest["class_labels"] == list(range(10))
    assert manifest["parent_version"] == 7
    assert manifest["note"] == "retrained with shifts"
    on_disk = json.loads((store.root / "mnist" / "1" / "manifest.json").read_text())
    assert on_disk == manifest


def test_load_gives_the_same_predictions_as_the_source(store, bundle_path, mnist_images):
    version = store.publish(bundle_path, "mnist")
    images, _ = mnist_images
    loaded = store.load("mnist", version)
    expected = load_bundle(bundle_path).predict_proba(images[:8])
    np.testing.assert_array_equal(loaded.predict_proba(images[:8]), expected)
    assert loaded.path == store.bundle_path("mnist", version)


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "no such bundle file"), (b"PK\x03\x04 a torn zip", "bad.npz: not a"), (b"", "bad.npz")],
)
def test_publish_validates_the_bundle_before_touching_the_store(store, tmp_path, content, message):
    path = tmp_path / "bad.npz"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(BundleInvalid, match=message):
        store.publish(path, "mnist")
    assert not store.root.exists()


def test_publish_refuses_a_bundle_with_an_out_of_range_accuracy(store, tmp_path):
    path = make_bundle(tmp_path / "odd.npz", test_accuracy=97.5)  # a percentage by mistake
    with pytest.raises(BundleInvalid, match="test_accuracy.*\\[0, 1\\]"):
        store.publish(path, "mnist")
    assert not store.root.exists()


def test_publish_refuses_bad_arguments_before_writing(store, bundle_path):
    with pytest.raises(StoreError, match="note is 2001 characters"):
        store.publish(bundle_path, "mnist", note="x" * 2001)
    with pytest.raises(InvalidName, match="version"):
        store.publish(bundle_path, "mnist", parent_version=-1)
    with pytest.raises(InvalidName, match="reserved"):
        store.publish(bundle_path, "mnist", alias="latest")
    assert not store.root.exists()


def test_listing_ignores_what_is_not_a_version_or_a_model(store, bundle_path):
    store.publish(bundle_path, "mnist")
    model_dir = store.root / "mnist"
    for stray in ("foo", "1.5", "007", "-3", ".staging-abc", "2x"):
        (model_dir / stray).mkdir()
    (model_dir / "2").write_text("a file, not a version directory")
    (store.root / "README.md").write_text("docs")
    (store.root / "Upper").mkdir()
    (store.root / ".hidden").mkdir()
    (store.root / "empty").mkdir()  # a model directory without versions
    assert store.versions("mnist") == [1]
    assert store.models() == ["mnist"]
    assert store.versions("empty") == []
    with pytest.raises(ModelNotFound, match="'empty' has no versions"):
        store.latest("empty")
    assert store.publish(bundle_path, "mnist") == 3  # "2" is taken by the stray file
    assert store.verify() == []


def test_resolve_version_then_alias_then_latest(store, tmp_path):
    publish_versions(store, tmp_path, [0.5, 0.6, 0.7])
    store.promote("mnist", 2, "production")
    assert store.resolve("mnist") == 3
    assert store.resolve("mnist", alias="latest") == 3
    assert store.resolve("mnist", alias="production") == 2
    assert store.resolve("mnist", version=1, alias="production") == 1
    assert store.resolve_ref("mnist@production") == ("mnist", 2)
    assert store.resolve_ref("mnist:1") == ("mnist", 1)
    assert store.resolve_ref("mnist") == ("mnist", 3)


def test_resolve_raises_the_not_found_family_with_clear_messages(store, tmp_path):
    publish_versions(store, tmp_path, [0.5, 0.6])
    with pytest.raises(ModelNotFound, match="no model named 'fashion'"):
        store.resolve("fashion")
    with pytest.raises(VersionNotFound, match=r"no version 7 \(has: 1, 2\)"):
        store.resolve("mnist", version=7)
    with pytest.raises(AliasNotFound, match=r"no alias 'production' \(has: none\)"):
        store.resolve("mnist", alias="production")
    with pytest.raises(VersionNotFound):
        store.manifest("mnist", 9)
    with pytest.raises(VersionNotFound):
        store.load("mnist", 9)
    # Both are ModelNotFound, so a caller can treat "not found" in one place.
    assert issubclass(VersionNotFound, ModelNotFound) and issubclass(AliasNotFound, ModelNotFound)


def test_deleted_version_numbers_are_never_reused(store, tmp_path):
    publish_versions(store, tmp_path, [0.5, 0.6, 0.7])
    store.delete("mnist", 3)
    assert store.versions("mnist") == [1, 2]
    path = make_bundle(tmp_path / "next.npz", seed=9, test_accuracy=0.8)
    assert store.publish(path, "mnist") == 4


def test_change_token_changes_on_every_publish_promote_and_delete(store, tmp_path):
    assert store.change_token("mnist") == store.change_token("mnist")  # absent model: stable
    tokens = [store.change_token("mnist")]
    paths = [make_bundle(tmp_path / f"b{i}.npz", seed=i, test_accuracy=0.5) for i in range(2)]
    store.publish(paths[0], "mnist")
    tokens.append(store.change_token("mnist"))
    store.publish(paths[1], "mnist")
    tokens.append(store.change_token("mnist"))
    assert store.change_token("mnist") == tokens[-1]  # no change, same token
    store.promote("mnist", 1, "production")
    tokens.append(store.change_token("mnist"))
    store.promote("mnist", 2, "production")
    tokens.append(store.change_token("mnist"))
    store.rollback("mnist", "production")
    tokens.append(store.change_token("mnist"))
    store.delete("mnist", 2)
    tokens.append(store.change_token("mnist"))
    assert len(set(tokens)) == len(tokens)
    hash(tokens[-1])  # usable as a dict key / in a set


def test_publish_onto_a_store_holding_an_embedded_model(store, tmp_path):
    """Like the repository's model_store: mnist/1 with alias production, then a retrain."""
    first = make_bundle(tmp_path / "embedded.npz", test_accuracy=0.98)
    assert store.publish(first, "mnist", alias="production") == 1
    retrained = make_bundle(tmp_path / "retrained.npz", seed=3, test_accuracy=0.985)
    assert store.publish(retrained, "mnist", alias="staging", parent_version=1) == 2
    assert store.aliases("mnist") == {"production": 1, "staging": 2}
    assert store.promote("mnist", 2, "production")["previous"] == 1
    assert store.verify() == []


def test_the_repository_store_verifies_and_accepts_a_publish(tmp_path, bundle_path):
    embedded = REPO / "model_store"
    if not ModelStore(embedded).models():
        pytest.skip("the repository's model_store has no embedded model yet")
    copy = shutil.copytree(embedded, tmp_path / "copy")
    store = ModelStore(copy)
    assert store.verify() == []
    for name in store.models():
        latest = store.latest(name)
        assert store.publish(bundle_path, name, note="test publish") == latest + 1
    assert store.verify() == []


# Private name: replacing the store's own write step is the only way to fail it alone.
@pytest.mark.parametrize("failing", ["_write_file_durably", "fsync_dir"])
def test_a_full_disk_is_a_store_error_and_loses_nothing(store, tmp_path, monkeypatch, failing):
    publish_versions(store, tmp_path, [0.9])
    store.promote("mnist", 1, "production")

    def no_space(*args):
        raise OSError(errno.ENOSPC, "No space left on device", str(args[0]))

    monkeypatch.setattr(store_module, failing, no_space)
    retrained = make_bundle(tmp_path / "retrained.npz", seed=4, test_accuracy=0.95)
    with pytest.raises(StoreError, match="cannot publish in the store at .*No space left"):
        store.publish(retrained, "mnist", alias="production")
    monkeypatch.undo()
    assert store.versions("mnist") == [1]
    assert store.aliases("mnist") == {"production": 1}
    assert [p.name for p in (store.root / "mnist").iterdir() if p.name.startswith(".st")] == []
    assert store.verify() == []
    assert store.publish(retrained, "mnist") == 2
