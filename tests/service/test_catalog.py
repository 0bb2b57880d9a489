"""The catalog: the store's models, versions, aliases and manifests merged with what the
predictor serves, as the JSON routes, V2 metadata and the models page read them."""

from __future__ import annotations

import pytest

from service.catalog import Catalog, parse_version_text
from service.config import load_config
from service.errors import NotFound
from service.registry import ModelRegistry
from tests.support.bundles import make_store
from training.store import ModelNotFound, StoreError, VersionNotFound, aliases_by_version


@pytest.fixture
def store(tmp_path):
    """mnist:1 (production, canary), mnist:2 (staging), mnist:3 (no alias)."""
    store = make_store(
        tmp_path,
        {"seed": 1, "test_accuracy": 0.5, "alias": "production"},
        {"seed": 2, "test_accuracy": 0.6, "alias": "staging"},
        {"seed": 3, "test_accuracy": 0.7},
    )
    store.promote("mnist", 1, "canary")
    return store


@pytest.fixture
def registry(store):
    """Serves mnist@production (version 1), loaded; only mnist (a fixed MODELS list)."""
    settings = load_config({"MODELS": "mnist", "RELOAD_INTERVAL_S": 0}, environ={})
    registry = ModelRegistry(store, settings)
    registry.load_all()
    yield registry
    registry.stop()


@pytest.fixture
def predictor(registry):
    return registry.default


@pytest.fixture
def catalog(store, registry) -> Catalog:
    return Catalog(store, registry)


def refuse_a_reload_of_version_2(store, predictor) -> None:
    """Point production at mnist:2, corrupt it, and let the predictor refuse to load it."""
    store.promote("mnist", 2, "production")
    (store.root / "mnist" / "2" / "model.npz").write_bytes(b"not a bundle")
    predictor.check_for_update(force=True)


# ---------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "version"), [("0", 0), ("3", 3), ("0012", 12), ("9" * 18, int("9" * 18))]
)
def test_version_text_of_ascii_digits_is_a_version(text, version):
    assert parse_version_text(text) == version


@pytest.mark.parametrize("text", ["", "seven", "-1", "+1", "1.0", " 1", "1 ", "٣", "²", "9" * 19])
def test_other_version_text_names_no_version(text):
    assert parse_version_text(text) is None


def test_aliases_are_grouped_by_version_sorted_by_name():
    grouped = aliases_by_version({"staging": 2, "production": 1, "canary": 1})
    assert grouped == {1: ["canary", "production"], 2: ["staging"]}
    assert aliases_by_version({}) == {}


# ---------------------------------------------------------------------------------- questions


def test_model_lists_every_version_with_its_aliases_manifest_and_serving(catalog):
    model = catalog.model("mnist")
    assert [entry.version for entry in model.versions] == [1, 2, 3]
    assert [entry.aliases for entry in model.versions] == [
        ["canary", "production"],
        ["staging"],
        [],
    ]
    assert [entry.served for entry in model.versions] == [True, False, False]
    assert [entry.manifest["metrics"]["test_accuracy"] for entry in model.versions] == [
        0.5,
        0.6,
        0.7,
    ]
    assert model.served_version == 1
    assert model.serving["alias"] == "production" and model.serving["loaded_at"]
    assert catalog.versions("mnist") == [1, 2, 3]
    assert catalog.model_names() == ["mnist"]


def test_a_version_with_an_unreadable_manifest_is_listed_with_the_reason(catalog, store):
    (store.root / "mnist" / "3" / "manifest.json").write_text("{not json")
    entry = catalog.model("mnist").versions[-1]
    assert entry.manifest is None
    assert entry.error.startswith("mnist:3: manifest.json is not valid JSON")


