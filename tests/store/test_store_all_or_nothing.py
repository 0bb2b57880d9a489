"""Issue 11, item 5: a publish with an alias is all or nothing, whichever step fails.

Every file-system step of a publish (writes, fsyncs, renames, links, chmods) is made to fail
in turn, the first, then the second, ...: each failed publish must leave the versions, the
aliases and their history, ``verify()`` and the model directory's entries exactly as they
were; once no step fails, the version appears together with its alias. The real full-disk
case (a small tmpfs) is in tests/faults/test_publish_full_disk.py.
"""

import errno
import os

import pytest

from tests.support.bundles import make_bundle, store_snapshot
from training import store as store_module
from training.store import ModelStore, StoreError

MAX_STEPS = 40  # a publish takes about a dozen; the loop must end well before this


class StepFaults:
    """Counts calls to the store's file-system steps and fails call number ``fail_at``."""

    OS_STEPS = ("rename", "replace", "link", "chmod")

    def __init__(self, fail_at: int):
        self.fail_at = fail_at
        self.calls = 0
        self.failed_step = None

    def wrap(self, step_name, function):
        def step(*args, **kwargs):
            self.calls += 1
            if self.calls == self.fail_at:
                self.failed_step = step_name
                raise OSError(errno.ENOSPC, "No space left on device", str(args[0]))
            return function(*args, **kwargs)

        return step


class FaultyOs:
    """``os`` as the store module sees it, with the steps in StepFaults.OS_STEPS wrapped."""

    def __init__(self, faults: StepFaults):
        self._faults = faults

    def __getattr__(self, name):
        function = getattr(os, name)
        if name in StepFaults.OS_STEPS:
            return self._faults.wrap(f"os.{name}", function)
        return function


@pytest.mark.parametrize("first_alias", [None, "production"], ids=["new-alias", "moved-alias"])
def test_a_publish_failing_at_any_step_publishes_nothing(tmp_path, monkeypatch, first_alias):
    store = ModelStore(tmp_path / "store")
    first = make_bundle(tmp_path / "v1.npz", preset_name="tinyconv", test_accuracy=0.9)
    store.publish(first, "mnist", alias=first_alias)
    retrained = make_bundle(tmp_path / "v2.npz", preset_name="tinyconv", seed=1, test_accuracy=0.95)
    before = store_snapshot(store)

    failed_steps = []
    for fail_at in range(1, MAX_STEPS):
        faults = StepFaults(fail_at)
        monkeypatch.setattr(store_module, "os", FaultyOs(faults))
        # Private name: wrapping the store's own write step is the only way to fail it alone.
        for name in ("_write_file_durably", "fsync_dir"):
            monkeypatch.setattr(store_module, name, faults.wrap(name, getattr(store_module, name)))
        try:
            version = store.publish(retrained, "mnist", alias="production")
        except StoreError as exc:
            assert "No space left on device" in str(exc)
            failed_steps.append(faults.failed_step)
            monkeypatch.undo()
            assert store_snapshot(store) == before, f"failing step {fail_at} ({faults.failed_step})"
            continue
        monkeypatch.undo()
        assert faults.failed_step is None  # the fault came after the last step
        break
    else:
        pytest.fail(f"publish still failing after {MAX_STEPS} injected faults")

    # Every kind of step was exercised, including those after the version's rename.
    assert {"_write_file_durably", "fsync_dir", "os.rename", "os.replace", "os.link"} <= set(
        failed_steps
    ), failed_steps
    assert version == 2
    assert store.versions("mnist") == [1, 2]
    assert store.aliases("mnist") == {"production": 2}
    assert store.verify() == []
