"""Issue 11, item 5: a publish with an alias on a nearly full disk publishes all or nothing.

A real small filesystem (a tmpfs of 2 MiB, mounted here; needs root) is filled with a filler
file so that 0, 4, 8, ... KiB stay free, up to past what the publish needs; at every level a
publish with an alias either fails leaving ``versions()``, ``aliases()``, the alias history and
``verify()`` exactly as before, or succeeds with both the version and the alias. Skipped with
a message when the tmpfs cannot be mounted (not root, or no permission in this container).
"""

import contextlib
import errno
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support.bundles import make_bundle, store_snapshot
from training.store import ModelStore, StoreError

FILESYSTEM_SIZE = "2m"
PAGE = 4096  # tmpfs allocates whole pages
FILLER_CHUNK = b"\0" * (256 * 1024)


@pytest.fixture
def small_filesystem():
    """A freshly mounted 2 MiB tmpfs (unmounted afterwards, whatever happens)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; run as root to test the full disk")
    mount_point = Path(tempfile.mkdtemp(prefix="convserve-full-disk-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={FILESYSTEM_SIZE},mode=0755", "tmpfs", mount_point],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        mount_point.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", mount_point], check=False)
        with contextlib.suppress(OSError):
            mount_point.rmdir()


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def fill_until_free(filler: Path, free: int) -> None:
    """Grow ``filler`` (real pages, not a sparse file) until at most ``free`` bytes are left
    on its filesystem."""
    with open(filler, "ab") as handle:
        while (missing := free_bytes(filler.parent) - free) > 0:
            try:
                handle.write(FILLER_CHUNK[: min(missing, len(FILLER_CHUNK))])
                handle.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                return


@pytest.mark.parametrize("first_alias", [None, "production"], ids=["new-alias", "moved-alias"])
def test_publish_with_an_alias_at_every_free_space_level(small_filesystem, tmp_path, first_alias):
    # Small bundles (tinyconv, ~28 KiB), kept off the small filesystem.
    first = make_bundle(tmp_path / "first.npz", preset_name="tinyconv", test_accuracy=0.9)
    second = make_bundle(
        tmp_path / "second.npz", preset_name="tinyconv", seed=1, test_accuracy=0.95
    )
    store = ModelStore(small_filesystem / "store")
    assert store.publish(first, "mnist", alias=first_alias) == 1
    before = store_snapshot(store)
    filler = small_filesystem / "filler"
    needed_at_most = second.stat().st_size + 16 * PAGE  # bundle, manifest, aliases, slack

    failures, published = [], None
    for free in range(0, needed_at_most + PAGE, PAGE):
        filler.unlink(missing_ok=True)
        fill_until_free(filler, free)
        try:
            published = store.publish(second, "mnist", alias="production")
        except StoreError as exc:
            assert "No space left on device" in str(exc)
            failures.append(free)
            assert store_snapshot(store) == before, (
                f"a failed publish at {free} bytes free left traces"
            )
            continue
        break
    filler.unlink()

    assert failures, "the smallest free-space level should not have been enough"
    assert published == 2, f"no publish succeeded with up to {needed_at_most} bytes free"
    # All or nothing: the version that appeared has its alias, and nothing else changed.
    assert store.versions("mnist") == [1, 2]
    assert store.aliases("mnist") == {"production": 2}
    assert store.alias_history("mnist")["production"][-1]["action"] == "publish"
    assert store.verify() == []
    leftovers = [p.name for p in (store.root / "mnist").iterdir() if p.name.startswith(".")]
    assert leftovers == [".lock"]
    # And with room to spare, publishing goes on as usual.
    assert store.publish(second, "mnist", alias="staging") == 3
    assert store.aliases("mnist") == {"production": 2, "staging": 3}
