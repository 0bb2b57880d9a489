"""The models page's calibration and drift charts as data, for ``templates/_charts.html``:
the reliability diagram (before and after temperature scaling) and a distribution drawn
against another (the served version's live traffic against its validation split).

Like service/charts.py, nothing here writes markup: each function checks the numbers (from a
manifest or from the metrics registry: anything may be missing or malformed), lays them out in
SVG user units and writes the texts a screen reader gets. The template escapes every text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from service.charts import (
    CURVE_BOTTOM,
    CURVE_LEFT,
    CURVE_RIGHT,
    CURVE_TOP,
    Dot,
    PlotFrame,
    Series,
    Tick,
    is_number,
)

SHARE_TICKS = (0.0, 0.25, 0.5, 0.75, 1.0)
RELIABILITY_SERIES = (
    ("test_reliability_before", "before", "before scaling"),
    ("test_reliability_after", "after", "after scaling"),
)
RELIABILITY_LEGEND_SPACING = 140
# The value axis of a distribution ends at the first of these above the highest bar, so its
# quarter ticks read as round percentages.
SHARE_AXIS_TOPS = (0.1, 0.2, 0.4, 0.6, 0.8, 1.0)


def _coordinate(value: float) -> float:
    return round(value, 1)


def _x(share: float) -> float:
    return CURVE_LEFT + share * (CURVE_RIGHT - CURVE_LEFT)


def _y(share: float) -> float:
    return CURVE_BOTTOM - share * (CURVE_BOTTOM - CURVE_TOP)


def _share_ticks(scale_top: float = 1.0) -> list[Tick]:
    """Grid lines at 0, 25, 50, 75 and 100 % of ``scale_top`` on the value axis."""
    return [
        Tick(_coordinate(_y(t)), _coordinate(_y(t) + 4), f"{100 * t * scale_top:.3g}%")
        for t in SHARE_TICKS
    ]


# ---------------------------------------------------------------------------------- reliability


@dataclass(frozen=True, kw_only=True)
class ReliabilityDiagram(PlotFrame):
    """Accuracy against mean confidence per confidence bin, on the test split; the diagonal
    is perfect calibration. The plot spans ``left``..``right`` (confidence 0..1) and
    ``bottom``..``top`` (accuracy 0..1); ``series`` are "before" and "after" (CSS classes
    ``line-before``, ``dot-after``, ...)."""

    series: list[Series]


def _reliability_points(table) -> list[tuple[float, float, int]]:
    """(mean confidence, accuracy, images) of each non-empty bin of a reliability table
    (``training.calibration.reliability``: lists "confidence", "accuracy", "count")."""
    if not isinstance(table, dict):
        return []
    columns = [table.get(key) for key in ("confidence", "accuracy", "count")]
    if not all(isinstance(column, list) for column in columns):
        return []
    points = []
    for confidence, accuracy, count in zip(*columns, strict=False):
        if not (is_number(confidence) and is_number(accuracy) and is_number(count)):
            continue
        if count > 0 and 0 <= confidence <= 1 and 0 <= accuracy <= 1:
            points.append((float(confidence), float(accuracy), int(count)))
    return points


def reliability_diagram(record, element_id: str, label: str) -> ReliabilityDiagram | None:
    """A manifest's ``calibration`` record (its ``test_reliability_before`` and ``_after``
    tables) as a reliability diagram; None when neither table has a bin to draw."""
    record = record if isinstance(record, dict) else {}
    series, described = [], []
    for key, split, name in RELIABILITY_SERIES:
        points = _reliability_points(record.get(key))
        if not points:
            continue
        dots = [
            Dot(
                _coordinate(_x(confidence)),
                _coordinate(_y(accuracy)),
                f"{name}: {count} images {100 * confidence:.1f}% confident on average, "
                f"{100 * accuracy:.1f}% right",
            )
            for confidence, accuracy, count in points
        ]
        coordinates = " ".join(f"{dot.x},{dot.y}" for dot in dots)
        legend_x = CURVE_LEFT + RELIABILITY_LEGEND_SPACING * len(series)
        series.append(Series(split, name, split == "before", legend_x, coordinates, dots))
        ece = record.get(f"test_ece_{split}")
        gap = f", ECE {100 * ece:.2f}%" if is_number(ece) else ""
        described.append(f"{name}: {len(points)} confidence bins{gap}")
    if not series:
        return None
    ticks, ticks_at = _share_ticks(), SHARE_TICKS
    return ReliabilityDiagram(
        element_id=element_id,
        title=f"Reliability diagram on the test set, {label}",
        description="Accuracy against confidence; on the diagonal, confidence is "
        "accuracy. " + "; ".join(described) + ".",
        x_ticks=[Tick(_coordinate(_x(t)), _coordinate(_x(t)), f"{100 * t:g}%") for t in ticks_at],
        y_ticks=ticks,
        series=series,
    )


# ---------------------------------------------------------------------------------- distributions


@dataclass(frozen=True)
class Bar:
    """One bar: its left edge, top and height, and its tooltip."""

    x: float
    y: float
    height: float
    tooltip: str


@dataclass(frozen=True, kw_only=True)
class DistributionChart(PlotFrame):
    """Two histograms on the same buckets, as shares of their totals, side by side per
    bucket: ``reference`` (validation, CSS class ``bar-reference``) and ``live``
    (``bar-live``, empty when nothing was observed). ``marker_x`` is a dashed line at a
    bucket edge worth marking (the OOD threshold, 1.0), or None."""

    bar_width: float
    reference: list[Bar]
    live: list[Bar]
    marker_x: float | None
    axis_label: str


def checked_histogram(histogram) -> tuple[list[float], list[float], float] | None:
    """(bounds, counts, total) of a ``{"le", "counts", "total"}`` histogram (the bundle's
    ``distributions`` entries and ``ServiceMetrics.live_distributions``), or None unless the
    bounds are increasing numbers and there is one count per bucket plus the overflow."""
    if not isinstance(histogram, dict):
        return None
    bounds, counts = histogram.get("le"), histogram.get("counts")
    if not isinstance(bounds, list) or not isinstance(counts, list) or not bounds:
        return None
    if len(counts) != len(bounds) + 1 or not all(map(is_number, [*bounds, *counts])):
        return None
    if any(b <= a for a, b in zip(bounds, bounds[1:], strict=False)) or min(counts) < 0:
        return None
    return [float(b) for b in bounds], [float(c) for c in counts], float(sum(counts))


def bucket_names(bounds: list[float]) -> list[str]:
    """``(a, b]`` as "a-b" per bucket, the first from 0 (confidences and scores are
    non-negative) and the overflow as "> last"."""
    edges = [0.0, *bounds]
    names = [f"{low:g}-{high:g}" for low, high in zip(edges, bounds, strict=False)]
    return [*names, f"> {bounds[-1]:g}"]


def _bars(shares: list[float], offset: float, slot: float, top: float, texts) -> list[Bar]:
    """A bar per share, ``offset`` into its bucket's ``slot``, scaled so ``top`` is full."""
    return [
        Bar(
            _coordinate(CURVE_LEFT + index * slot + offset),
            _coordinate(_y(share / top)),
            _coordinate(_y(0) - _y(share / top)),
            text,
        )
        for index, (share, text) in enumerate(zip(shares, texts, strict=True))
    ]


