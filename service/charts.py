"""The models page's charts as data: learning curves and confusion matrices laid out in SVG
user units, for ``templates/_charts.html`` to draw.

Nothing here writes markup. Each function checks the manifest's numbers (a manifest is
data from disk: anything may be missing, ``None``, NaN or of the wrong type), places the
axes, ticks, points and cells, and writes the texts a screen reader gets (titles,
descriptions, tooltips). The template escapes every text when it draws them. Coordinates are
rounded to 0.1 unit: finer than a pixel, and short in the page.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

CURVE_WIDTH, CURVE_HEIGHT = 360, 230
CURVE_LEFT, CURVE_RIGHT, CURVE_TOP, CURVE_BOTTOM = 48, 346, 34, 192  # the plot area's edges
CURVE_SERIES = (("train", "train"), ("val", "validation"))  # (key prefix, name shown)
LEGEND_SPACING = 110  # between the legend entries of the two series
MAX_EPOCH_LABELS = 8
MATRIX_MARGIN = 44.0  # room left of and above the cells for the class labels


def is_number(value) -> bool:
    """True for a finite int or float (not a bool): what a chart can plot."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _coordinate(value: float) -> float:
    return round(value, 1)


# ---------------------------------------------------------------------------------- curves


@dataclass(frozen=True)
class Tick:
    """A tick at ``position`` (x for the epoch axis, y for the value axis) and its label,
    written at ``label_position`` along the same axis."""

    position: float
    label_position: float
    label: str


@dataclass(frozen=True)
class Dot:
    """One plotted point: its centre and its tooltip."""

    x: float
    y: float
    tooltip: str


@dataclass(frozen=True)
class Series:
    """One line of a learning curve: ``split`` ("train" or "val", also its CSS class),
    ``name`` (legend text), its points as an SVG ``points`` list and one dot per point."""

    split: str
    name: str
    dashed: bool
    legend_x: int
    points: str
    dots: list[Dot]


@dataclass(frozen=True, kw_only=True)
class PlotFrame:
    """What every line and bar chart of the models view shares: its id, title and
    description (for screen readers), a ``width`` x ``height`` view box with the plot area
    spanning ``left``..``right`` and ``top``..``bottom``, and the ticks along each axis."""

    element_id: str
    title: str
    description: str
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    width: int = CURVE_WIDTH
    height: int = CURVE_HEIGHT
    left: int = CURVE_LEFT
    right: int = CURVE_RIGHT
    top: int = CURVE_TOP
    bottom: int = CURVE_BOTTOM

    @property
    def centre_x(self) -> float:
        return (self.left + self.right) / 2


@dataclass(frozen=True, kw_only=True)
class LearningCurve(PlotFrame):
    """A line chart: ``y_ticks`` are grid lines with value labels, ``x_ticks`` epochs."""

    series: list[Series]


def _nice_step(span: float, count: int) -> float:
    """A round step (1, 2, 2.5 or 5 times a power of ten) cutting ``span`` into about
    ``count`` parts."""
    raw = span / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude  # pragma: no cover - the loop always returns


def axis_range(values: list[float], metric: str) -> tuple[float, float, float]:
    """(low, high, tick step) covering ``values``: accuracy within [0, 1], loss from 0."""
    high_value, low_value = max(values), min(values)
    if metric == "accuracy":
        low, high = max(0.0, low_value - 0.01), min(max(1.0, high_value), high_value + 0.005)
    else:
        low, high = 0.0, high_value * 1.05 if high_value > 0 else 1.0
    if high - low < 1e-6:
        low, high = max(0.0, low - 0.05), high + 0.05
    step = _nice_step(high - low, 4)
    # Nice steps divide 1, so an accuracy axis ends at 100% exactly.
    low = math.floor(low / step + 1e-9) * step
    high = math.ceil(high / step - 1e-9) * step
    return low, high, step


def _tick_label(value: float, metric: str, step: float) -> str:
    if metric == "accuracy":
        decimals = 0 if step >= 0.01 else 1
        return f"{100 * value:.{decimals}f}%"
    return f"{value:.3g}"


def _value_text(value: float, metric: str) -> str:
    return f"{100 * value:.2f}%" if metric == "accuracy" else f"{value:.4f}"


def _series_points(history: list, split: str, metric: str) -> list[tuple[float, float]]:
    """(epoch, value) of every history record with numbers for both; a record without an
    ``epoch`` counts from 1 by position."""
    points = []
    for index, record in enumerate(history):
        if not isinstance(record, dict):
            continue
        epoch = record.get("epoch", index + 1)
        value = record.get(f"{split}_{metric}")
        if is_number(epoch) and is_number(value):
            points.append((float(epoch), float(value)))
    return points


