"""`convserve models ...`: output, --json, exit codes and error messages."""

import json
import os
import subprocess
import sys

import pytest

from convserve.cli import main
from tests.support import REPO
from tests.support.bundles import make_bundle
from training.store import ModelStore


@pytest.fixture
def store_dir(tmp_path):
    return tmp_path / "store"


@pytest.fixture
def run(store_dir, capsys):
    """Run `convserve models ...` in-process against the temp store: (exit code, out, err)."""

    def run_models(*args, store=True):
        argv = ["models", *args] + (["--store", str(store_dir)] if store else [])
        code = main(argv)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run_models


@pytest.fixture
def bundles(tmp_path):
    """Three bundles with test accuracy 0.9, 0.95, 0.8."""
    return [
        make_bundle(tmp_path / f"b{i}.npz", seed=i, test_accuracy=accuracy)
        for i, accuracy in enumerate((0.9, 0.95, 0.8))
    ]


def test_the_whole_flow(run, bundles):
    code, out, _ = run("publish", str(bundles[0]), "--name", "mnist", "--alias", "production")
    assert code == 0
    assert out.splitlines() == ["published mnist:1", "mnist@production -> mnist:1"]
    code, out, _ = run("publish", str(bundles[1]), "--name", "mnist", "--note", "retrained")
    assert (code, out) == (0, "published mnist:2\n")
    assert run("promote", "mnist", "2", "--alias", "production")[:2] == (
        0,
        "mnist@production: mnist:1 -> mnist:2\n",
    )
    assert run("rollback", "mnist", "--alias", "production")[:2] == (
        0,
        "mnist@production: mnist:2 -> mnist:1\n",
    )
    code, out, _ = run("list")
    lines = out.splitlines()
    assert code == 0
    assert lines[0].split() == [
        "NAME",
        "VERSION",
        "ALIASES",
        "TEST",
        "ACC",
        "CREATED",
        "(UTC)",
        "NOTE",
    ]
    assert lines[1].split()[:4] == ["mnist", "1", "production", "90.00%"]
    assert lines[2].split()[:4] == ["mnist", "2", "-", "95.00%"]
    assert lines[2].split()[-1] == "retrained"
    assert run("delete", "mnist", "2")[:2] == (0, "deleted mnist:2\n")
    code, out, _ = run("verify")
    assert (code, out) == (0, "checked 1 version(s): all good\n")


def test_json_output_parses(run, bundles):
    code, out, _ = run("publish", str(bundles[0]), "--name", "mnist", "--json")
    assert code == 0 and json.loads(out) == {"name": "mnist", "version": 1, "alias": None}
    run("publish", str(bundles[1]), "--name", "mnist")
    code, out, _ = run("promote", "mnist", "1", "--alias", "production", "--json")
    assert json.loads(out) == {
        "name": "mnist",
        "alias": "production",
        "version": 1,
        "previous": None,
    }
    run("promote", "mnist", "2", "--alias", "production")
    code, out, _ = run("rollback", "mnist", "--alias", "production", "--json")
    assert json.loads(out) == {"name": "mnist", "alias": "production", "version": 1, "previous": 2}

    listing = json.loads(run("list", "--json")[1])
    [model] = listing["models"]
    assert model["name"] == "mnist" and model["aliases"] == {"production": 1}
    assert [(v["version"], v["aliases"], v["test_accuracy"]) for v in model["versions"]] == [
        (1, ["production"], 0.9),
        (2, [], 0.95),
    ]
    shown = json.loads(run("show", "mnist@production", "--json")[1])
    assert shown["ref"] == "mnist:1" and shown["aliases"] == ["production"]
    assert shown["manifest"]["metrics"]["test_accuracy"] == 0.9
    verified = json.loads(run("verify", "--json")[1])
    assert verified == {
        "ok": True,
        "problems": [],
        "checked": ["mnist:1", "mnist:2"],
        "leftovers": [],
        "removed": [],
    }
    assert json.loads(run("delete", "mnist", "2", "--json")[1])["deleted"] is True