def distribution_chart(
    reference, live, what: str, element_id: str, label: str, marker: float | None = None
) -> DistributionChart | None:
    """``live`` traffic's histogram drawn against ``reference`` (validation), both
    ``{"le", "counts", "total"}`` on the same bounds; None when the reference is unusable.
    A live histogram on other bounds (or none) is drawn as empty."""
    checked = checked_histogram(reference)
    if checked is None or checked[2] <= 0:
        return None
    bounds, counts, total = checked
    reference_shares = [count / total for count in counts]
    live_checked = checked_histogram(live)
    if live_checked is None or live_checked[0] != bounds:
        live_checked = (bounds, [0.0] * len(counts), 0.0)
    live_counts, live_total = live_checked[1], live_checked[2]
    live_shares = [count / live_total if live_total else 0.0 for count in live_counts]
    highest = max(reference_shares + live_shares)
    top = next(top for top in SHARE_AXIS_TOPS if top >= highest - 1e-9)
    names = bucket_names(bounds)
    slot = (CURVE_RIGHT - CURVE_LEFT) / len(names)
    width = _coordinate(slot * 0.4)
    ref_texts = [
        f"{what} {n}: validation {100 * s:.1f}%"
        for n, s in zip(names, reference_shares, strict=True)
    ]
    live_texts = [
        f"{what} {n}: live {100 * s:.1f}% ({count:g} of {live_total:g})"
        for n, s, count in zip(names, live_shares, live_counts, strict=True)
    ]
    every = max(1, math.ceil(len(names) / 6))
    x_ticks = [
        Tick(_coordinate(CURVE_LEFT + i * slot), _coordinate(CURVE_LEFT + i * slot), f"{b:g}")
        for i, b in enumerate(bounds, start=1)
        if i % every == 0
    ]
    marker_x = None
    if marker is not None and marker in bounds:
        marker_x = _coordinate(CURVE_LEFT + (bounds.index(marker) + 1) * slot)
    return DistributionChart(
        element_id=element_id,
        title=f"{what[:1].upper()}{what[1:]}: live traffic against validation, {label}",
        description=f"{what} of {total:g} validation images and of {live_total:g} live "
        f"predictions, as shares per bucket.",
        bar_width=width,
        y_ticks=_share_ticks(top),
        x_ticks=x_ticks,
        reference=_bars(reference_shares, slot * 0.1, slot, top, ref_texts),
        live=_bars(live_shares, slot * 0.5, slot, top, live_texts) if live_total else [],
        marker_x=marker_x,
        axis_label=what,
    )


def share_above(histogram, bound: float) -> tuple[float, float] | None:
    """(count above ``bound``, total) of a histogram whose bounds include ``bound``: e.g. the
    predictions flagged not a digit (OOD score > 1). None when it cannot be read that way."""
    checked = checked_histogram(histogram)
    if checked is None or bound not in checked[0]:
        return None
    bounds, counts, total = checked
    return sum(counts[bounds.index(bound) + 1 :]), total
