"""Damaged versions: each is a clear BundleInvalid naming the version; the others still load."""

import hashlib
import io
import json
import pathlib

import numpy as np
import pytest

from tests.support.bundles import make_bundle, publish_versions
from training.bundle import METADATA_KEY
from training.errors import BundleInvalid
from training.store import ModelStore


@pytest.fixture
def store(tmp_path):
    """mnist:1, mnist:2, mnist:3; production -> 1."""
    store = ModelStore(tmp_path / "store")
    publish_versions(store, tmp_path, [0.5, 0.6, 0.7])
    store.promote("mnist", 1, "production")
    return store


def plant(store, version, data: bytes) -> None:
    """Replace a version's bundle and make its manifest agree (size and sha256), so only the
    bundle's own validation can catch what is wrong with it."""
    store.bundle_path("mnist", version).write_bytes(data)
    manifest_path = store.bundle_path("mnist", version).with_name("manifest.json")
    manifest = json.loads(manifest_path.read_text())
    manifest.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    manifest_path.write_text(json.dumps(manifest))


def npz_bytes(arrays: dict) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def bundle_arrays(store, version) -> dict:
    with np.load(store.bundle_path("mnist", version), allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def assert_only_version_2_is_damaged(store, message_pattern):
    with pytest.raises(BundleInvalid, match=message_pattern):
        store.load("mnist", 2)
    for version in (1, 3):
        assert store.load("mnist", version).network is not None
    problems = store.verify()
    assert len(problems) == 1 and problems[0].startswith("mnist:2: "), problems
    assert store.verify("mnist", 1) == []
    assert store.versions("mnist") == [1, 2, 3]


def test_flipped_byte(store):
    path = store.bundle_path("mnist", 2)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    assert_only_version_2_is_damaged(store, r"^mnist:2: sha256 mismatch")


def test_truncated_bundle(store):
    path = store.bundle_path("mnist", 2)
    path.write_bytes(path.read_bytes()[:-100])
    assert_only_version_2_is_damaged(store, r"^mnist:2: size mismatch.*truncated")


def test_grown_bundle(store):
    path = store.bundle_path("mnist", 2)
    path.write_bytes(path.read_bytes() + b"\0")
    assert_only_version_2_is_damaged(store, r"^mnist:2: size mismatch: model.npz is longer")


def test_missing_manifest(store):
    store.bundle_path("mnist", 2).with_name("manifest.json").unlink()
    assert_only_version_2_is_damaged(store, r"^mnist:2: manifest.json is missing")


def test_missing_bundle(store):
    store.bundle_path("mnist", 2).unlink()
    assert_only_version_2_is_damaged(store, r"^mnist:2: model.npz is missing")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"name": "mnist", "version": 2}', "lacks a valid 'sha256'"),
    ],
)
def test_unreadable_manifest(store, text, message):
    store.bundle_path("mnist", 2).with_name("manifest.json").write_text(text)
    assert_only_version_2_is_damaged(store, rf"^mnist:2: manifest.json {message}")


def test_manifest_of_another_version(store):
    """A version directory copied by hand under another number is caught."""
    source = store.bundle_path("mnist", 1).with_name("manifest.json")
    store.bundle_path("mnist", 2).with_name("manifest.json").write_bytes(source.read_bytes())
    store.bundle_path("mnist", 2).write_bytes(store.bundle_path("mnist", 1).read_bytes())
    assert_only_version_2_is_damaged(store, r"^mnist:2: manifest.json describes 'mnist':1")


def test_pickled_object_array_is_refused_without_unpickling(store, tmp_path):
    marker = tmp_path / "unpickled"

    class Trap:
        """Unpickling this would create ``marker``: proof that loading ran pickle."""

        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    arrays = bundle_arrays(store, 2)
    arrays["fc2.b"] = np.array([Trap()] * arrays["fc2.b"].size, dtype=object)
    plant(store, 2, npz_bytes(arrays))
    assert_only_version_2_is_damaged(store, r"^mnist:2: contains a pickled object array")
    assert not marker.exists()
    # The trap is real: loading with pickle allowed would have run it.
    with np.load(store.bundle_path("mnist", 2), allow_pickle=True) as npz:
        npz["fc2.b"]
    assert marker.exists()


def test_wrong_weight_shape(store):
    arrays = bundle_arrays(store, 2)
    arrays["fc1.W"] = arrays["fc1.W"][:-1]
    plant(store, 2, npz_bytes(arrays))
    assert_only_version_2_is_damaged(store, r"^mnist:2: .*'fc1.W' has shape")


def test_missing_weight(store):
    arrays = bundle_arrays(store, 2)
    del arrays["conv1.b"]
    plant(store, 2, npz_bytes(arrays))
    assert_only_version_2_is_damaged(store, r"^mnist:2: missing weight 'conv1.b'")


def test_missing_metadata(store):
    arrays = bundle_arrays(store, 2)
    del arrays[METADATA_KEY]
    plant(store, 2, npz_bytes(arrays))
    assert_only_version_2_is_damaged(store, r"^mnist:2: missing the '__metadata__' entry")


def test_not_a_zip(store):
    plant(store, 2, b"PK\x03\x04" + b"\0" * 100)
    assert_only_version_2_is_damaged(store, r"^mnist:2: not a")


def test_a_damaged_version_cannot_be_promoted_or_rolled_back_to(store):
    store.promote("mnist", 3, "production")
    path = store.bundle_path("mnist", 2)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(BundleInvalid, match="^mnist:2: "):
        store.promote("mnist", 2, "staging", force=True)  # force skips the gate, not integrity
    assert store.aliases("mnist") == {"production": 3}
    path = store.bundle_path("mnist", 1)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(BundleInvalid, match="^mnist:1: "):
        store.rollback("mnist", "production")
    assert store.aliases("mnist") == {"production": 3}


@pytest.mark.parametrize(
    "breakage",
    [
        lambda arrays: arrays.update({"fc1.W": arrays["fc1.W"][:-1]}),
        lambda arrays: arrays.update({"conv1.W": arrays["conv1.W"].astype(np.int32)}),
        lambda arrays: arrays.pop(METADATA_KEY),
        lambda arrays: arrays.update({"fc1.b": np.full_like(arrays["fc1.b"], np.nan)}),
    ],
)
def test_publish_refuses_a_broken_bundle_and_the_store_is_unchanged(store, tmp_path, breakage):
    arrays = bundle_arrays(store, 1)
    breakage(arrays)
    path = tmp_path / "broken.npz"
    path.write_bytes(npz_bytes(arrays))
    before = sorted(p.relative_to(store.root) for p in store.root.rglob("*"))
    with pytest.raises(BundleInvalid, match="broken.npz: "):
        store.publish(path, "mnist", alias="production", force=True)
    assert sorted(p.relative_to(store.root) for p in store.root.rglob("*")) == before
    assert store.verify() == []


def test_a_good_bundle_after_a_bad_one_gets_the_next_version(store, tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    with pytest.raises(BundleInvalid):
        store.publish(bad, "mnist")
    assert store.publish(make_bundle(tmp_path / "good.npz", seed=5), "mnist") == 4
