"""Atomic publish under kill -9, and many processes publishing at once."""

import hashlib
import json
import random
import signal
import time

import pytest

from tests.support.bundles import assert_every_listed_version_loads, make_bundle
from tests.support.store_worker import start_worker, wait_for_file
from training.store import ModelStore

PUBLISHERS = 8


@pytest.fixture
def store(tmp_path):
    store = ModelStore(tmp_path / "store")
    store.publish(make_bundle(tmp_path / "first.npz", test_accuracy=0.9), "mnist")
    return store


def staging_dirs(store):
    return sorted(p for p in (store.root / "mnist").iterdir() if p.name.startswith(".staging-"))


def kill(process):
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL


def test_publisher_killed_with_a_complete_staging_dir(store, tmp_path):
    bundle = make_bundle(tmp_path / "second.npz", seed=1, test_accuracy=0.95)
    hanging = tmp_path / "hanging"
    process = start_worker(
        str(store.root), str(bundle), "mnist", "--alias", "production",
        "--hang-before-rename", str(hanging),
    )  # fmt: skip
    wait_for_file(hanging, process)
    # The publisher has written everything but not renamed it into place yet.
    [staging] = staging_dirs(store)
    assert {p.name for p in staging.iterdir()} == {"model.npz", "manifest.json"}
    assert store.abandoned_leftovers("mnist") == []  # alive: its flock is held
    kill(process)

    assert store.versions("mnist") == [1]
    assert store.aliases("mnist") == {}
    assert store.verify() == []
    assert_every_listed_version_loads(store)
    assert store.abandoned_leftovers("mnist") == [staging]
    # The next publish takes version 2 and sweeps the dead staging directory away.
    assert store.publish(bundle, "mnist") == 2
    assert staging_dirs(store) == []
    assert store.verify() == []


def test_publishers_killed_at_random_moments_leave_only_complete_versions(store, tmp_path):
    rng = random.Random(1234)
    bundles = [make_bundle(tmp_path / f"b{i}.npz", seed=i, test_accuracy=0.9) for i in range(2)]
    for attempt in range(6):
        ready = tmp_path / f"ready-{attempt}"
        process = start_worker(
            str(store.root), str(bundles[attempt % 2]), "mnist", "--alias", "production",
            "--ready", str(ready),
        )  # fmt: skip
        wait_for_file(ready, process)
        time.sleep(rng.uniform(0.0, 0.05))  # somewhere inside publish (or just after it)
        if process.poll() is None:
            kill(process)
        else:
            process.communicate(timeout=60)
        # Whatever the moment, readers see only whole versions, and aliases point at them.
        assert store.verify() == []
        assert_every_listed_version_loads(store)
        versions = store.versions("mnist")
        assert versions == list(range(1, len(versions) + 1))
    store.clean("mnist")
    assert staging_dirs(store) == []
    assert store.abandoned_leftovers("mnist") == []


def test_parallel_publishers_get_distinct_versions(store, tmp_path):
    # tinyconv bundles are small (30 kB): the test is about the store, not about copying bytes.
    bundles = [
        make_bundle(tmp_path / f"p{i}.npz", preset_name="tinyconv", seed=10 + i, test_accuracy=0.9)
        for i in range(PUBLISHERS)
    ]
    go = tmp_path / "go"
    workers = [
        start_worker(
            str(store.root),
            str(bundle),
            "mnist",
            "--alias",
            "candidate",
            "--ready",
            str(tmp_path / f"ready-{index}"),
            "--go",
            str(go),
        )  # fmt: skip
        for index, bundle in enumerate(bundles)
    ]
    for index, worker in enumerate(workers):
        wait_for_file(tmp_path / f"ready-{index}", worker)
    go.touch()  # all imported and waiting: they publish at the same moment
    # Read while they publish, as the service does: the newest listed version must load
    # (bounded loop).
    deadline = time.monotonic() + 120
    reads = 0
    while any(w.poll() is None for w in workers) and time.monotonic() < deadline and reads < 2000:
        assert store.load("mnist", store.latest("mnist")).network is not None
        reads += 1
    assert_every_listed_version_loads(store)
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        version, digest = out.split()
        results.append((int(version), digest))

    versions = [version for version, _ in results]
    assert sorted(versions) == list(range(2, PUBLISHERS + 2))  # distinct, none lost
    for (version, digest), bundle in zip(results, bundles, strict=True):
        assert digest == hashlib.sha256(bundle.read_bytes()).hexdigest()
        assert store.manifest("mnist", version)["sha256"] == digest
    assert store.versions("mnist") == list(range(1, PUBLISHERS + 2))
    assert store.verify() == []
    assert staging_dirs(store) == []
    # Every alias write happened under the lock: none lost from the history.
    history = json.loads((store.root / "mnist" / "aliases.json").read_text())["history"]
    assert sorted(e["version"] for e in history["candidate"]) == sorted(versions)
    assert store.aliases("mnist")["candidate"] == history["candidate"][-1]["version"]
