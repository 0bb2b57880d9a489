"""Aliases: the promotion gate and --force, rollback through history, delete, "latest"."""

import json

import pytest

from tests.support.bundles import make_bundle, publish_versions
from training.store import (
    AliasInUse,
    AliasNotFound,
    InvalidName,
    ModelStore,
    PromotionRefused,
    RollbackImpossible,
    StoreError,
    VersionNotFound,
)


@pytest.fixture
def store(tmp_path):
    return ModelStore(tmp_path / "store")


def test_first_promotion_sets_the_alias(store, tmp_path):
    publish_versions(store, tmp_path, [0.9])
    result = store.promote("mnist", 1, "production")
    assert result == {"name": "mnist", "alias": "production", "version": 1, "previous": None}
    assert store.aliases("mnist") == {"production": 1}
    assert store.resolve("mnist", alias="production") == 1


def test_the_gate_refuses_a_regression_and_force_overrides_it(store, tmp_path):
    publish_versions(store, tmp_path, [0.9, 0.8])
    store.promote("mnist", 1, "production")
    with pytest.raises(PromotionRefused, match=r"0\.8000 is below 0\.9000 of mnist:1.*--force"):
        store.promote("mnist", 2, "production")
    assert store.aliases("mnist") == {"production": 1}
    assert len(store.alias_history("mnist")["production"]) == 1

    result = store.promote("mnist", 2, "production", force=True)
    assert result["previous"] == 1 and result["version"] == 2
    last = store.alias_history("mnist")["production"][-1]
    assert last["action"] == "promote" and last["forced"] is True


@pytest.mark.parametrize("candidate", [0.9, 0.95])
def test_equal_or_better_accuracy_passes_the_gate(store, tmp_path, candidate):
    publish_versions(store, tmp_path, [0.9, candidate])
    store.promote("mnist", 1, "production")
    assert store.promote("mnist", 2, "production")["previous"] == 1
    assert "forced" not in store.alias_history("mnist")["production"][-1]


def test_the_gate_needs_a_recorded_accuracy_to_compare(store, tmp_path):
    publish_versions(store, tmp_path, [0.9, None, None])
    store.promote("mnist", 1, "production")
    with pytest.raises(PromotionRefused, match="records no test accuracy"):
        store.promote("mnist", 2, "production")
    # With nothing recorded on the current version either, there is nothing to regress from.
    store.promote("mnist", 2, "staging")
    assert store.promote("mnist", 3, "staging")["previous"] == 2


def test_each_alias_is_gated_against_its_own_version(store, tmp_path):
    publish_versions(store, tmp_path, [0.9, 0.8, 0.85])
    store.promote("mnist", 1, "production")
    store.promote("mnist", 2, "staging")
    assert store.promote("mnist", 3, "staging")["previous"] == 2
    with pytest.raises(PromotionRefused):
        store.promote("mnist", 3, "production")


def test_promoting_to_the_current_version_changes_nothing(store, tmp_path):
    publish_versions(store, tmp_path, [0.9])
    store.promote("mnist", 1, "production")
    token = store.change_token("mnist")
    assert store.promote("mnist", 1, "production")["previous"] == 1
    assert store.change_token("mnist") == token


def test_promote_refuses_unknown_versions_and_models(store, tmp_path):
    publish_versions(store, tmp_path, [0.9])
    with pytest.raises(VersionNotFound):
        store.promote("mnist", 5, "production")
    with pytest.raises(InvalidName, match="reserved"):
        store.promote("mnist", 1, "latest")
    with pytest.raises(StoreError, match="no model named 'fashion'"):
        store.promote("fashion", 1, "production")
    assert not (store.root / "fashion").exists()
    assert store.aliases("mnist") == {}


def test_publish_with_an_alias_goes_through_the_gate(store, tmp_path):
    good = make_bundle(tmp_path / "good.npz", test_accuracy=0.9)
    worse = make_bundle(tmp_path / "worse.npz", seed=1, test_accuracy=0.8)
    assert store.publish(good, "mnist", alias="production") == 1
    with pytest.raises(PromotionRefused, match="not publishing mnist with alias production"):
        store.publish(worse, "mnist", alias="production")
    # Refused means nothing was published, and no staging directory is left behind.
    assert store.versions("mnist") == [1]
    assert [p.name for p in (store.root / "mnist").iterdir() if p.name.startswith(".st")] == []
    assert store.publish(worse, "mnist", alias="production", force=True) == 2
    history = store.alias_history("mnist")["production"]
    assert [(e["action"], e["version"], e["previous"]) for e in history] == [
        ("publish", 1, None),
        ("publish", 2, 1),
    ]
    assert history[-1]["forced"] is True