@dataclass(frozen=True)
class _CurveScale:
    """Maps epochs (``first``..``last``) and values (``low``..``high``) onto the plot area,
    in unrounded SVG units; higher values are drawn higher (smaller y)."""

    first: float
    last: float
    low: float
    high: float

    def x(self, epoch: float) -> float:
        if self.last == self.first:
            return (CURVE_LEFT + CURVE_RIGHT) / 2
        share = (epoch - self.first) / (self.last - self.first)
        return CURVE_LEFT + share * (CURVE_RIGHT - CURVE_LEFT)

    def y(self, value: float) -> float:
        share = (value - self.low) / (self.high - self.low)
        return CURVE_BOTTOM - share * (CURVE_BOTTOM - CURVE_TOP)


def _curve_series(found, scale: _CurveScale, metric: str) -> tuple[list[Series], list[str]]:
    """The drawable series of ``found`` ((split, name, points) per split), and per series a
    sentence saying where it starts and ends, for the chart's description."""
    series, described = [], []
    for split, name, points in found:
        if not points:
            continue
        dots = [
            Dot(
                _coordinate(scale.x(epoch)),
                _coordinate(scale.y(value)),
                f"epoch {epoch:g}: {name} {metric} {_value_text(value, metric)}",
            )
            for epoch, value in points
        ]
        coordinates = " ".join(f"{dot.x},{dot.y}" for dot in dots)
        legend_x = CURVE_LEFT + LEGEND_SPACING * len(series)
        series.append(Series(split, name, split == "val", legend_x, coordinates, dots))
        (e0, v0), (e1, v1) = points[0], points[-1]
        described.append(
            f"{name} {metric} from {_value_text(v0, metric)} at epoch {e0:g} to "
            f"{_value_text(v1, metric)} at epoch {e1:g}"
        )
    return series, described


def learning_curve(history, metric: str, element_id: str, label: str) -> LearningCurve | None:
    """Train and validation ``metric`` ("accuracy" or "loss") per epoch of a manifest's
    ``history`` (a list of ``{"epoch", "train_<metric>", "val_<metric>", ...}``), laid out
    as a line chart; None when the history holds no number for the metric."""
    history = history if isinstance(history, list) else []
    found = [(split, name, _series_points(history, split, metric)) for split, name in CURVE_SERIES]
    all_points = [point for _, _, points in found for point in points]
    if not all_points:
        return None
    epochs = sorted({epoch for epoch, _ in all_points})
    low, high, step = axis_range([value for _, value in all_points], metric)
    scale = _CurveScale(epochs[0], epochs[-1], low, high)
    tick_values = [low + tick * step for tick in range(int(round((high - low) / step)) + 1)]
    # Value labels sit left of the axis, a third of a line below their grid line.
    y_ticks = [
        Tick(_coordinate(scale.y(v)), _coordinate(scale.y(v) + 4), _tick_label(v, metric, step))
        for v in tick_values
    ]
    every = max(1, math.ceil(len(epochs) / MAX_EPOCH_LABELS))
    x_ticks = [
        Tick(_coordinate(scale.x(epoch)), _coordinate(scale.x(epoch)), f"{epoch:g}")
        for epoch in epochs[::every]
    ]
    series, described = _curve_series(found, scale, metric)
    return LearningCurve(
        element_id=element_id,
        title=f"Learning curve: {metric} per epoch, {label}",
        description="; ".join(described) + ".",
        y_ticks=y_ticks,
        x_ticks=x_ticks,
        series=series,
    )


# ---------------------------------------------------------------------------------- matrices


@dataclass(frozen=True)
class Cell:
    """One cell of a confusion matrix: its top-left corner, its shade (0 = none, 1 = the
    whole row), its tooltip, and its count as text written at (``text_x``, ``text_y``), or
    None when the cell is too small or the count 0."""

    x: float
    y: float
    opacity: float
    tooltip: str
    count: str | None
    text_x: float
    text_y: float
    light_text: bool


@dataclass(frozen=True)
class ClassLabel:
    """A class name, written above its column (centred at ``column_x``) and left of its row
    (baseline at ``row_y``)."""

    text: str
    column_x: float
    row_y: float


