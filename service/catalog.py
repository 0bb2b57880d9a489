"""What the store holds and what this process serves, in one place: the catalog.

``GET /models`` and its two detail routes, the V2 model metadata and the models page all ask
the same questions: which models, versions and aliases exist, what each version's manifest
says, which version is served and since when, and why the last reload was refused. The
answers merge the store (on disk) with the predictor (in memory); this module is the one
place that merges them. HTTP-free: it raises the store's domain errors (``ModelNotFound``,
``VersionNotFound``, ...) and ``service.errors.NotFound``, which the error handler maps.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.errors import NotFound, StoreUnavailable
from training.errors import BundleInvalid
from training.store import ModelNotFound, ModelStore, StoreError, aliases_by_version

if TYPE_CHECKING:
    from service.registry import ModelRegistry

# The manifest keys GET /models/<name> shows per version (the rest is one route further).
VERSION_SUMMARY_KEYS = ("created", "architecture", "note", "metrics", "class_labels")
MAX_VERSION_DIGITS = 18  # the store's own limit on a version directory's name


def parse_version_text(text: str) -> int | None:
    """A version as written in a URL path or query ("3") -> 3; None unless ``text`` is ASCII
    digits only, at most 18 of them (so "٣", "+3", " 3" and "3.0" name no version)."""
    if text.isascii() and text.isdigit() and len(text) <= MAX_VERSION_DIGITS:
        return int(text)
    return None


@dataclass(frozen=True)
class VersionEntry:
    """One version of a model: its aliases (sorted), whether it is served, and its manifest,
    or why the manifest cannot be read (then ``manifest`` is None)."""

    version: int
    aliases: list[str]
    served: bool
    manifest: dict | None
    error: str | None = None


@dataclass(frozen=True)
class ModelEntry:
    """One model: its versions (ascending), alias -> version, and ``serving``, the
    predictor's status (``Predictor.status()``) when this process serves the model, else
    None."""

    name: str
    versions: list[VersionEntry]
    aliases: dict[str, int]
    serving: dict | None

    @property
    def served_version(self) -> int | None:
        """The version answering unpinned requests, or None (not served, or not loaded)."""
        return self.serving["served_version"] if self.serving else None


class Catalog:
    """Read-only answers about the store's models merged with what this process serves.

    ``models`` (the served models, service/registry.py) is None when no model is served in
    this process (the models page mounted without the service): every version is then
    reported as not served.
    """

    def __init__(self, store: ModelStore, models: ModelRegistry | None = None):
        self.store = store
        self.models = models

    # ------------------------------------------------------------------ questions
    def require_store(self) -> None:
        """StoreUnavailable (503) when the store directory is gone or unreadable: an empty
        answer would say "no models" when the truth is "cannot tell"."""
        root = self.store.root
        if not root.is_dir() or not os.access(root, os.R_OK | os.X_OK):
            raise StoreUnavailable(
                f"the model store {str(root)!r} is gone or unreadable; the models loaded "
                "before keep serving"
            )

    def model_names(self) -> list[str]:
        """The models with at least one version, sorted."""
        self.require_store()
        return self.store.models()

    def versions(self, name: str) -> list[int]:
        """The model's versions, ascending. ModelNotFound for an unknown model."""
        return self.store.versions(name)

    def serving(self, name: str) -> dict | None:
        """The predictor's status (served version, alias followed, ``loaded_at``, last check,
        ``last_reload_error``) if this process serves ``name``, else None."""
        predictor = None if self.models is None else self.models.get(name)
        return None if predictor is None else predictor.status()

    def model(self, name: str) -> ModelEntry:
        """Everything about one model, each version's manifest read once. Raises
        ModelNotFound for an unknown model and StoreError if its aliases file is damaged; a
        version whose manifest is unreadable is listed with its ``error`` instead."""
        self.require_store()
        versions = self.store.versions(name)
        aliases = self.store.aliases(name)
        by_version = aliases_by_version(aliases)
        serving = self.serving(name)
        served_version = serving["served_version"] if serving else None
        entries = []
        for version in versions:
            try:
                manifest, error = self.store.manifest(name, version), None
            except (BundleInvalid, ModelNotFound) as exc:
                manifest, error = None, str(exc)
            entries.append(
                VersionEntry(
                    version=version,
                    aliases=by_version.get(version, []),
                    served=served_version == version,
                    manifest=manifest,
                    error=error,
                )
            )
        return ModelEntry(name=name, versions=entries, aliases=aliases, serving=serving)

    # ------------------------------------------------------------------ JSON documents
    def models_document(self) -> dict:
        """The body of ``GET /models``: ``{"models": [{"name", "versions", "aliases"
        [, "error"] [, "served_version"]}], "serving": {"name", **status}}``. A model whose
        aliases file is damaged is listed with empty aliases and the ``error``."""
        models = []
        for name in self.model_names():
            entry: dict = {"name": name, "versions": self.store.versions(name)}
            try:
                entry["aliases"] = self.store.aliases(name)
            except StoreError as exc:
                entry["aliases"] = {}
                entry["error"] = str(exc)
            serving = self.serving(name)
            if serving is not None:
                entry["served_version"] = serving["served_version"]
            models.append(entry)
        default = None if self.models is None else self.models.default
        serving = None if default is None else {"name": default.name, **default.status()}
        return {"models": models, "serving": serving}

    def model_document(self, name: str) -> dict:
        """The body of ``GET /models/<name>``: ``{"name", "versions": [{"version", "aliases",
        <VERSION_SUMMARY_KEYS> | "error", "served"}], "aliases" [, "serving"]}``."""
        model = self.model(name)
        rows = []
        for entry in model.versions:
            row: dict = {"version": entry.version, "aliases": entry.aliases}
            if entry.manifest is not None:
                row.update({key: entry.manifest.get(key) for key in VERSION_SUMMARY_KEYS})
            else:
                row["error"] = entry.error
            row["served"] = entry.served
            rows.append(row)
        document: dict = {"name": name, "versions": rows, "aliases": model.aliases}
        if model.serving is not None:
            document["serving"] = model.serving
        return document

    def version_document(self, name: str, version_text: str) -> dict:
        """The body of ``GET /models/<name>/versions/<version_text>``: ``{"name", "version",
        "aliases", "served", "reload_error", "manifest"}``; ``reload_error`` is the last
        refused reload when it was of this version. NotFound if ``version_text`` is not a
        version number, else the store's ModelNotFound / VersionNotFound / BundleInvalid."""
        self.require_store()
        version = parse_version_text(version_text)
        if version is None:
            raise NotFound(f"no version {version_text[:40]!r} of {name!r}: versions are integers")
        version = self.store.resolve(name, version=version)
        manifest = self.store.manifest(name, version)
        serving = self.serving(name) or {}
        error = serving.get("last_reload_error")
        return {
            "name": name,
            "version": version,
            "aliases": aliases_by_version(self.store.aliases(name)).get(version, []),
            "served": serving.get("served_version") == version,
            "reload_error": error if error and error.get("version") == version else None,
            "manifest": manifest,
        }
