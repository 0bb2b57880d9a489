"""Tiny bundles and stores for the tests, and the damage only a test does to a store by hand.

The bundles are untrained (random weights, float32): small and quick to write, with whatever
``test_accuracy`` the store's promotion gate should read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from training.bundle import build_metadata, input_contract, save_bundle
from training.network import Network, preset
from training.store import ModelStore


def make_bundle(
    path: Path,
    *,
    preset_name: str = "simpleconvnet",
    seed: int = 0,
    test_accuracy: float | None = None,
    classes: list[int] | None = None,
) -> Path:
    """Write a small untrained bundle (random weights from ``seed``, float32) to ``path``;
    ``test_accuracy`` is recorded in its metrics when given. Returns ``path``."""
    labels = classes if classes is not None else list(range(10))
    network = Network(preset(preset_name, num_classes=len(labels)), rng=np.random.default_rng(seed))
    metrics = {} if test_accuracy is None else {"test_accuracy": test_accuracy}
    metadata = build_metadata(
        network,
        contract=input_contract(0.1307, 0.3081),
        class_labels=labels,
        metrics=metrics,
        training={"preset": preset_name, "seed": seed},
    )
    return save_bundle(path, network, metadata)


def make_store(directory: Path, *versions: dict, name: str = "mnist") -> ModelStore:
    """A ModelStore at ``directory / "store"`` with one tiny bundle published per entry of
    ``versions`` (version 1, 2, ...): each a dict of ``make_bundle`` keywords plus an optional
    ``alias``. The bundle files are written to ``directory`` as v1.npz, v2.npz, ..."""
    store = ModelStore(directory / "store")
    for number, version in enumerate(versions, start=1):
        options = dict(version)
        alias = options.pop("alias", None)
        store.publish(make_bundle(directory / f"v{number}.npz", **options), name, alias=alias)
    return store


def publish_versions(
    store: ModelStore, bundle_dir: Path, accuracies: list[float | None], name: str = "mnist"
) -> list[int]:
    """Publish one small bundle per accuracy (distinct weights: seed = index); the versions."""
    versions = []
    for index, accuracy in enumerate(accuracies):
        path = make_bundle(bundle_dir / f"{name}-{index}.npz", seed=index, test_accuracy=accuracy)
        versions.append(store.publish(path, name))
    return versions


def assert_every_listed_version_loads(store: ModelStore) -> None:
    """The reader's view: whatever is listed is complete and verified."""
    for name in store.models():
        for version in store.versions(name):
            bundle = store.load(name, version)
            assert bundle.network is not None


def store_snapshot(store: ModelStore, name: str = "mnist") -> dict:
    """Everything a reader can see of model ``name``: versions, aliases and their history,
    ``verify()`` problems, and the entries of its directory (so leftovers show)."""
    return {
        "versions": store.versions(name),
        "aliases": store.aliases(name),
        "history": store.alias_history(name),
        "problems": store.verify(),
        "entries": sorted(p.name for p in (store.root / name).iterdir()),
    }


def corrupt_bundle(store_root: Path, version: int, name: str = "mnist") -> None:
    """Flip bytes in the middle of a published bundle (its sha256 no longer matches)."""
    path = store_root / name / str(version) / "model.npz"
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    path.write_bytes(bytes(data))


def point_alias_by_hand(store_root: Path, alias: str, version: int, name: str = "mnist") -> None:
    """Move an alias without the store's checks, as a hand edit or bit rot after a promotion
    would: the only way to make an alias point at a corrupt version."""
    path = store_root / name / "aliases.json"
    document = json.loads(path.read_text())
    document["aliases"][alias] = version
    document.setdefault("history", {}).setdefault(alias, []).append(
        {"version": version, "previous": None, "at": "by hand", "action": "promote"}
    )
    tmp = path.with_name(".aliases.json.by-hand.tmp")
    tmp.write_text(json.dumps(document))
    os.replace(tmp, path)