def test_show_prints_the_manifest(run, bundles):
    run("publish", str(bundles[0]), "--name", "mnist", "--alias", "production")
    code, out, _ = run("show", "mnist")
    assert code == 0
    assert out.splitlines()[0] == "mnist:1"
    assert "  aliases        production" in out
    assert "  test accuracy  90.00%" in out
    assert "  architecture   simpleconvnet (float32)" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["show", "fashion"], "no model named 'fashion'"),
        (["show", "mnist:9"], "model 'mnist' has no version 9"),
        (["show", "mnist@staging"], "model 'mnist' has no alias 'staging'"),
        (["show", "../etc"], "invalid model name '../etc'"),
        (["show", "Mnist"], "invalid model name 'Mnist'"),
        (["publish", "missing.npz", "--name", "mnist"], "missing.npz: no such bundle file"),
        (["publish", "BUNDLE", "--name", "../x"], "invalid model name '../x'"),
        (["promote", "mnist", "2", "--alias", "production"], "below 0.9000 of mnist:1"),
        (["promote", "mnist", "1", "--alias", "latest"], "'latest' is reserved"),
        (["delete", "mnist", "1"], "mnist:1 is in use by alias production"),
        (["delete", "mnist", "7"], "has no version 7"),
        (["rollback", "mnist", "--alias", "production"], "no earlier version"),
        (["verify", "mnist:x"], "the version after ':' must be a number"),
    ],
)
def test_errors_are_one_line_and_exit_2(run, tmp_path, args, message):
    run("publish", str(make_bundle(tmp_path / "a.npz", test_accuracy=0.9)), "--name", "mnist")
    run(
        "publish",
        str(make_bundle(tmp_path / "b.npz", seed=1, test_accuracy=0.8)),
        "--name",
        "mnist",
    )
    run("promote", "mnist", "1", "--alias", "production")
    before = sorted(p.name for p in (tmp_path / "store" / "mnist").iterdir())
    args = [str(tmp_path / "a.npz") if a == "BUNDLE" else a for a in args]
    code, out, err = run(*args)
    assert code == 2
    assert err.startswith("convserve: error: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "store" / "mnist").iterdir()) == before


def test_force_overrides_the_gate(run, bundles):
    run("publish", str(bundles[0]), "--name", "mnist", "--alias", "production")
    code, _, err = run("publish", str(bundles[2]), "--name", "mnist", "--alias", "production")
    assert code == 2 and "use --force to override" in err
    code, out, _ = run(
        "publish", str(bundles[2]), "--name", "mnist", "--alias", "production", "--force"
    )
    assert code == 0 and "mnist@production -> mnist:2" in out


def test_verify_exits_1_and_names_the_damaged_version(run, bundles, store_dir):
    for bundle in bundles:
        run("publish", str(bundle), "--name", "mnist")
    path = ModelStore(store_dir).bundle_path("mnist", 2)
    path.write_bytes(path.read_bytes()[:-10])
    code, out, _ = run("verify")
    assert code == 1
    assert out.splitlines()[0].startswith("PROBLEM mnist:2: size mismatch")
    assert out.splitlines()[-1] == "checked 3 version(s): 1 problem(s)"
    assert run("verify", "mnist:3")[0] == 0
    code, out, _ = run("verify", "mnist", "--json")
    report = json.loads(out)
    assert code == 1 and report["ok"] is False and report["problems"][0].startswith("mnist:2:")
    # list still works and shows the damaged version.
    assert run("list")[0] == 0


def test_verify_clean_removes_leftovers_of_killed_publishes(run, bundles, store_dir):
    run("publish", str(bundles[0]), "--name", "mnist")
    leftover = store_dir / "mnist" / ".staging-killed"
    leftover.mkdir()
    (leftover / "model.npz").write_bytes(b"half")
    code, out, _ = run("verify")
    assert code == 0 and "1 directories left by interrupted publishes" in out
    code, out, _ = run("verify", "--clean")
    assert code == 0 and out.splitlines()[0] == f"removed {leftover}"
    assert not leftover.exists()


def test_missing_store_is_an_error_but_an_empty_one_is_not(run, store_dir):
    code, _, err = run("list")
    assert code == 2 and f"no model store at {store_dir}" in err
    store_dir.mkdir()
    assert run("list")[:2] == (0, f"no models in {store_dir}\n")
    assert json.loads(run("list", "--json")[1]) == {"store": str(store_dir), "models": []}


def test_store_defaults_to_the_environment(run, bundles, store_dir, monkeypatch):
    monkeypatch.setenv("MODEL_STORE", str(store_dir))
    code, out, _ = run("publish", str(bundles[0]), "--name", "mnist", store=False)
    assert (code, out) == (0, "published mnist:1\n")
    assert ModelStore(store_dir).versions("mnist") == [1]


def test_bad_arguments_are_usage_errors(run):
    with pytest.raises(SystemExit) as exit_info:
        run("promote", "mnist", "two", "--alias", "production")
    assert exit_info.value.code == 2


def test_the_installed_entry_point_reports_errors_without_a_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "convserve", "models", "show", "mnist", "--store", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr == "convserve: error: no model named 'mnist' in the store\n"
