"""requirements.lock: every runtime dependency pinned with hashes, in pyproject's ranges.

The image installs exactly the lock (Dockerfile: ``--require-hashes``). A dependency added to
or tightened in pyproject.toml without ``make lock`` fails here, naming the command, instead of
failing the image build (or, worse, installing something nobody reviewed).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import re
import tomllib

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.support.dockerspec import REPO, parse_dockerfile

LOCK = REPO / "requirements.lock"
BUILD_LOCK = REPO / "requirements-build.lock"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
STALE = "requirements.lock is stale: run `make lock` (pip-compile --generate-hashes) and commit it"


def parse_lock(text: str) -> dict[str, dict]:
    """``name -> {"version", "hashes", "via"}`` from pip-compile's output (PEP 503 names)."""
    entries: dict[str, dict] = {}
    current = None
    in_via_block = False
    for line in text.splitlines():
        pinned = re.match(r"^([A-Za-z0-9._-]+)==([^\s\\;]+)", line)
        if pinned:
            current = {"version": Version(pinned.group(2)), "hashes": [], "via": []}
            entries[canonicalize_name(pinned.group(1))] = current
            in_via_block = False
            continue
        if current is None:
            continue
        current["hashes"] += re.findall(r"--hash=sha256:([0-9a-f]{64})", line)
        via = re.match(r"^\s+# via(?: (.+))?$", line)
        if via:
            in_via_block = via.group(1) is None
            if via.group(1):
                current["via"].append(via.group(1).strip())
        elif in_via_block and re.match(r"^\s+#   ", line):
            current["via"].append(line.strip()[1:].strip())
        else:
            in_via_block = False
    return entries


LOCKED = parse_lock(LOCK.read_text())


def runtime_requirements() -> list[Requirement]:
    return [Requirement(text) for text in PYPROJECT["project"]["dependencies"]]


def test_every_locked_file_has_a_sha256():
    assert LOCKED, "requirements.lock holds no pinned package"
    for name, entry in LOCKED.items():
        assert entry["hashes"], f"{name} has no --hash: {STALE}"


def lock_problems(requirements: list[Requirement], locked: dict[str, dict]) -> list[str]:
    """What is wrong with ``locked`` for these pyproject requirements (empty: nothing)."""
    problems = []
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        if name not in locked:
            problems.append(f"{requirement} is in pyproject.toml, not in the lock")
        elif not requirement.specifier.contains(locked[name]["version"], prereleases=True):
            problems.append(f"locked {name}=={locked[name]['version']} is outside {requirement}")
    return problems


def test_every_pyproject_dependency_is_locked_within_its_range():
    problems = lock_problems(runtime_requirements(), LOCKED)
    assert not problems, f"{problems}: {STALE}"


def test_a_stale_lock_is_caught():
    """A dependency added to pyproject (an event loop, say) or a range tightened past the locked
    version, without `make lock`, is reported."""
    added = runtime_requirements() + [Requirement("uvloop>=0.19")]
    assert lock_problems(added, LOCKED) == ["uvloop>=0.19 is in pyproject.toml, not in the lock"]
    numpy = LOCKED["numpy"]["version"]
    tightened = [Requirement(f"numpy>{numpy}")]
    assert lock_problems(tightened, LOCKED) == [f"locked numpy=={numpy} is outside numpy>{numpy}"]


def test_every_locked_package_is_still_needed():
    """Each entry is wanted by pyproject or by another locked package: nothing left over from
    a dependency since removed."""
    direct = {canonicalize_name(r.name) for r in runtime_requirements()}
    for name, entry in LOCKED.items():
        wanted_by = {canonicalize_name(v.split()[0]) for v in entry["via"]}
        assert name in direct or wanted_by & set(LOCKED), (name, entry["via"], STALE)


def test_the_lock_is_closed_under_dependencies():
    """Every requirement of a locked package (for Linux, Python 3.11, no extras) is locked too.
    Read from the installed metadata where the dev venv holds the locked version."""
    environment = default_environment() | {"extra": ""}
    checked = 0
    for name, entry in LOCKED.items():
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            distribution = importlib.metadata.distribution(name)
            if Version(distribution.version) != entry["version"]:
                continue
            checked += 1
            for text in distribution.requires or []:
                requirement = Requirement(text)
                if requirement.marker and not requirement.marker.evaluate(environment):
                    continue
                needed = canonicalize_name(requirement.name)
                assert needed in LOCKED, f"{name} needs {requirement}: {STALE}"
                assert requirement.specifier.contains(LOCKED[needed]["version"], True), (
                    f"{name} needs {requirement}, locked {LOCKED[needed]['version']}: {STALE}"
                )
    assert checked, "no locked version is installed here to read requirements from"


def test_the_build_lock_pins_the_build_backend():
    build = parse_lock(BUILD_LOCK.read_text())
    for text in PYPROJECT["build-system"]["requires"]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in build, f"{requirement}: run `make lock`"
        assert requirement.specifier.contains(build[name]["version"], prereleases=True)
        assert build[name]["hashes"], name


def test_the_image_installs_only_from_the_locks_with_hashes():
    builder, *_, final = parse_dockerfile()
    builder_runs = " ".join(builder.runs())
    for lock in ("requirements.lock", "requirements-build.lock"):
        pattern = rf"pip (wheel|install) [^&]*--require-hashes [^&]*-r {re.escape(lock)}"
        assert re.search(pattern, builder_runs), lock
    # Our own wheel: no dependency resolution, no index, the locked build backend.
    assert "--no-deps --no-build-isolation --no-index" in builder_runs
    final_runs = " ".join(final.runs())
    assert "--require-hashes" in final_runs and "--no-index" in final_runs


def test_the_makefile_makes_the_lock_with_the_command_in_its_header():
    header = re.search(r"^#    (pip-compile .+)$", LOCK.read_text(), re.M).group(1)
    makefile = (REPO / "Makefile").read_text()
    options = set(header.split()[1:]) - {"pyproject.toml", "--output-file=requirements.lock"}
    lock_recipe = makefile[makefile.index("LOCK_OPTIONS :=") :]
    for option in options:
        assert option in lock_recipe, f"make lock does not pass {option}"
