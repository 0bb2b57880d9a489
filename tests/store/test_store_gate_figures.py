"""The regression gate on calibration and the not-a-digit detector: ``--gate accuracy,ece,auroc``
refuses a version whose test ECE is higher or whose AUROC is lower than the alias's current
version; the default gate (accuracy alone) does not; ``models show`` prints the figures."""

import json

import numpy as np
import pytest

from convserve.cli import main
from training.bundle import build_metadata, input_contract, save_bundle
from training.network import Network, preset
from training.store import ModelStore, PromotionRefused, StoreError, parse_gate


def figures_bundle(path, *, seed=0, accuracy=0.99, ece=0.01, auroc=0.97):
    """An untrained bundle recording the given test accuracy, ECE and AUROC (None: absent)."""
    network = Network(preset("simpleconvnet"), rng=np.random.default_rng(seed))
    metrics = {"test_accuracy": accuracy, "test_ece": ece, "ood_auroc": auroc}
    metadata = build_metadata(
        network,
        contract=input_contract(0.1307, 0.3081),
        class_labels=list(range(10)),
        metrics={k: v for k, v in metrics.items() if v is not None},
    )
    return save_bundle(path, network, metadata)


@pytest.fixture
def store(tmp_path):
    """mnist:1 (accuracy 0.99, ECE 0.01, AUROC 0.97) is production."""
    store = ModelStore(tmp_path / "store")
    store.publish(figures_bundle(tmp_path / "v1.npz"), "mnist", alias="production")
    return store


@pytest.mark.parametrize(
    ("figures", "gate", "refused_for"),
    [
        ({"ece": 0.02}, "accuracy,ece,auroc", "test ECE 0.0200 is above 0.0100"),
        ({"auroc": 0.90}, "accuracy,ece,auroc", "not-a-digit AUROC 0.9000 is below 0.9700"),
        ({"auroc": 0.90}, "auroc", "AUROC"),
        ({"ece": None}, "ece", "records no test ECE"),
        ({"accuracy": 0.98}, "ece,accuracy", "test accuracy 0.9800 is below"),
    ],
)
def test_the_gate_refuses_a_worse_figure_when_asked(store, tmp_path, figures, gate, refused_for):
    store.publish(figures_bundle(tmp_path / "v2.npz", seed=1, **figures), "mnist")
    with pytest.raises(PromotionRefused, match=refused_for):
        store.promote("mnist", 2, "production", gate=gate)
    assert store.aliases("mnist") == {"production": 1}
    with pytest.raises(PromotionRefused, match=refused_for):
        store.publish(
            figures_bundle(tmp_path / "v3.npz", seed=2, **figures),
            "mnist",
            alias="production",
            gate=gate,
        )
    assert store.versions("mnist") == [1, 2]  # all or nothing


def test_the_default_gate_compares_accuracy_only(store, tmp_path):
    store.publish(figures_bundle(tmp_path / "v2.npz", seed=1, ece=0.05, auroc=0.5), "mnist")
    assert store.promote("mnist", 2, "production")["version"] == 2


def test_better_or_equal_figures_pass_the_full_gate(store, tmp_path):
    path = figures_bundle(tmp_path / "v2.npz", seed=1, ece=0.005, auroc=0.97)
    version = store.publish(path, "mnist", alias="production", gate="accuracy,ece,auroc")
    assert store.aliases("mnist") == {"production": version}


def test_a_current_version_without_the_figures_is_not_compared(tmp_path):
    store = ModelStore(tmp_path / "store")
    old = figures_bundle(tmp_path / "v1.npz", ece=None, auroc=None)
    store.publish(old, "mnist", alias="production")
    store.publish(figures_bundle(tmp_path / "v2.npz", seed=1, ece=0.5, auroc=0.1), "mnist")
    assert store.promote("mnist", 2, "production", gate="ece,auroc")["version"] == 2


@pytest.mark.parametrize("gate", ["accuracy,speed", "", ",", ["ece", "nope"]])
def test_unknown_gate_checks_are_refused(gate):
    with pytest.raises(StoreError, match="unknown gate check"):
        parse_gate(gate)


def test_gate_flag_on_the_command_line(store, tmp_path, capsys):
    root = str(store.root)
    v2 = figures_bundle(tmp_path / "v2.npz", seed=1, ece=0.03)
    assert main(["models", "publish", str(v2), "--name", "mnist", "--store", root]) == 0
    argv = ["models", "promote", "mnist", "2", "--alias", "production", "--store", root]
    assert main([*argv, "--gate", "accuracy,ece"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "test ECE 0.0300 is above 0.0100" in err
    assert main([*argv, "--gate", "accuracy,colour"]) == 2
    assert "unknown gate check 'colour'" in capsys.readouterr().err
    assert main(argv) == 0  # the default gate: accuracy only


def test_models_show_prints_calibration_and_detector(tmp_path, capsys):
    store = ModelStore(tmp_path / "store")
    path = figures_bundle(tmp_path / "v1.npz")
    store.publish(path, "mnist")
    assert main(["models", "show", "mnist:1", "--store", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert "calibration    - (trained before calibration" in out
    assert "no detector: predictions say the OOD score is unavailable" in out
    manifest_path = store.root / "mnist" / "1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["calibration"] = {"temperature": 1.25}
    manifest["metrics"].update(test_ece_uncalibrated=0.02, test_ece=0.004)
    manifest["ood"] = {
        "method": "mahalanobis",
        "views": [{"name": "channel_stats", "features": 60}, {"name": "logits", "features": 10}],
        "tpr": 0.95,
        "nondigits": {"letters": {"images": 170, "auroc": 0.97, "flagged": 0.8}},
    }
    manifest_path.write_text(json.dumps(manifest))
    assert main(["models", "show", "mnist:1", "--store", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert "temperature 1.250; test ECE 2.00% -> 0.40% (15 bins)" in out
    assert "mahalanobis on channel_stats (60) + logits (10)" in out and "AUROC 0.97" in out
    assert "letters" in out and "flagged 80.00% of 170" in out
