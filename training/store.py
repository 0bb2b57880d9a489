"""The versioned model store: TF Serving's layout on disk, with aliases.

::

    <store>/<name>/<version>/model.npz       the bundle, byte for byte as published
    <store>/<name>/<version>/manifest.json   sha256, size, metrics, history, provenance
    <store>/<name>/aliases.json              {"aliases": {"production": 1}, "history": {...}}
    <store>/<name>/.lock                     writers' lock (fcntl.flock); readers never take it
    <store>/<name>/.staging-*/               a publish in progress (ignored by readers)

Versions are integer directories; "latest" is the highest. Anything else in a model directory
(non-integer names, dot-files) is ignored when listing, as TF Serving's file-system source does.

Why it is safe for a reader that takes no lock (the service polling for new versions):

* a version appears in one ``os.rename`` of a complete, fsynced staging directory on the same
  filesystem, so a reader sees either no version or a whole one, even if the publisher is
  killed midway (TF Serving #1086 and Triton's POLL mode show what happens otherwise);
* ``aliases.json`` is replaced whole with ``os.replace`` of an fsynced temporary file;
* a publish with an alias writes the new ``aliases.json`` to its temporary file *before* the
  version is renamed into place, and undoes the rename if anything after it fails, so a full
  disk cannot leave a new version without its alias (all or nothing);
* a delete renames the version to a dot-directory first, so it vanishes in one step.

Writers (publish, promote, rollback, delete) serialise on ``fcntl.flock`` of ``<name>/.lock``.

Every load (and so every promote, rollback and verify) and every publish also runs the model
on a small probe set of real digits (``training.probe``): non-finite outputs are refused, and
so is a probe accuracy below the floor recorded in the version's manifest at publish.

Importable by the service: depends on the standard library, ``training.bundle`` and
``training.probe`` only.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from training import __version__
from training.bundle import Bundle, load_bundle_bytes
from training.errors import BundleInvalid, ConvserveError
from training.fileio import fsync_dir, write_atomically
from training.probe import check_probe, probe_record

NAME_PATTERN = r"[a-z0-9][a-z0-9._-]{0,63}"
LATEST = "latest"  # reserved alias: always the highest version
MANIFEST_FILE = "manifest.json"
BUNDLE_FILE = "model.npz"
ALIASES_FILE = "aliases.json"
LOCK_FILE = ".lock"
STAGING_PREFIX = ".staging-"
DELETING_PREFIX = ".deleting-"
MANIFEST_FORMAT = 1
MAX_NOTE_CHARS = 2000
# Metric keys copied from the bundle's metadata into the manifest (the summary the store shows
# and the promotion gate reads without loading weights).
MANIFEST_METRICS = (
    "test_accuracy",
    "test_loss",
    "val_accuracy",
    "per_class_accuracy",
    "confusion_matrix",
    "test_ece",
    "test_ece_uncalibrated",
    "ood_auroc",
    "ood_test_digits_flagged",
    "ood_nondigits_flagged",
)
# Metadata records copied whole into the manifest: the calibration (temperature, ECE, the
# reliability diagrams), the detector's figures (no arrays) and the validation distributions
# the service's drift view compares live traffic with.
MANIFEST_RECORDS = ("calibration", "ood", "distributions")
# What the regression gate can compare, each: (manifest metric, True when higher is better,
# how to show it). The default gate is accuracy alone.
GATE_CHECKS = {
    "accuracy": ("test_accuracy", True, "test accuracy"),
    "ece": ("test_ece", False, "test ECE"),
    "auroc": ("ood_auroc", True, "not-a-digit AUROC"),
}
DEFAULT_GATE = ("accuracy",)

_NAME_RE = re.compile(NAME_PATTERN)
# Canonical decimal integers only, so "3" and "03" cannot both name version 3.
_VERSION_DIR_RE = re.compile(r"0|[1-9][0-9]{0,17}")
_REF_VERSION_RE = re.compile(r"[0-9]{1,18}")


class StoreError(ConvserveError):
    """A model-store operation that cannot be done as asked."""


class InvalidName(StoreError):
    """A model name, alias, version or reference that is not allowed."""


class ModelNotFound(StoreError):
    """No model of that name in the store."""


class VersionNotFound(ModelNotFound):
    """The model exists but has no such version."""


class AliasNotFound(ModelNotFound):
    """The model exists but has no such alias."""


class PromotionRefused(StoreError):
    """The regression gate: the candidate's test accuracy is below the alias's current one."""


class AliasInUse(StoreError):
    """A version cannot be deleted while an alias points at it."""


class RollbackImpossible(StoreError):
    """The alias has no earlier version to go back to, or that version is gone."""


# ---------------------------------------------------------------------------------- names


def validate_name(name: object, kind: str = "model name") -> str:
    """Return ``name`` if it matches NAME_PATTERN (lowercase ASCII letters, digits, ``._-``,
    1-64 characters, starting with a letter or digit); raise InvalidName otherwise.

    Checked before any path is built, so ``../x``, ``/abs``, NUL bytes and look-alike unicode
    letters never reach the filesystem.
    """
    if not isinstance(name, str):
        raise InvalidName(f"{kind} must be a string, got {type(name).__name__}")
    if not name.isascii() or _NAME_RE.fullmatch(name) is None:
        shown = repr(name) if len(name) <= 80 else repr(name[:80]) + "..."
        raise InvalidName(
            f"invalid {kind} {shown}: use 1-64 characters from a-z, 0-9, '.', '_', '-', "
            "starting with a letter or digit"
        )
    return name


def validate_alias(alias: object) -> str:
    """An alias that can be *set*: a valid name other than the reserved ``latest``."""
    validate_name(alias, "alias")
    if alias == LATEST:
        raise InvalidName(f"alias {LATEST!r} is reserved: it always means the highest version")
    return alias


def validate_version(version: object) -> int:
    """A version number: a non-negative int (not a bool, not a string)."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise InvalidName(f"version must be a non-negative integer, got {version!r}")
    return version


