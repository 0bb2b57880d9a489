"""The charts the models view draws (service/charts.py, service/trust_charts.py), as data:
learning curves, confusion matrices, reliability diagrams and live-against-validation
distributions, including what they refuse."""

from __future__ import annotations

import pytest

from service.charts import confusion_matrix, learning_curve
from service.trust_charts import distribution_chart, reliability_diagram


def test_learning_curve_plots_each_epoch_and_skips_missing_values():
    history = [
        {"epoch": 1, "train_accuracy": 0.5, "val_accuracy": 0.4},
        {"epoch": 2, "train_accuracy": 0.7, "val_accuracy": None},
        {"epoch": 3, "train_accuracy": 0.9, "val_accuracy": float("nan")},
        {"epoch": 4, "train_accuracy": 0.95, "val_accuracy": 0.9},
    ]
    curve = learning_curve(history, "accuracy", "c", "m version 1")
    train, val = curve.series
    assert (train.split, val.split) == ("train", "val")
    assert len(train.dots) == 4 and len(val.dots) == 2
    xs = [dot.x for dot in train.dots]
    ys = [dot.y for dot in train.dots]
    assert xs == sorted(xs) and len(set(xs)) == 4
    assert ys == sorted(ys, reverse=True), "higher accuracy is drawn higher (smaller y)"
    assert curve.left <= min(xs) and max(xs) <= curve.right
    assert curve.top <= min(ys) and max(ys) <= curve.bottom
    assert val.dots[-1].tooltip == "epoch 4: validation accuracy 90.00%"
    assert curve.title == "Learning curve: accuracy per epoch, m version 1"
    assert curve.y_ticks[-1].label == "100%", "an accuracy axis ends at 100%"


def test_learning_curve_of_one_epoch_and_of_none():
    one = learning_curve([{"epoch": 1, "train_loss": 0.3}], "loss", "x", "m")
    assert [len(series.dots) for series in one.series] == [1]
    assert learning_curve([], "loss", "y", "m") is None
    assert learning_curve([{"epoch": 1, "train_loss": None}], "loss", "y", "m") is None
    assert learning_curve("not a list", "loss", "y", "m") is None


@pytest.mark.parametrize(
    "matrix",
    [None, [], [[1, 2], [3]], [[1, "x"], [0, 1]], [[1, -1], [0, 1]], "nope", [[float("inf")]]],
)
def test_confusion_matrix_refuses_malformed_matrices(matrix):
    assert confusion_matrix(matrix, None, "cm", "m") is None


def test_confusion_matrix_shades_by_row_share_and_names_the_worst_mistake():
    matrix = [[8, 2, 0], [0, 10, 0], [1, 0, 9]]
    chart = confusion_matrix(matrix, ["a", "b", "c"], "cm", "m")
    opacities = [cell.opacity for cell in chart.cells]
    assert len(opacities) == 9
    assert opacities[4] == pytest.approx(1.0)  # b -> b, the whole row
    assert opacities[2] == 0.0  # a -> c never happens
    assert opacities[0] > opacities[1] > 0
    assert "true a predicted as b (2 times)" in chart.description
    assert chart.cells[6].tooltip == "true c, predicted a: 1 (10.0% of true c)"
    assert chart.counts == [["8", "2", "0"], ["0", "10", "0"], ["1", "0", "9"]]


@pytest.mark.parametrize(
    "record",
    [None, {}, {"test_reliability_before": {"count": [0, 0]}}, {"test_reliability_after": "x"}],
)
def test_reliability_diagram_needs_a_bin_to_draw(record):
    assert reliability_diagram(record, "r", "m") is None


def test_distribution_chart_checks_both_histograms():
    reference = {"le": [0.5, 1.0], "counts": [2, 5, 3], "total": 10}
    chart = distribution_chart(reference, None, "OOD score", "d", "m", marker=1.0)
    assert len(chart.reference) == 3 and chart.live == [] and chart.marker_x is not None
    assert chart.reference[1].tooltip == "OOD score 0.5-1: validation 50.0%"
    assert chart.title == "OOD score: live traffic against validation, m"
    assert chart.y_ticks[-1].label == "60%", "the axis ends at a round share above 50 %"
    other_bounds = {"le": [0.25, 1.0], "counts": [1, 1, 1], "total": 3}
    assert distribution_chart(reference, other_bounds, "x", "d", "m").live == []
    for broken in (None, {"le": [1.0, 0.5], "counts": [1, 1, 1]}, {"le": [1], "counts": [1]}):
        assert distribution_chart(broken, reference, "x", "d", "m") is None
