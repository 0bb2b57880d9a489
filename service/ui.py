"""The web page (``GET /``) and the models view (``GET /ui/models``), as a Flask Blueprint.

The page is static (``service/static/index.html`` + ``app.js`` + ``style.css``): it asks the
JSON API (``/models``, ``POST /predict?explain=1``) from the browser. The models view is
rendered here, on the server, from the store's manifests: a table of every version of every
model, and per version its settings, data fingerprint, learning curves and confusion matrix
drawn as inline SVG from the manifest's numbers. No template engine, no plotting library, no
script: every value from a manifest goes through ``html.escape``.

Static files are served under ``/ui/static/``. Every response of this blueprint carries a
Content-Security-Policy that allows only this origin's files (and ``data:`` images, for the
28x28 image the model saw), so the page works offline and runs no third-party code.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence

from flask import Blueprint, Response, current_app

from training.errors import ConvserveError
from training.store import ModelStore

ui_blueprint = Blueprint("ui", __name__, static_folder="static", static_url_path="/ui/static")

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; "
    "frame-ancestors 'none'"
)


@ui_blueprint.after_request
def _security_headers(response: Response) -> Response:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if response.mimetype == "text/html":
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    return response


@ui_blueprint.get("/", endpoint="page")
def page() -> Response:
    """The drawing pad and upload page."""
    response = ui_blueprint.send_static_file("index.html")
    # The page itself is tiny: always revalidate, so a new deployment shows at once.
    response.cache_control.no_cache = True
    return response


@ui_blueprint.get("/ui/models", endpoint="models")
def models_view() -> Response:
    """Every version of every model in the store, rendered from the manifests."""
    store, predictor = _store_and_predictor()
    body = render_models_page(store, predictor)
    response = Response(body, mimetype="text/html")
    response.cache_control.no_cache = True
    return response


def _store_and_predictor():
    """The service's store and predictor (``app.extensions["convserve"]``), or a store built
    from ``MODEL_STORE`` when the blueprint runs in an app without the service."""
    state = current_app.extensions.get("convserve")
    if state is not None:
        return state.store, state.predictor
    return ModelStore(current_app.config.get("MODEL_STORE") or "model_store"), None


# ---------------------------------------------------------------------------------- the page

_e = html.escape


def render_models_page(store: ModelStore, predictor=None) -> str:
    """The whole models view as an HTML document."""
    try:
        names = store.models()
        problem = None
    except (ConvserveError, OSError) as exc:
        names, problem = [], str(exc)
    sections = [_model_section(store, name, predictor) for name in names]
    if problem:
        sections.append(
            f'<section class="panel"><p class="problem">Cannot read the store: {_e(problem)}'
            "</p></section>"
        )
    elif not sections:
        sections.append(
            '<section class="panel"><h2>No models</h2><p>The store at '
            f"<code>{_e(str(store.root))}</code> holds no model yet. Publish one with "
            "<code>convserve models publish</code>.</p></section>"
        )
    return _PAGE.format(title="convserve: models", sections="\n".join(sections))


_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <meta name="color-scheme" content="light dark">
  <title>{title}</title>
  <link rel="stylesheet" href="static/style.css">
  <link rel="icon" href="static/favicon.svg" type="image/svg+xml">
</head>
<body>
  <a class="skip-link" href="#main">Skip to the models</a>
  <header class="site-header">
    <h1>convserve</h1>
    <nav aria-label="Site">
      <ul>
        <li><a href="../">Draw</a></li>
        <li><a href="models" aria-current="page">Models</a></li>
        <li><a href="../api">API</a></li>
      </ul>
    </nav>
  </header>
  <main id="main" class="page models">
{sections}
  </main>
</body>
</html>
"""