def parse_ref(ref: str) -> tuple[str, int | None, str | None]:
    """``NAME`` | ``NAME:VERSION`` | ``NAME@ALIAS`` -> (name, version or None, alias or None).

    ``NAME:latest`` is accepted as ``NAME@latest``. Raises InvalidName for anything else.
    """
    if not isinstance(ref, str):
        raise InvalidName(f"model reference must be a string, got {type(ref).__name__}")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        validate_name(name)
        validate_name(alias, "alias")
        return name, None, alias
    if ":" in ref:
        name, version_text = ref.split(":", 1)
        validate_name(name)
        if version_text == LATEST:
            return name, None, LATEST
        if not version_text.isascii() or _REF_VERSION_RE.fullmatch(version_text) is None:
            raise InvalidName(
                f"invalid model reference {ref!r}: the version after ':' must be a number"
            )
        return name, int(version_text), None
    return validate_name(ref), None, None


def format_ref(name: str, version: int) -> str:
    """(name, version) -> ``NAME:VERSION``, the label used in messages."""
    return f"{name}:{version}"


def aliases_by_version(aliases: dict[str, int]) -> dict[int, list[str]]:
    """Alias -> version (as ``ModelStore.aliases`` returns) turned around: version -> its
    aliases, sorted by name, e.g. ``{"production": 1, "canary": 1}`` -> ``{1: ["canary",
    "production"]}``. Versions no alias names are absent."""
    by_version: dict[int, list[str]] = {}
    for alias, version in sorted(aliases.items()):
        by_version.setdefault(version, []).append(alias)
    return by_version


def default_store_root(arg: str | os.PathLike | None = None) -> Path:
    """The store directory: ``arg`` if given, else ``$MODEL_STORE``, else ``./model_store``."""
    if arg:
        return Path(arg)
    return Path(os.environ.get("MODEL_STORE") or "model_store")


# ---------------------------------------------------------------------------------- file helpers


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds")