def test_rollback_walks_back_through_history(store, tmp_path):
    publish_versions(store, tmp_path, [0.7, 0.8, 0.9])
    for version in (1, 2, 3):
        store.promote("mnist", version, "production")
    assert store.rollback("mnist", "production") == 2
    assert store.rollback("mnist", "production") == 1
    assert store.aliases("mnist") == {"production": 1}
    with pytest.raises(RollbackImpossible, match="no earlier version"):
        store.rollback("mnist", "production")
    # A promotion after rollbacks starts a new branch: rolling back returns to 1.
    store.promote("mnist", 3, "production")
    assert store.rollback("mnist", "production") == 1
    history = store.alias_history("mnist")["production"]
    assert [(e["action"], e["version"], e["previous"]) for e in history] == [
        ("promote", 1, None),
        ("promote", 2, 1),
        ("promote", 3, 2),
        ("rollback", 2, 3),
        ("rollback", 1, 2),
        ("promote", 3, 1),
        ("rollback", 1, 3),
    ]
    assert all(e["at"].endswith("+00:00") for e in history)


def test_rollback_is_not_gated(store, tmp_path):
    publish_versions(store, tmp_path, [0.7, 0.9])
    store.promote("mnist", 1, "production")
    store.promote("mnist", 2, "production")
    assert store.rollback("mnist", "production") == 1


def test_rollback_to_a_deleted_version_is_refused(store, tmp_path):
    publish_versions(store, tmp_path, [0.7, 0.8])
    store.promote("mnist", 1, "production")
    store.promote("mnist", 2, "production")
    store.delete("mnist", 1)
    with pytest.raises(RollbackImpossible, match="previous version 1 was deleted"):
        store.rollback("mnist", "production")
    assert store.aliases("mnist") == {"production": 2}


def test_rollback_of_an_unknown_alias(store, tmp_path):
    publish_versions(store, tmp_path, [0.7])
    with pytest.raises(AliasNotFound, match="no alias 'production'"):
        store.rollback("mnist", "production")


def test_delete_refuses_while_an_alias_points_at_the_version(store, tmp_path):
    publish_versions(store, tmp_path, [0.7, 0.8])
    store.promote("mnist", 1, "production")
    store.promote("mnist", 1, "canary")
    with pytest.raises(AliasInUse, match="mnist:1 is in use by alias canary, production"):
        store.delete("mnist", 1)
    assert store.versions("mnist") == [1, 2]
    assert store.load("mnist", 1).network is not None
    store.promote("mnist", 2, "production")
    store.promote("mnist", 2, "canary")
    store.delete("mnist", 1)
    assert store.versions("mnist") == [2]
    assert not (store.root / "mnist" / "1").exists()
    assert [p.name for p in (store.root / "mnist").iterdir() if p.name.startswith(".del")] == []
    with pytest.raises(VersionNotFound):
        store.delete("mnist", 1)
    assert store.verify() == []


def test_latest_is_always_the_highest_version(store, tmp_path):
    publish_versions(store, tmp_path, [0.7, 0.8])
    assert store.resolve("mnist", alias="latest") == 2
    assert store.resolve_ref("mnist@latest") == ("mnist", 2)
    store.publish(make_bundle(tmp_path / "third.npz", seed=7), "mnist")
    assert store.resolve_ref("mnist:latest") == ("mnist", 3)
    assert "latest" not in store.aliases("mnist")


def test_a_damaged_aliases_file_is_reported_and_versions_still_list(store, tmp_path):
    publish_versions(store, tmp_path, [0.7])
    (store.root / "mnist" / "aliases.json").write_text('{"aliases": {"production": "one"}}')
    with pytest.raises(StoreError, match="aliases.json is damaged"):
        store.aliases("mnist")
    with pytest.raises(StoreError, match="aliases.json is damaged"):
        store.promote("mnist", 1, "production")
    assert store.versions("mnist") == [1]
    assert store.verify() == ["mnist: aliases.json is damaged (not the expected JSON)"]


def test_an_alias_pointing_at_a_missing_version_is_reported(store, tmp_path):
    publish_versions(store, tmp_path, [0.7])
    path = store.root / "mnist" / "aliases.json"
    path.write_text(json.dumps({"aliases": {"production": 4}, "history": {}}))
    with pytest.raises(VersionNotFound, match="points at version 4"):
        store.resolve("mnist", alias="production")
    assert store.verify() == ["mnist@production points at version 4, which is gone"]