def _model_section(store: ModelStore, name: str, predictor) -> str:
    anchor = f"model-{name}"
    parts = [f'<section class="panel" aria-labelledby="{_e(anchor)}">']
    parts.append(f'<h2 id="{_e(anchor)}">Model <code>{_e(name)}</code></h2>')
    try:
        versions = store.versions(name)
        aliases = store.aliases(name)
    except ConvserveError as exc:
        parts.append(f'<p class="problem">{_e(str(exc))}</p></section>')
        return "".join(parts)

    served_version = None
    if predictor is not None and predictor.name == name:
        status = predictor.status()
        served_version = status.get("served_version")
        followed = status.get("alias")
        if served_version is None:
            parts.append(f"<p>Serving nothing yet (following <code>{_e(str(followed))}</code>).")
        else:
            parts.append(
                f"<p>Serving <strong>version {served_version}</strong> "
                f"(following alias <code>{_e(str(followed))}</code>)."
            )
        error = status.get("last_reload_error")
        if error:
            parts.append(
                f' <span class="problem">Last refused reload: {_e(str(error.get("message")))}'
                "</span>"
            )
        parts.append("</p>")
    if aliases:
        shown = ", ".join(
            f"<code>{_e(alias)}</code> &rarr; {version}" for alias, version in aliases.items()
        )
        parts.append(f"<p>Aliases: {shown}.</p>")

    by_version: dict[int, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(version, []).append(alias)

    manifests: dict[int, dict | str] = {}
    for version in versions:
        try:
            manifests[version] = store.manifest(name, version)
        except ConvserveError as exc:
            manifests[version] = str(exc)

    parts.append(_versions_table(name, versions, manifests, by_version, served_version))
    # The served version (else the newest) starts open; the others are one click away.
    open_version = served_version if served_version in manifests else max(versions, default=None)
    for version in sorted(versions, reverse=True):
        parts.append(
            _version_details(
                name,
                version,
                manifests[version],
                by_version.get(version, []),
                served=version == served_version,
                open_=version == open_version,
            )
        )
    parts.append("</section>")
    return "\n".join(parts)


def _tags(aliases: Iterable[str], served: bool) -> str:
    tags = ['<span class="tag served">served</span>'] if served else []
    tags += [f'<span class="tag">{_e(alias)}</span>' for alias in sorted(aliases)]
    return "".join(tags)


def _versions_table(name, versions, manifests, by_version, served_version) -> str:
    rows = []
    for version in sorted(versions, reverse=True):
        manifest = manifests[version]
        anchor = _e(f"{name}-v{version}")
        tags = _tags(by_version.get(version, []), version == served_version)
        if isinstance(manifest, str):
            rows.append(
                f'<tr><th scope="row"><a href="#{anchor}">{version}</a></th><td>{tags}</td>'
                f'<td colspan="4" class="problem">{_e(manifest)}</td></tr>'
            )
            continue
        metrics = _mapping(manifest.get("metrics"))
        rows.append(
            f'<tr><th scope="row"><a href="#{anchor}">{version}</a></th>'
            f"<td>{tags}</td>"
            f"<td>{_time(manifest.get('created'))}</td>"
            f'<td class="number">{_percent(metrics.get("test_accuracy"))}</td>'
            f'<td class="number">{_percent(metrics.get("val_accuracy"))}</td>'
            f"<td>{_e(_text(manifest.get('architecture')))}</td></tr>"
        )
    return (
        '<div class="table-scroll"><table class="versions">'
        f'<caption class="visually-hidden">Versions of {_e(name)}</caption>'
        '<thead><tr><th scope="col">Version</th><th scope="col">Aliases</th>'
        '<th scope="col">Created</th><th scope="col" class="number">Test accuracy</th>'
        '<th scope="col" class="number">Val. accuracy</th><th scope="col">Architecture</th>'
        "</tr></thead><tbody>" + "".join(rows) + "</tbody></table></div>"
    )


def _version_details(name, version, manifest, aliases, *, served: bool, open_: bool) -> str:
    anchor = f"{name}-v{version}"
    summary = f"Version {version} " + _tags(aliases, served)
    opened = " open" if open_ else ""
    parts = [f'<details class="version" id="{_e(anchor)}"{opened}><summary>{summary}']
    if isinstance(manifest, str):
        parts.append(f'</summary><p class="problem">{_e(manifest)}</p></details>')
        return "".join(parts)
    metrics = _mapping(manifest.get("metrics"))
    accuracy = metrics.get("test_accuracy")
    if _is_number(accuracy):
        parts.append(f" &middot; test accuracy {_percent(accuracy)}")
    parts.append("</summary>")

    labels = manifest.get("class_labels")
    labels = list(labels) if isinstance(labels, list) else None
    facts = [
        ("Created", _time(manifest.get("created"))),
        ("Note", _e(_text(manifest.get("note")))),
        ("Parent version", _e(_text(manifest.get("parent_version")))),
        ("Architecture", _e(_text(manifest.get("architecture")))),
        ("Weights", _e(_text(manifest.get("dtype")))),
        ("Classes", _e(", ".join(str(label) for label in labels)) if labels else "-"),
        (
            "Bundle",
            f"{_size(manifest.get('size'))}, sha256 <code>"
            f"{_e(_text(manifest.get('sha256'))[:16])}&hellip;</code>",
        ),
        ("Test accuracy", _percent(accuracy)),
        ("Test loss", _number(metrics.get("test_loss"))),
        ("Val. accuracy", _percent(metrics.get("val_accuracy"))),
        ("Per class", _per_class(metrics.get("per_class_accuracy"), labels)),
    ]
    parts.append(_facts(facts, "Version facts"))
    parts.append('<h3 class="visually-hidden">Training settings</h3>')
    parts.append(_settings(_mapping(manifest.get("training")), "Training settings"))
    parts.append(_fingerprint(_mapping(manifest.get("data_fingerprint"))))

    history = manifest.get("history")
    history = history if isinstance(history, list) else []
    prefix = f"{name}-v{version}"
    label = f"{name} version {version}"
    matrix = metrics.get("confusion_matrix")
    charts = [
        (learning_curve_svg(history, "accuracy", f"{prefix}-acc", label), "Accuracy per epoch"),
        (learning_curve_svg(history, "loss", f"{prefix}-loss", label), "Loss per epoch"),
        (
            confusion_matrix_svg(matrix, labels, f"{prefix}-cm", label),
            "Confusion matrix on the test set (rows: true class, columns: predicted)",
        ),
    ]
    figures = [
        f"<figure>{svg}<figcaption>{_e(caption)}</figcaption></figure>"
        for svg, caption in charts
        if svg
    ]
    if figures:
        parts.append('<div class="charts">' + "".join(figures) + "</div>")
    missing = []
    if not charts[0][0]:
        missing.append("no training history")
    if not charts[2][0]:
        missing.append("no confusion matrix")
    if missing:
        parts.append(f'<p class="hint">This version records {" and ".join(missing)}.</p>')
    table = _confusion_table(matrix, labels, label)
    if table:
        parts.append(
            "<details><summary>The confusion matrix as a table</summary>"
            f'<div class="table-scroll">{table}</div></details>'
        )
    parts.append("</details>")
    return "\n".join(parts)


def _facts(items: Sequence[tuple[str, str]], label: str) -> str:
    rows = "".join(f"<dt>{_e(key)}</dt><dd>{value}</dd>" for key, value in items)
    return f'<dl class="facts" aria-label="{_e(label)}">{rows}</dl>'


def _settings(training: dict, label: str) -> str:
    """Training settings as a definition list; nested values shown as compact JSON-ish text."""
    if not training:
        return f'<p class="hint">{_e(label)}: none recorded.</p>'
    items = [(key, _e(_compact(value))) for key, value in sorted(training.items())]
    return f"<details><summary>{_e(label)} ({len(items)})</summary>{_facts(items, label)}</details>"


def _fingerprint(fingerprint: dict) -> str:
    if not fingerprint:
        return '<p class="hint">Data fingerprint: none recorded.</p>'
    items = []
    for file_name, entry in sorted(fingerprint.items()):
        entry = _mapping(entry)
        digest = _text(entry.get("sha256"))[:16]
        items.append(
            (file_name, f"{_size(entry.get('size'))}, sha256 <code>{_e(digest)}&hellip;</code>")
        )
    return (
        f"<details><summary>Training data ({len(items)} file{'s' if len(items) != 1 else ''})"
        "</summary>"
        f"{_facts(items, 'Data fingerprint')}</details>"
    )


def _per_class(values, labels) -> str:
    if not isinstance(values, list) or not values:
        return "-"
    names = labels if labels and len(labels) == len(values) else list(range(len(values)))
    return (
        '<span class="per-class">'
        + "".join(
            f"<span>{_e(str(label))}: {_percent(value)}</span>"
            for label, value in zip(names, values, strict=True)
        )
        + "</span>"
    )


# ---------------------------------------------------------------------------------- formatting


def _mapping(value) -> dict:
    return value if isinstance(value, dict) else {}


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _text(value) -> str:
    return "-" if value is None or value == "" else str(value)


def _percent(value) -> str:
    return f"{100 * value:.2f}%" if _is_number(value) else "-"


def _number(value) -> str:
    return f"{value:.4g}" if _is_number(value) else "-"


def _size(value) -> str:
    if not _is_number(value):
        return "-"
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{int(value)} bytes"


def _time(value) -> str:
    """An ISO-8601 time as ``<time>``, shown to the minute in UTC."""
    if not isinstance(value, str) or not value:
        return "-"
    shown = value.replace("T", " ")[:16]
    if value.endswith(("+00:00", "Z")):
        shown += " UTC"
    return f'<time datetime="{_e(value)}">{_e(shown)}</time>'


def _compact(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{key}={_compact(item)}" for key, item in value.items()) or "{}"
    if isinstance(value, list):
        return "[" + ", ".join(_compact(item) for item in value) + "]"
    if isinstance(value, float):
        return f"{value:.6g}"
    return _text(value)


# ---------------------------------------------------------------------------------- SVG charts

CURVE_WIDTH, CURVE_HEIGHT = 360, 230
CURVE_MARGIN = {"left": 48, "right": 14, "top": 34, "bottom": 38}


def _nice_step(span: float, count: int) -> float:
    raw = span / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude  # pragma: no cover - the loop always returns


def _axis_range(values: list[float], metric: str) -> tuple[float, float, float]:
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


def learning_curve_svg(history: list, metric: str, element_id: str, label: str) -> str:
    """Train and validation ``metric`` ("accuracy" or "loss") per epoch as an inline SVG line
    chart with a title, a description, axes, a legend and a tooltip per point; "" when the
    history holds no number for the metric."""
    title_id, desc_id = f"{element_id}-title", f"{element_id}-desc"
    title = f"Learning curve: {metric} per epoch, {label}"
    series = []
    for split, name in (("train", "train"), ("val", "validation")):
        points = []
        for index, record in enumerate(history):
            if not isinstance(record, dict):
                continue
            epoch = record.get("epoch", index + 1)
            value = record.get(f"{split}_{metric}")
            if _is_number(epoch) and _is_number(value):
                points.append((float(epoch), float(value)))
        series.append((split, name, points))
    all_points = [point for _, _, points in series for point in points]
    head = (
        f'<svg class="chart curve" id="{_e(element_id)}" role="img" '
        f'viewBox="0 0 {CURVE_WIDTH} {CURVE_HEIGHT}" aria-labelledby="{_e(title_id)} '
        f'{_e(desc_id)}" xmlns="http://www.w3.org/2000/svg">'
        f'<title id="{_e(title_id)}">{_e(title)}</title>'
    )
    if not all_points:
        return ""

    left, right = CURVE_MARGIN["left"], CURVE_WIDTH - CURVE_MARGIN["right"]
    top, bottom = CURVE_MARGIN["top"], CURVE_HEIGHT - CURVE_MARGIN["bottom"]
    epochs = sorted({epoch for epoch, _ in all_points})
    first, last = epochs[0], epochs[-1]
    low, high, step = _axis_range([value for _, value in all_points], metric)

    def x_of(epoch: float) -> float:
        if last == first:
            return (left + right) / 2
        return left + (epoch - first) / (last - first) * (right - left)

    def y_of(value: float) -> float:
        return bottom - (value - low) / (high - low) * (bottom - top)

    described = []
    for _, name, points in series:
        if points:
            described.append(
                f"{name} {metric} from {_value_text(points[0][1], metric)} at epoch "
                f"{points[0][0]:g} to {_value_text(points[-1][1], metric)} at epoch "
                f"{points[-1][0]:g}"
            )
    parts = [head, f'<desc id="{_e(desc_id)}">{_e("; ".join(described))}.</desc>']

    # Horizontal grid lines and y tick labels.
    count = int(round((high - low) / step))
    for tick in range(count + 1):
        value = low + tick * step
        y = y_of(value)
        parts.append(
            f'<line class="grid" x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" '
            'stroke-width="1"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">'
            f"{_tick_label(value, metric, step)}</text>"
        )
    # X ticks: at most about eight epoch labels.
    every = max(1, math.ceil(len(epochs) / 8))
    for epoch in epochs[::every]:
        x = x_of(epoch)
        parts.append(
            f'<line class="axis" x1="{x:.1f}" x2="{x:.1f}" y1="{bottom}" y2="{bottom + 4}"/>'
            f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle" font-size="11">'
            f"{epoch:g}</text>"
        )
    parts.append(
        f'<line class="axis" x1="{left}" x2="{right}" y1="{bottom}" y2="{bottom}"/>'
        f'<line class="axis" x1="{left}" x2="{left}" y1="{top}" y2="{bottom}"/>'
        f'<text x="{(left + right) / 2}" y="{CURVE_HEIGHT - 6}" text-anchor="middle" '
        'font-size="12">epoch</text>'
    )
    # Legend, then the lines and points (each point with a tooltip).
    legend_x = left
    for split, name, points in series:
        if not points:
            continue
        dash = ' stroke-dasharray="5 3"' if split == "val" else ""
        parts.append(
            f'<line class="line-{split}" x1="{legend_x}" x2="{legend_x + 22}" y1="14" '
            f'y2="14" stroke-width="2.5"{dash}/>'
            f'<text x="{legend_x + 27}" y="18" font-size="12">{_e(name)}</text>'
        )
        legend_x += 110
        coordinates = " ".join(f"{x_of(e):.1f},{y_of(v):.1f}" for e, v in points)
        parts.append(
            f'<polyline class="line-{split}" fill="none" stroke-width="2"{dash} '
            f'points="{coordinates}"/>'
        )
        for epoch, value in points:
            parts.append(
                f'<circle class="dot-{split}" cx="{x_of(epoch):.1f}" cy="{y_of(value):.1f}" '
                f'r="3"><title>epoch {epoch:g}: {_e(name)} {metric} '
                f"{_value_text(value, metric)}</title></circle>"
            )
    parts.append("</svg>")
    return "".join(parts)


def _value_text(value: float, metric: str) -> str:
    return f"{100 * value:.2f}%" if metric == "accuracy" else f"{value:.4f}"


def _square_matrix(matrix, labels) -> tuple[list[list[float]], list] | None:
    """The matrix as rows of finite numbers and its class labels, or None if it is not a
    non-empty square matrix of non-negative numbers."""
    if not isinstance(matrix, list) or not matrix:
        return None
    size = len(matrix)
    rows = []
    for row in matrix:
        if not isinstance(row, list) or len(row) != size:
            return None
        if not all(_is_number(value) and value >= 0 for value in row):
            return None
        rows.append([float(value) for value in row])
    names = labels if labels and len(labels) == size else list(range(size))
    return rows, names


def _count_text(value: float) -> str:
    return f"{int(value)}" if float(value).is_integer() else f"{value:.3g}"


def confusion_matrix_svg(matrix, labels, element_id: str, label: str) -> str:
    """A K x K confusion matrix (rows = true class, columns = predicted) as an inline SVG
    heat map: each cell shaded by its share of the row, with its count written in it; "" when
    ``matrix`` is not a square matrix of non-negative numbers."""
    title_id, desc_id = f"{element_id}-title", f"{element_id}-desc"
    title = f"Confusion matrix on the test set, {label}"
    checked = _square_matrix(matrix, labels)
    if checked is None:
        return ""
    rows, names = checked
    size = len(rows)
    cell = max(8.0, min(32.0, 320.0 / size))
    font = max(6.0, min(11.0, cell * 0.36))
    left, top = 44.0, 44.0
    width, height = left + size * cell + 8, top + size * cell + 8
    total = sum(map(sum, rows))
    correct = sum(rows[i][i] for i in range(size))
    errors = [(rows[i][j], names[i], names[j]) for i in range(size) for j in range(size) if i != j]
    worst = max(errors, default=(0, None, None), key=lambda item: item[0])
    described = f"{size} classes, {_count_text(total)} test images, {_count_text(correct)} right"
    if worst[0] > 0:
        described += (
            f"; the most frequent mistake: true {worst[1]} predicted as {worst[2]} "
            f"({_count_text(worst[0])} times)"
        )
    parts = [
        f'<svg class="chart matrix" id="{_e(element_id)}" role="img" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" aria-labelledby="{_e(title_id)} '
        f'{_e(desc_id)}" xmlns="http://www.w3.org/2000/svg">'
        f'<title id="{_e(title_id)}">{_e(title)}</title>'
        f'<desc id="{_e(desc_id)}">{_e(described)}.</desc>',
        f'<text x="{left + size * cell / 2:.1f}" y="12" text-anchor="middle" font-size="12">'
        "predicted</text>",
        f'<text x="12" y="{top + size * cell / 2:.1f}" text-anchor="middle" font-size="12" '
        f'transform="rotate(-90 12 {top + size * cell / 2:.1f})">true</text>',
    ]
    for index, name in enumerate(names):
        centre = index * cell + cell / 2
        parts.append(
            f'<text x="{left + centre:.1f}" y="{top - 8}" text-anchor="middle" '
            f'font-size="{font + 1:.1f}">{_e(str(name))}</text>'
            f'<text x="{left - 8}" y="{top + centre + 4:.1f}" text-anchor="end" '
            f'font-size="{font + 1:.1f}">{_e(str(name))}</text>'
        )
    for i, row in enumerate(rows):
        row_total = sum(row)
        for j, count in enumerate(row):
            share = count / row_total if row_total else 0.0
            x, y = left + j * cell, top + i * cell
            # A floor of shading for any non-zero count, so single mistakes stay visible.
            opacity = 0.0 if count == 0 else 0.08 + 0.92 * share
            text_class = "cell-text-light" if opacity > 0.55 else "cell-text-dark"
            tooltip = (
                f"true {names[i]}, predicted {names[j]}: {_count_text(count)}"
                f" ({100 * share:.1f}% of true {names[i]})"
            )
            parts.append(
                f"<g><title>{_e(tooltip)}</title>"
                f'<rect class="cell" x="{x:.1f}" y="{y:.1f}" width="{cell:.1f}" '
                f'height="{cell:.1f}" fill-opacity="{opacity:.3f}"/>'
            )
            if count and cell >= 16:
                parts.append(
                    f'<text class="{text_class}" x="{x + cell / 2:.1f}" '
                    f'y="{y + cell / 2 + font / 3:.1f}" text-anchor="middle" '
                    f'font-size="{font:.1f}">{_count_text(count)}</text>'
                )
            parts.append("</g>")
    parts.append(
        f'<rect class="frame" x="{left}" y="{top}" width="{size * cell:.1f}" '
        f'height="{size * cell:.1f}" fill="none"/></svg>'
    )
    return "".join(parts)


def _confusion_table(matrix, labels, label: str) -> str:
    checked = _square_matrix(matrix, labels)
    if checked is None:
        return ""
    rows, names = checked
    head = "".join(f'<th scope="col" class="number">{_e(str(name))}</th>' for name in names)
    body = "".join(
        f'<tr><th scope="row">{_e(str(names[i]))}</th>'
        + "".join(f'<td class="number">{_count_text(value)}</td>' for value in row)
        + "</tr>"
        for i, row in enumerate(rows)
    )
    return (
        f"<table><caption>Confusion matrix, {_e(label)}: rows are the true class, columns "
        f'the predicted one</caption><thead><tr><th scope="col">true \\ predicted</th>{head}'
        f"</tr></thead><tbody>{body}</tbody></table>"
    )