def _write_file_durably(path: Path, data: bytes) -> None:
    with open(path, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _json_bytes(document: dict) -> bytes:
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _try_lock(fd: int) -> bool:
    """Take an exclusive flock without waiting; False if another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _is_abandoned(directory: Path) -> bool:
    """True if no live process holds the flock on ``directory``.

    A publisher holds an flock on its staging directory from creation to rename; the kernel
    drops it when the process dies (even by SIGKILL), so an unlockable staging dir is live.
    """
    try:
        fd = os.open(directory, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        return _try_lock(fd)
    finally:
        os.close(fd)


def _file_record(
    digest: str, size: int, source: str, note: str | None, parent_version: int | None
) -> dict:
    """The manifest's record of the published file and of the publish itself."""
    return {
        "sha256": digest,
        "size": size,
        "created": _now(),
        "note": note,
        "parent_version": parent_version,
        "source": source,
        "convserve_version": __version__,
    }


def _metric_number(manifest: dict, key: str = "test_accuracy") -> float | None:
    value = (manifest.get("metrics") or {}).get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _os_errors_as_store_errors(action: str):
    """Decorator for the writing operations: a disk full, a read-only store or a permission
    problem becomes a StoreError with a plain message instead of a traceback."""

    def decorate(method):
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            try:
                return method(self, *args, **kwargs)
            except OSError as exc:
                where = f" ({exc.filename})" if exc.filename else ""
                raise StoreError(
                    f"cannot {action} in the store at {self.root}: {exc.strerror or exc}{where}"
                ) from None

        return wrapper

    return decorate


def parse_gate(gate: object) -> tuple[str, ...]:
    """The regression gate's checks: a comma-separated string or a sequence of names from
    GATE_CHECKS (``"accuracy,ece,auroc"``); StoreError naming an unknown one."""
    names = gate.split(",") if isinstance(gate, str) else list(gate)
    names = [str(n).strip() for n in names if str(n).strip()]
    unknown = [n for n in names if n not in GATE_CHECKS]
    if unknown or not names:
        raise StoreError(
            f"unknown gate check {(unknown or [''])[0]!r}; choose from {', '.join(GATE_CHECKS)}"
        )
    return tuple(dict.fromkeys(names))


def _check_publish_arguments(
    name: str, alias: str | None, note: str | None, parent_version: int | None, gate: object
) -> tuple[str, ...]:
    """Refuse bad publish arguments (InvalidName / StoreError) before anything is read;
    returns the gate's checks (``parse_gate``)."""
    validate_name(name)
    if alias is not None:
        validate_alias(alias)
    if parent_version is not None:
        validate_version(parent_version)
    if note is not None:
        if not isinstance(note, str):
            raise StoreError(f"note must be a string, got {type(note).__name__}")
        if len(note) > MAX_NOTE_CHARS:
            raise StoreError(f"note is {len(note)} characters; at most {MAX_NOTE_CHARS}")
    return parse_gate(gate)


def _read_bundle_file(source: Path) -> bytes:
    """The bytes of the bundle to publish; BundleInvalid if it cannot be read."""
    try:
        return source.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise BundleInvalid(f"{source}: no such bundle file") from None
    except OSError as exc:
        raise BundleInvalid(f"{source}: cannot read ({exc.strerror})") from None


class _AliasesReplacement:
    """A new aliases.json made ready before a publish shows its version, so that the alias
    move cannot fail for lack of space afterwards (the version would be listed without it).

    ``prepare`` writes and fsyncs the new document to a temporary file beside aliases.json and
    hard-links the old one aside (a link needs no data blocks); ``commit`` is one
    ``os.replace``; ``roll_back`` puts the old file back; ``discard`` removes what is left.
    Both temporary names match ``.aliases.json.*.tmp``, which the next writer sweeps away if
    the publisher was killed.
    """

    def __init__(self, path: Path, new_file: Path, old_link: Path | None):
        self.path = path
        self.new_file = new_file
        self.old_link = old_link
        self.committed = False

    @classmethod
    def prepare(cls, path: Path, document: dict) -> _AliasesReplacement:
        new_file = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
        old_link = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
        try:
            _write_file_durably(new_file, _json_bytes(document))
            os.chmod(new_file, 0o644)  # the service may run as another user
            try:
                os.link(path, old_link)
            except FileNotFoundError:
                old_link = None  # the model's first alias: rolling back removes the file
        except BaseException:
            new_file.unlink(missing_ok=True)
            raise
        return cls(path, new_file, old_link)

    def commit(self) -> None:
        os.replace(self.new_file, self.path)
        self.committed = True

    def roll_back(self) -> None:
        if not self.committed:
            return
        if self.old_link is None:
            self.path.unlink(missing_ok=True)
        else:
            os.replace(self.old_link, self.path)
        self.committed = False

    def discard(self) -> None:
        self.new_file.unlink(missing_ok=True)
        if self.old_link is not None:
            self.old_link.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------- the store


class ModelStore:
    """A directory of versioned models. Reads take no lock; writes lock one model at a time.

    ``root`` need not exist: reads of a missing store find no models, the first publish
    creates it.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"ModelStore({str(self.root)!r})"

    # ------------------------------------------------------------------ paths
    def _model_dir(self, name: str) -> Path:
        return self.root / validate_name(name)

    def _version_dir(self, name: str, version: int) -> Path:
        return self._model_dir(name) / str(validate_version(version))

    def bundle_path(self, name: str, version: int) -> Path:
        """Where version ``version`` of ``name`` keeps its bundle (whether or not it exists)."""
        return self._version_dir(name, version) / BUNDLE_FILE

    # ------------------------------------------------------------------ listing
    @staticmethod
    def _scan_versions(model_dir: Path) -> list[int]:
        try:
            entries = list(os.scandir(model_dir))
        except (FileNotFoundError, NotADirectoryError):
            return []
        versions = []
        for entry in entries:
            if _VERSION_DIR_RE.fullmatch(entry.name) and entry.is_dir():
                versions.append(int(entry.name))
        return sorted(versions)

    def _require_model(self, name: str) -> Path:
        model_dir = self._model_dir(name)
        if not model_dir.is_dir():
            raise ModelNotFound(f"no model named {name!r} in the store")
        return model_dir

    def models(self) -> list[str]:
        """Names of the models with at least one version, sorted."""
        return [name for name in self._model_dirs() if self._scan_versions(self.root / name)]

    def versions(self, name: str) -> list[int]:
        """The model's versions, ascending. Raises ModelNotFound for an unknown model."""
        return self._scan_versions(self._require_model(name))

    def latest(self, name: str) -> int:
        """The highest version. Raises ModelNotFound if the model has none."""
        versions = self.versions(name)
        if not versions:
            raise ModelNotFound(f"model {name!r} has no versions")
        return versions[-1]

    # ------------------------------------------------------------------ aliases.json
    def _read_aliases_document(self, name: str) -> dict:
        """The parsed aliases.json (empty if absent); StoreError if it is damaged."""
        path = self._model_dir(name) / ALIASES_FILE
        try:
            raw = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return {"aliases": {}, "history": {}, "deleted": []}
        try:
            document = json.loads(raw)
            aliases = document.get("aliases", {})
            history = document.get("history", {})
            deleted = document.get("deleted", [])
            ok = (
                isinstance(aliases, dict)
                and all(isinstance(v, int) and not isinstance(v, bool) for v in aliases.values())
                and isinstance(history, dict)
                and all(isinstance(v, list) for v in history.values())
                and isinstance(deleted, list)
            )
        except (ValueError, AttributeError):
            ok = False
        if not ok:
            raise StoreError(f"{name}: {ALIASES_FILE} is damaged (not the expected JSON)")
        return {"aliases": aliases, "history": history, "deleted": deleted}

    def _write_aliases_document(self, name: str, document: dict) -> None:
        write_atomically(self._model_dir(name) / ALIASES_FILE, _json_bytes(document))

    def aliases(self, name: str) -> dict[str, int]:
        """Alias -> version, e.g. ``{"production": 1, "staging": 3}``."""
        self._require_model(name)
        return dict(sorted(self._read_aliases_document(name)["aliases"].items()))

    def alias_history(self, name: str) -> dict[str, list[dict]]:
        """Alias -> its changes, oldest first: ``{"version", "previous", "at", "action"}``
        (action: publish, promote or rollback; ``"forced": true`` when the gate was
        overridden)."""
        self._require_model(name)
        return self._read_aliases_document(name)["history"]

    # ------------------------------------------------------------------ resolving
    def resolve(self, name: str, version: int | None = None, alias: str | None = None) -> int:
        """The version to use: ``version`` if given, else ``alias`` ("latest" = highest), else
        the highest. Raises ModelNotFound / VersionNotFound / AliasNotFound."""
        if version is not None:
            validate_version(version)
            versions = self.versions(name)
            if version not in versions:
                listed = ", ".join(map(str, versions)) or "none"
                raise VersionNotFound(f"model {name!r} has no version {version} (has: {listed})")
            return version
        if alias is None or alias == LATEST:
            if alias is not None:
                validate_name(alias, "alias")
            return self.latest(name)
        validate_name(alias, "alias")
        aliases = self.aliases(name)
        if alias not in aliases:
            listed = ", ".join(sorted(aliases)) or "none"
            raise AliasNotFound(f"model {name!r} has no alias {alias!r} (has: {listed})")
        target = aliases[alias]
        if not (self._model_dir(name) / str(target)).is_dir():
            raise VersionNotFound(
                f"alias {name}@{alias} points at version {target}, which does not exist"
            )
        return target

    def resolve_ref(self, ref: str) -> tuple[str, int]:
        """``NAME`` | ``NAME:VERSION`` | ``NAME@ALIAS`` -> (name, version)."""
        name, version, alias = parse_ref(ref)
        return name, self.resolve(name, version=version, alias=alias)

    # ------------------------------------------------------------------ reading a version
    def manifest(self, name: str, version: int) -> dict:
        """The version's manifest. VersionNotFound if there is no such version, BundleInvalid
        (naming ``name:version``) if the manifest is missing or unreadable."""
        label = format_ref(name, version)
        version_dir = self._version_dir(name, version)
        try:
            raw = (version_dir / MANIFEST_FILE).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            if not version_dir.is_dir():
                self.resolve(name, version=version)  # raises the precise NotFound
                raise VersionNotFound(f"{label} was deleted") from None
            raise BundleInvalid(f"{label}: {MANIFEST_FILE} is missing") from None
        except OSError as exc:
            raise BundleInvalid(f"{label}: cannot read {MANIFEST_FILE} ({exc.strerror})") from None
        try:
            manifest = json.loads(raw)
        except ValueError as exc:
            raise BundleInvalid(f"{label}: {MANIFEST_FILE} is not valid JSON ({exc})") from None
        if not isinstance(manifest, dict):
            raise BundleInvalid(f"{label}: {MANIFEST_FILE} must hold a JSON object")
        for key, kind in (("sha256", str), ("size", int)):
            if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool):
                raise BundleInvalid(f"{label}: {MANIFEST_FILE} lacks a valid {key!r}")
        if manifest.get("name") != name or manifest.get("version") != version:
            raise BundleInvalid(
                f"{label}: {MANIFEST_FILE} describes "
                f"{manifest.get('name')!r}:{manifest.get('version')!r}, not this version"
            )
        return manifest

    def read_verified_bytes(self, name: str, version: int) -> tuple[bytes, dict]:
        """The bundle's bytes, read once and checked against the manifest's size and sha256,
        with the manifest. BundleInvalid naming ``name:version`` on any mismatch."""
        label = format_ref(name, version)
        manifest = self.manifest(name, version)
        path = self.bundle_path(name, version)
        try:
            with open(path, "rb") as handle:
                # One byte more than expected is enough to know it is too long.
                data = handle.read(manifest["size"] + 1)
        except FileNotFoundError:
            if not path.parent.is_dir():
                raise VersionNotFound(f"{label} was deleted") from None
            raise BundleInvalid(f"{label}: {BUNDLE_FILE} is missing") from None
        except OSError as exc:
            raise BundleInvalid(f"{label}: cannot read {BUNDLE_FILE} ({exc.strerror})") from None
        if len(data) != manifest["size"]:
            described = "longer than" if len(data) > manifest["size"] else f"{len(data)} bytes,"
            raise BundleInvalid(
                f"{label}: size mismatch: {BUNDLE_FILE} is {described} the "
                f"{manifest['size']} bytes recorded (truncated or modified)"
            )
        digest = hashlib.sha256(data).hexdigest()
        if digest != manifest["sha256"]:
            raise BundleInvalid(
                f"{label}: sha256 mismatch: {BUNDLE_FILE} hashes to {digest[:16]}..., the "
                f"manifest records {manifest['sha256'][:16]}... (corrupted or modified)"
            )
        return data, manifest

    def load(self, name: str, version: int) -> Bundle:
        """Load one version, verified: size and sha256 against the manifest, the bundle's own
        validation, then the probe (``training.probe``): non-finite outputs on the probe digits,
        or a probe accuracy below the floor its manifest records, are refused. Any failure is
        a BundleInvalid whose message starts ``name:version:``; other versions are
        unaffected."""
        data, manifest = self.read_verified_bytes(name, version)
        label = format_ref(name, version)
        bundle = load_bundle_bytes(data, label=label)
        check_probe(bundle, label, manifest.get("probe"), digest=manifest["sha256"])
        bundle.path = self.bundle_path(name, version)
        return bundle

    # ------------------------------------------------------------------ locking and leftovers
    @contextlib.contextmanager
    def _locked(self, name: str):
        """Hold the model's writer lock (creating the model directory if needed)."""
        model_dir = self._model_dir(name)
        if not model_dir.is_dir():
            created_root = not self.root.is_dir()
            model_dir.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.root)
            if created_root and self.root.parent.is_dir():
                fsync_dir(self.root.parent)
        fd = os.open(model_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield model_dir
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def abandoned_leftovers(self, name: str | None = None) -> list[Path]:
        """Staging and half-deleted directories whose writer is gone (killed publishes).

        Readers ignore them; ``clean`` (``convserve models verify --clean``) or the next
        publish removes them.
        """
        names = [name] if name is not None else self._model_dirs()
        found = []
        for model in names:
            try:
                entries = list(os.scandir(self._model_dir(model)))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                if entry.name.startswith(STAGING_PREFIX) and entry.is_dir():
                    if _is_abandoned(Path(entry.path)):
                        found.append(Path(entry.path))
                elif entry.name.startswith(DELETING_PREFIX) and entry.is_dir():
                    found.append(Path(entry.path))  # deletes finish under the lock
        return sorted(found)

    @_os_errors_as_store_errors("clean")
    def clean(self, name: str | None = None) -> list[Path]:
        """Remove abandoned staging and half-deleted directories; returns what was removed."""
        names = [name] if name is not None else self._model_dirs()
        removed = []
        for model in names:
            if not self._model_dir(model).is_dir():
                continue
            with self._locked(model):
                removed.extend(self._remove_leftovers(model))
        return removed

    def _remove_leftovers(self, name: str) -> list[Path]:
        """Under the model lock: nothing mid-delete is live, and staging dirs are created under
        the lock and flocked before it is released, so an unlocked one is abandoned."""
        removed = self.abandoned_leftovers(name)
        model_dir = self._model_dir(name)
        for path in removed:
            shutil.rmtree(path, ignore_errors=True)
        for tmp in model_dir.glob(f".{ALIASES_FILE}.*.tmp"):
            tmp.unlink(missing_ok=True)  # alias writes also happen under the lock
            removed.append(tmp)
        return removed

    def _model_dirs(self) -> list[str]:
        """All model directories with a valid name, versions or not."""
        try:
            entries = list(os.scandir(self.root))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(
            e.name
            for e in entries
            if e.name.isascii() and _NAME_RE.fullmatch(e.name) and e.is_dir()
        )

    # ------------------------------------------------------------------ publishing
    @_os_errors_as_store_errors("publish")
    def publish(
        self,
        bundle_path: str | os.PathLike,
        name: str,
        *,
        alias: str | None = None,
        note: str | None = None,
        parent_version: int | None = None,
        force: bool = False,
        gate: str | tuple[str, ...] = DEFAULT_GATE,
    ) -> int:
        """Add a bundle as the model's next version and return that version number.

        The bundle is read once, validated and run on the probe set (``training.probe``:
        non-finite outputs are refused, ``force`` or not) before the store is touched; the
        probe accuracy and its floor go into the manifest. Its bytes go to a staging directory
        on the same filesystem, the version number is taken under the model's lock and the
        staging directory is renamed into place: concurrent publishers get distinct versions
        and readers never see a partial version. With ``alias``, the alias moves through the
        regression gate of ``promote`` (``gate`` chooses its checks; unless ``force``), all or
        nothing: if the gate refuses or any write fails, nothing is published.
        """
        gate = _check_publish_arguments(name, alias, note, parent_version, gate)
        source = Path(bundle_path)
        data = _read_bundle_file(source)
        digest = hashlib.sha256(data).hexdigest()
        bundle = load_bundle_bytes(data, label=str(source))
        probe = check_probe(bundle, f"not publishing {source.name} as {name}", digest=digest)
        summary = self._manifest_summary(bundle.metadata, str(source))
        summary["probe"] = probe_record(probe)

        staging, staging_fd = self._create_staging_dir(name)
        try:
            os.chmod(staging, 0o755)  # mkdtemp makes it 0700; the service may be another user
            _write_file_durably(staging / BUNDLE_FILE, data)
            with self._locked(name):
                version = self._next_version(name)
                manifest = {
                    "format_version": MANIFEST_FORMAT,
                    "name": name,
                    "version": version,
                    **_file_record(digest, len(data), source.name, note, parent_version),
                    **summary,
                }
                forced = self._publish_gate(name, manifest, alias, force, gate)
                _write_file_durably(staging / MANIFEST_FILE, _json_bytes(manifest))
                fsync_dir(staging)
                self._install_version(name, staging, version, alias, forced)
        except BaseException:
            # Still there unless the install succeeded (an undone install renamed it back).
            shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            os.close(staging_fd)
        return version

    def _create_staging_dir(self, name: str) -> tuple[Path, int]:
        """A fresh ``.staging-*`` directory in the model's directory (sweeping dead ones
        first), and a descriptor holding its flock: held until the rename, it tells cleaners
        this staging directory is alive."""
        with self._locked(name) as model_dir:
            self._remove_leftovers(name)
            staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=model_dir))
            staging_fd = os.open(staging, os.O_RDONLY)
            fcntl.flock(staging_fd, fcntl.LOCK_EX)
        return staging, staging_fd

    def _publish_gate(
        self, name: str, manifest: dict, alias: str | None, force: bool, gate: tuple[str, ...]
    ) -> bool:
        """Under the lock: the regression gate for publishing with ``alias``. Raises
        PromotionRefused unless ``force``; returns True when ``force`` overrode a refusal."""
        if alias is None:
            return False
        current = self._read_aliases_document(name)["aliases"].get(alias)
        refusal = self._gate_refusal(name, manifest, alias, current, gate)
        if refusal and not force:
            raise PromotionRefused(f"not publishing {name} with alias {alias}: {refusal}")
        return bool(refusal)

    def _install_version(
        self, name: str, staging: Path, version: int, alias: str | None, forced: bool
    ) -> None:
        """Under the lock: rename ``staging`` to ``<version>/`` and, with ``alias``, point it
        there: both or neither.

        Everything that needs disk space happens first: the new aliases.json is written and
        fsynced to a temporary file, the old one hard-linked aside. Then the version is
        renamed into place, aliases.json replaced, the directory fsynced. If any of these
        fails, the steps already done are undone (the version renamed back to ``staging``,
        the old aliases.json put back) and the error is raised: nothing is published.
        """
        model_dir = self._model_dir(name)
        target = model_dir / str(version)
        replacement = None
        if alias is not None:
            document, _ = self._moved_aliases_document(name, alias, version, "publish", forced)
            replacement = _AliasesReplacement.prepare(model_dir / ALIASES_FILE, document)
        renamed = False
        try:
            os.rename(staging, target)
            renamed = True
            if replacement is not None:
                replacement.commit()
            fsync_dir(model_dir)
        except BaseException:
            # Best effort, each step on its own: the first error is the one to report.
            if replacement is not None:
                with contextlib.suppress(OSError):
                    replacement.roll_back()
            if renamed:
                with contextlib.suppress(OSError):
                    os.rename(target, staging)  # the caller removes staging
            with contextlib.suppress(OSError):
                fsync_dir(model_dir)
            raise
        finally:
            if replacement is not None:
                replacement.discard()

    @staticmethod
    def _manifest_summary(metadata: dict, label: str) -> dict:
        """What the manifest copies from the bundle's metadata (checked where the gate
        depends on it)."""
        metrics = metadata.get("metrics") or {}
        if not isinstance(metrics, dict):
            raise BundleInvalid(f"{label}: metadata 'metrics' must be an object")
        for key in ("test_accuracy", "val_accuracy"):
            value = metrics.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise BundleInvalid(f"{label}: metrics {key!r} must be a number in [0, 1]")
        architecture = metadata.get("architecture") or {}
        records = {k: metadata[k] for k in MANIFEST_RECORDS if isinstance(metadata.get(k), dict)}
        return {
            **records,
            "metrics": {key: metrics[key] for key in MANIFEST_METRICS if key in metrics},
            "architecture": architecture.get("name") if isinstance(architecture, dict) else None,
            "class_labels": metadata.get("class_labels"),
            "dtype": metadata.get("dtype"),
            "input": metadata.get("input"),
            "training": metadata.get("training") or {},
            "history": metadata.get("history") or [],
            "data_fingerprint": metadata.get("data_fingerprint") or {},
            "bundle_created": metadata.get("created"),
        }

    def _next_version(self, name: str) -> int:
        """Under the lock: one more than any version that exists or ever existed (deleted
        numbers are not reused, so ``mnist:3`` always means the same weights)."""
        model_dir = self._model_dir(name)
        deleted = [
            entry.get("version")
            for entry in self._read_aliases_document(name)["deleted"]
            if isinstance(entry, dict) and isinstance(entry.get("version"), int)
        ]
        version = max([0, *self._scan_versions(model_dir), *deleted]) + 1
        while os.path.lexists(model_dir / str(version)):  # a stray file of that name
            version += 1
        return version

    # ------------------------------------------------------------------ aliases
    def _gate_refusal(
        self,
        name: str,
        candidate: dict,
        alias: str,
        current: int | None,
        gate: tuple[str, ...] = DEFAULT_GATE,
    ) -> str | None:
        """Why pointing ``alias`` at ``candidate`` (a manifest) would be a regression, or
        None. Compares each figure the ``gate`` names (``GATE_CHECKS``) with that of the
        alias's current version; a figure the current version does not record is not
        compared, one only the current version records is a refusal."""
        if current is None or current == candidate["version"]:
            return None
        try:
            current_manifest = self.manifest(name, current)
        except (BundleInvalid, ModelNotFound):
            return None  # the current target is broken or gone: anything is better
        for check in gate:
            key, higher_is_better, shown = GATE_CHECKS[check]
            current_value = _metric_number(current_manifest, key)
            if current_value is None:
                continue
            value = _metric_number(candidate, key)
            where = f"{current_value:.4f} of {format_ref(name, current)}, which {alias} points at"
            if value is None:
                return f"it records no {shown} to compare with {where}; use --force to override"
            if value < current_value if higher_is_better else value > current_value:
                worse = "below" if higher_is_better else "above"
                return f"its {shown} {value:.4f} is {worse} {where}; use --force to override"
        return None

    def _moved_aliases_document(
        self, name: str, alias: str, version: int, action: str, forced: bool
    ) -> tuple[dict, int | None]:
        """Under the lock: the aliases document with ``alias`` pointing at ``version`` and the
        move appended to its history (not written), and the previous version (None if the
        alias is new)."""
        document = self._read_aliases_document(name)
        previous = document["aliases"].get(alias)
        document["aliases"][alias] = version
        entry = {"version": version, "previous": previous, "at": _now(), "action": action}
        if forced:
            entry["forced"] = True
        document["history"].setdefault(alias, []).append(entry)
        return document, previous

    def _move_alias(
        self, name: str, alias: str, version: int, action: str, *, forced: bool = False
    ) -> int | None:
        """Under the lock: point ``alias`` at ``version``, append to its history, write
        aliases.json atomically. Returns the previous version (None if the alias is new)."""
        document, previous = self._moved_aliases_document(name, alias, version, action, forced)
        self._write_aliases_document(name, document)
        return previous

    @_os_errors_as_store_errors("promote")
    def promote(
        self,
        name: str,
        version: int,
        alias: str,
        *,
        force: bool = False,
        gate: str | tuple[str, ...] = DEFAULT_GATE,
    ) -> dict:
        """Point ``alias`` at ``version`` and return ``{"name", "alias", "version",
        "previous"}``.

        The version is verified (sha256 and bundle) first. The regression gate refuses
        (PromotionRefused) when its recorded test accuracy is below that of the version the
        alias points at now, or missing while that one has one; ``force`` overrides the gate,
        never the integrity check. gate: what the gate compares (``parse_gate``: test accuracy
        by default; ``"accuracy,ece,auroc"`` also refuses a worse calibration or detector).
        """
        validate_alias(alias)
        gate = parse_gate(gate)
        validate_version(version)
        self._require_model(name)
        with self._locked(name):
            self.resolve(name, version=version)
            self.load(name, version)  # never point an alias at a corrupt version
            manifest = self.manifest(name, version)
            current = self._read_aliases_document(name)["aliases"].get(alias)
            if current == version:
                return {"name": name, "alias": alias, "version": version, "previous": version}
            refusal = self._gate_refusal(name, manifest, alias, current, gate)
            if refusal and not force:
                raise PromotionRefused(
                    f"not promoting {format_ref(name, version)} to {name}@{alias}: {refusal}"
                )
            previous = self._move_alias(name, alias, version, "promote", forced=bool(refusal))
        return {"name": name, "alias": alias, "version": version, "previous": previous}

    @staticmethod
    def _alias_stack(history: list[dict]) -> list[int]:
        """Replay an alias's history into the stack of versions it held: promotions and
        publishes push, rollbacks pop. The top is the current version."""
        stack: list[int] = []
        for entry in history:
            version = entry.get("version")
            if entry.get("action") == "rollback":
                if stack:
                    stack.pop()
                if not stack or stack[-1] != version:
                    stack.append(version)  # history edited by hand: trust the entry
            else:
                stack.append(version)
        return stack

    @_os_errors_as_store_errors("roll back")
    def rollback(self, name: str, alias: str) -> int:
        """Point ``alias`` back at the version it held before its last promotion (repeatable:
        each rollback undoes one more). Not gated: it is the way back. The target is verified
        first. Returns the version the alias now points at."""
        validate_alias(alias)
        self._require_model(name)
        with self._locked(name):
            document = self._read_aliases_document(name)
            if alias not in document["aliases"]:
                raise AliasNotFound(f"model {name!r} has no alias {alias!r}")
            current = document["aliases"][alias]
            stack = self._alias_stack(document["history"].get(alias, []))
            if len(stack) < 2 or stack[-1] != current:
                raise RollbackImpossible(
                    f"{name}@{alias} has no earlier version to roll back to "
                    f"(it points at {format_ref(name, current)})"
                )
            target = stack[-2]
            if not isinstance(target, int) or target not in self.versions(name):
                raise RollbackImpossible(
                    f"cannot roll back {name}@{alias}: its previous version {target} was "
                    f"deleted; promote a version explicitly instead"
                )
            self.load(name, target)
            self._move_alias(name, alias, target, "rollback")
        return target

    # ------------------------------------------------------------------ deleting
    @_os_errors_as_store_errors("delete")
    def delete(self, name: str, version: int) -> None:
        """Remove a version. Refuses (AliasInUse) while an alias points at it. The number is
        never reused."""
        validate_version(version)
        self._require_model(name)
        with self._locked(name) as model_dir:
            self.resolve(name, version=version)
            document = self._read_aliases_document(name)
            holders = sorted(a for a, v in document["aliases"].items() if v == version)
            if holders:
                raise AliasInUse(
                    f"{format_ref(name, version)} is in use by alias "
                    f"{', '.join(holders)}; promote another version to it first"
                )
            document["deleted"].append({"version": version, "at": _now()})
            self._write_aliases_document(name, document)
            # One rename makes the version vanish for readers; the slow removal follows.
            doomed = model_dir / f"{DELETING_PREFIX}{version}-{os.urandom(4).hex()}"
            os.rename(model_dir / str(version), doomed)
            fsync_dir(model_dir)
            shutil.rmtree(doomed)

    # ------------------------------------------------------------------ checking
    def verify(self, name: str | None = None, version: int | None = None) -> list[str]:
        """Check versions (sha256, size, bundle validity, manifest) and aliases; return the
        problems found, one sentence each (``[]`` = all good). Abandoned staging directories
        are not problems (see ``abandoned_leftovers``)."""
        if version is not None and name is None:
            raise InvalidName("verify: a version needs a model name")
        problems: list[str] = []
        if name is not None:
            self._require_model(name)
            names = [name]
        else:
            names = self._model_dirs()
        for model in names:
            if version is not None:
                self.resolve(model, version=version)
                versions = [version]
            else:
                versions = self.versions(model)
            for each in versions:
                try:
                    self.load(model, each)
                except (BundleInvalid, ModelNotFound) as exc:
                    problems.append(str(exc))
            try:
                aliases = self._read_aliases_document(model)["aliases"]
            except StoreError as exc:
                problems.append(str(exc))
                continue
            existing = set(self.versions(model))
            for alias, target in sorted(aliases.items()):
                if version is not None and target != version:
                    continue
                if target not in existing:
                    problems.append(f"{model}@{alias} points at version {target}, which is gone")
        return problems

    # ------------------------------------------------------------------ polling
    def change_token(self, name: str) -> tuple:
        """A cheap, lock-free fingerprint of the model's published state, for hot-reload
        polling: it changes whenever a version appears or goes, or an alias moves.

        (aliases.json stat: mtime_ns, size, inode) + (model dir: mtime_ns, inode) + the
        version numbers. The version list covers two publishes within one filesystem
        timestamp tick; aliases.json only grows (history is appended), so its size changes
        on every alias move.
        """
        model_dir = self._model_dir(name)
        try:
            stat = os.stat(model_dir / ALIASES_FILE)
            aliases_part = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        except (FileNotFoundError, NotADirectoryError):
            aliases_part = None
        try:
            stat = os.stat(model_dir)
            dir_part = (stat.st_mtime_ns, stat.st_ino)
        except (FileNotFoundError, NotADirectoryError):
            dir_part = None
        return (aliases_part, dir_part, tuple(self._scan_versions(model_dir)))
