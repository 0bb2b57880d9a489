"""Names, aliases and references: what is accepted, and that bad ones never reach the disk."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support import REPO
from training.store import (
    NAME_PATTERN,
    InvalidName,
    ModelStore,
    default_store_root,
    parse_ref,
    validate_alias,
    validate_name,
)

BAD_NAMES = [
    "",
    ".",
    "..",
    "../x",
    "../../etc/passwd",
    "/abs",
    "a/b",
    "a\\b",
    "Mnist",
    "MNIST",
    "\uff4dnist",  # fullwidth m: looks like "mnist"
    "\u217fnist",  # small roman numeral one thousand
    "mnist\x00",
    "mn\x00ist",
    "mnist\n",
    "mn ist",
    "a" * 65,
    "-mnist",
    "_mnist",
    ".hidden",
    "caf\u00e9",
]


@pytest.mark.parametrize("name", ["mnist", "m", "0", "mnist-01.v2_b", "a" * 64, "latest"])
def test_good_names_are_accepted(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused_with_a_clear_message(name):
    with pytest.raises(InvalidName, match="invalid model name"):
        validate_name(name)


@pytest.mark.parametrize("value", [None, 3, b"mnist", ["mnist"]])
def test_non_string_names_are_refused(value):
    with pytest.raises(InvalidName, match="must be a string"):
        validate_name(value)


def test_latest_is_a_reserved_alias():
    with pytest.raises(InvalidName, match="reserved"):
        validate_alias("latest")
    assert validate_alias("production") == "production"


@given(st.text(max_size=80))
def test_any_text_is_either_a_safe_name_or_refused(text):
    try:
        validate_name(text)
    except InvalidName:
        assert not (text.isascii() and re.fullmatch(NAME_PATTERN, text))
    else:
        assert re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,63}", text)
        root = Path("/store")
        # A single path component that stays inside the store.
        assert (root / text).parent == root and text not in (".", "..")


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("mnist", ("mnist", None, None)),
        ("mnist:3", ("mnist", 3, None)),
        ("mnist:0", ("mnist", 0, None)),
        ("mnist@production", ("mnist", None, "production")),
        ("mnist@latest", ("mnist", None, "latest")),
        ("mnist:latest", ("mnist", None, "latest")),
    ],
)
def test_parse_ref(ref, expected):
    assert parse_ref(ref) == expected


@pytest.mark.parametrize(
    "ref",
    [
        "",
        "mnist:",
        "mnist@",
        ":3",
        "@production",
        "mnist:x",
        "mnist:-1",
        "mnist:1.5",
        "mnist:\uff13",  # fullwidth 3
        "mnist:3:4",
        "mnist@Prod",
        "mnist@a/b",
        "../x:1",
        "Mnist@production",
    ],
)
def test_parse_ref_refuses_bad_references(ref):
    with pytest.raises(InvalidName):
        parse_ref(ref)


def test_default_store_root(monkeypatch, tmp_path):
    monkeypatch.delenv("MODEL_STORE", raising=False)
    assert default_store_root() == Path("model_store")
    monkeypatch.setenv("MODEL_STORE", str(tmp_path / "env-store"))
    assert default_store_root() == tmp_path / "env-store"
    assert default_store_root(tmp_path / "arg-store") == tmp_path / "arg-store"
    assert default_store_root(str(tmp_path / "s")) == tmp_path / "s"


@pytest.mark.parametrize("name", ["../x", "/abs", "", "Mnist", "\uff4dnist", "mnist\x00", "a" * 65])
def test_every_entry_point_refuses_bad_names_before_touching_the_store(tmp_path, name):
    root = tmp_path / "store"
    store = ModelStore(root)
    missing_bundle = tmp_path / "no-such-bundle.npz"
    calls = [
        lambda: store.publish(missing_bundle, name),
        lambda: store.versions(name),
        lambda: store.latest(name),
        lambda: store.aliases(name),
        lambda: store.alias_history(name),
        lambda: store.resolve(name),
        lambda: store.manifest(name, 1),
        lambda: store.bundle_path(name, 1),
        lambda: store.load(name, 1),
        lambda: store.promote(name, 1, "production"),
        lambda: store.rollback(name, "production"),
        lambda: store.delete(name, 1),
        lambda: store.verify(name),
        lambda: store.change_token(name),
    ]
    for call in calls:
        # InvalidName, not BundleInvalid for the missing bundle: the name is checked first.
        with pytest.raises(InvalidName):
            call()
    assert not root.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_bad_names_cause_no_filesystem_access(tmp_path):
    """Audit hooks (in a fresh interpreter) see no open/mkdir/listdir/rename for bad names."""
    script = f"""
import json, sys
from training.store import ModelStore, InvalidName
store = ModelStore({str(tmp_path / "store")!r})
bad = {BAD_NAMES!r}
events = []
watched = {{"open", "os.mkdir", "os.listdir", "os.scandir", "os.rename", "os.remove",
           "os.rmdir", "shutil.rmtree", "os.chmod"}}
sys.addaudithook(lambda event, args: events.append(event) if event in watched else None)
refused = 0
for name in bad:
    for call in (lambda: store.publish("bundle.npz", name, alias="production"),
                 lambda: store.versions(name), lambda: store.resolve(name, alias="production"),
                 lambda: store.promote(name, 1, "production"), lambda: store.delete(name, 1),
                 lambda: store.load(name, 1), lambda: store.change_token(name)):
        try:
            call()
        except InvalidName:
            refused += 1
print(json.dumps({{"refused": refused, "events": events}}))
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["refused"] == 7 * len(BAD_NAMES)
    assert report["events"] == []