@dataclass(frozen=True)
class ConfusionMatrix:
    """A K x K heat map (rows = true class, columns = predicted): ``cell``-unit squares
    filling a ``side``-unit square whose corner is (``left``, ``top``), in a ``size`` x
    ``size`` view box. ``counts`` holds the same numbers as text rows, for the table
    fallback; ``font`` is the size of the counts, ``label_font`` of the class names."""

    element_id: str
    title: str
    description: str
    size: int
    left: float
    top: float
    side: float
    cell: float
    font: float
    label_font: float
    labels: list[ClassLabel]
    cells: list[Cell]
    counts: list[list[str]]

    @property
    def middle(self) -> float:
        """Where the axis titles ("predicted", "true") are centred along their axis."""
        return _coordinate(self.left + self.side / 2)


def square_matrix(matrix, labels) -> tuple[list[list[float]], list[str]] | None:
    """The matrix as rows of floats and the class names (``labels`` if there is one per
    row, else 0..K-1), or None if ``matrix`` is not a non-empty square list of lists of
    finite non-negative numbers."""
    if not isinstance(matrix, list) or not matrix:
        return None
    size = len(matrix)
    rows = []
    for row in matrix:
        if not isinstance(row, list) or len(row) != size:
            return None
        if not all(is_number(value) and value >= 0 for value in row):
            return None
        rows.append([float(value) for value in row])
    names = labels if isinstance(labels, list) and len(labels) == size else list(range(size))
    return rows, [str(name) for name in names]


def count_text(value: float) -> str:
    """A count as written: "7" for 7.0, three significant digits otherwise."""
    return f"{int(value)}" if float(value).is_integer() else f"{value:.3g}"


def _matrix_description(rows: list[list[float]], names: list[str]) -> str:
    """Totals and the most frequent mistake, for the chart's ``<desc>``."""
    size = len(rows)
    total = sum(map(sum, rows))
    correct = sum(rows[i][i] for i in range(size))
    errors = [(rows[i][j], names[i], names[j]) for i in range(size) for j in range(size) if i != j]
    worst = max(errors, default=(0, None, None), key=lambda item: item[0])
    described = f"{size} classes, {count_text(total)} test images, {count_text(correct)} right"
    if worst[0] > 0:
        described += (
            f"; the most frequent mistake: true {worst[1]} predicted as {worst[2]} "
            f"({count_text(worst[0])} times)"
        )
    return described + "."


def _matrix_cells(
    rows: list[list[float]], names: list[str], cell: float, font: float
) -> list[Cell]:
    """Every cell, row by row, shaded by its share of its row."""
    cells = []
    for i, row in enumerate(rows):
        row_total = sum(row)
        for j, count in enumerate(row):
            share = count / row_total if row_total else 0.0
            # A floor of shading for any non-zero count, so single mistakes stay visible.
            opacity = 0.0 if count == 0 else 0.08 + 0.92 * share
            tooltip = (
                f"true {names[i]}, predicted {names[j]}: {count_text(count)}"
                f" ({100 * share:.1f}% of true {names[i]})"
            )
            x, y = MATRIX_MARGIN + j * cell, MATRIX_MARGIN + i * cell
            cells.append(
                Cell(
                    x=_coordinate(x),
                    y=_coordinate(y),
                    opacity=round(opacity, 3),
                    tooltip=tooltip,
                    # Counts are written in cells large enough to read them.
                    count=count_text(count) if count and cell >= 16 else None,
                    text_x=_coordinate(x + cell / 2),
                    text_y=_coordinate(y + cell / 2 + font / 3),
                    light_text=opacity > 0.55,
                )
            )
    return cells


def confusion_matrix(matrix, labels, element_id: str, label: str) -> ConfusionMatrix | None:
    """A manifest's ``metrics.confusion_matrix`` (K lists of K counts) laid out as a heat
    map of cells 8..32 units wide; None when it is not a square matrix of non-negative
    numbers."""
    checked = square_matrix(matrix, labels)
    if checked is None:
        return None
    rows, names = checked
    classes = len(rows)
    cell = max(8.0, min(32.0, 320.0 / classes))
    font = max(6.0, min(11.0, cell * 0.36))
    left = top = MATRIX_MARGIN
    centres = [index * cell + cell / 2 for index in range(classes)]
    return ConfusionMatrix(
        element_id=element_id,
        title=f"Confusion matrix on the test set, {label}",
        description=_matrix_description(rows, names),
        size=round(MATRIX_MARGIN + classes * cell + 8),
        left=left,
        top=top,
        side=_coordinate(classes * cell),
        cell=_coordinate(cell),
        font=_coordinate(font),
        label_font=_coordinate(font + 1),
        labels=[
            ClassLabel(name, _coordinate(left + centre), _coordinate(top + centre + 4))
            for name, centre in zip(names, centres, strict=True)
        ],
        cells=_matrix_cells(rows, names, cell, font),
        counts=[[count_text(value) for value in row] for row in rows],
    )