def test_without_a_predictor_nothing_is_served(store):
    catalog = Catalog(store)
    model = catalog.model("mnist")
    assert model.serving is None and model.served_version is None
    assert not any(entry.served for entry in model.versions)
    assert catalog.models_document()["serving"] is None
    assert "serving" not in catalog.model_document("mnist")
    document = catalog.version_document("mnist", "1")
    assert document["served"] is False and document["reload_error"] is None


def test_a_model_the_predictor_does_not_serve_has_no_serving_state(tmp_path, store, registry):
    other = make_store(tmp_path / "other", {"seed": 4}, name="fashion")
    catalog = Catalog(other, registry)
    assert catalog.model("fashion").serving is None
    assert "served_version" not in catalog.models_document()["models"][0]


def test_unknown_models_are_model_not_found(catalog):
    with pytest.raises(ModelNotFound):
        catalog.model("fashion")
    with pytest.raises(ModelNotFound):
        catalog.versions("fashion")


# ---------------------------------------------------------------------------------- documents


def test_models_document(catalog, predictor):
    document = catalog.models_document()
    assert document["models"] == [
        {
            "name": "mnist",
            "versions": [1, 2, 3],
            "aliases": {"canary": 1, "production": 1, "staging": 2},
            "served_version": 1,
        }
    ]
    assert document["serving"] == {"name": "mnist", **predictor.status()}


def test_models_document_lists_a_model_with_damaged_aliases_and_says_why(catalog, store):
    (store.root / "mnist" / "aliases.json").write_text("[]")
    (entry,) = catalog.models_document()["models"]
    assert entry["aliases"] == {} and entry["versions"] == [1, 2, 3]
    assert "aliases.json is damaged" in entry["error"]
    with pytest.raises(StoreError):
        catalog.model_document("mnist")


def test_model_document(catalog, store, predictor):
    (store.root / "mnist" / "3" / "manifest.json").write_text("[]")
    document = catalog.model_document("mnist")
    assert document["name"] == "mnist"
    assert document["aliases"] == {"canary": 1, "production": 1, "staging": 2}
    assert document["serving"] == predictor.status()
    first, second, broken = document["versions"]
    assert list(first) == [
        "version",
        "aliases",
        "created",
        "architecture",
        "note",
        "metrics",
        "class_labels",
        "served",
    ]
    assert first["aliases"] == ["canary", "production"] and first["served"] is True
    assert first["metrics"] == {"test_accuracy": 0.5}
    assert first["class_labels"] == list(range(10))
    assert second["aliases"] == ["staging"] and second["served"] is False
    assert broken == {
        "version": 3,
        "aliases": [],
        "error": "mnist:3: manifest.json must hold a JSON object",
        "served": False,
    }


def test_version_document(catalog, store):
    document = catalog.version_document("mnist", "1")
    assert document == {
        "name": "mnist",
        "version": 1,
        "aliases": ["canary", "production"],
        "served": True,
        "reload_error": None,
        "manifest": store.manifest("mnist", 1),
    }
    assert catalog.version_document("mnist", "02")["version"] == 2


def test_version_document_names_the_refused_reload_of_that_version_only(catalog, store, predictor):
    refuse_a_reload_of_version_2(store, predictor)
    refused = catalog.version_document("mnist", "2")
    assert refused["reload_error"]["version"] == 2
    assert "mnist:2" in refused["reload_error"]["message"]
    assert refused["served"] is False
    served = catalog.version_document("mnist", "1")
    assert served["served"] is True and served["reload_error"] is None
    assert catalog.model("mnist").serving["last_reload_error"] == refused["reload_error"]


@pytest.mark.parametrize(
    ("name", "version_text", "error"),
    [
        ("mnist", "seven", NotFound),
        ("mnist", "1.0", NotFound),
        ("mnist", "9" * 19, NotFound),
        ("mnist", "7", VersionNotFound),
        ("fashion", "1", ModelNotFound),
    ],
)
def test_version_document_of_what_does_not_exist(catalog, name, version_text, error):
    with pytest.raises(error):
        catalog.version_document(name, version_text)
