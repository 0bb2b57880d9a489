"""The web page (``GET /``) and the models view (``GET /ui/models``), as a Flask Blueprint.

The page is static (``service/static/index.html`` + ``app.js`` + ``style.css``): it asks the
JSON API (``/models``, ``POST /predict?explain=1``) from the browser. The models view is
rendered here, on the server, from the catalog (service/catalog.py): a table of every version
of every model, and per version its settings, data fingerprint, learning curves and confusion
matrix drawn as inline SVG from the manifest's numbers (laid out by service/charts.py); its
calibration (reliability diagram, ECE) and not-a-digit detector figures; and for the served
version, its live confidence and OOD-score distributions (service/metrics.py, every worker)
against the validation ones its bundle recorded (laid out by service/trust_charts.py). The
templates are in ``service/templates/``; Jinja2 escapes every value they print, so no text from
a manifest reaches the page as markup. No plotting library, no script.

Static files are served under ``/ui/static/``. Every response of this blueprint carries a
Content-Security-Policy that allows only this origin's files (and ``data:`` images, for the
28x28 image the model saw), so the page works offline and runs no third-party code.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import Blueprint, Response, current_app, render_template

from service.catalog import Catalog, ModelEntry, VersionEntry
from service.charts import ConfusionMatrix, LearningCurve, confusion_matrix, is_number
from service.charts import learning_curve as learning_curve_chart
from service.metrics import ServiceMetrics
from service.trust_charts import (
    DistributionChart,
    ReliabilityDiagram,
    distribution_chart,
    reliability_diagram,
    share_above,
)
from training.errors import ConvserveError
from training.store import ModelStore

ui_blueprint = Blueprint(
    "ui",
    __name__,
    static_folder="static",
    static_url_path="/ui/static",
    template_folder="templates",
)

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
    response = Response(render_models_page(_catalog(), _metrics()), mimetype="text/html")
    response.cache_control.no_cache = True
    return response


def _catalog() -> Catalog:
    """The service's catalog (``app.extensions["convserve"].catalog``), or one of the store
    at ``MODEL_STORE``, serving nothing, when the blueprint runs without the service."""
    state = current_app.extensions.get("convserve")
    if state is not None:
        return state.catalog
    return Catalog(ModelStore(current_app.config.get("MODEL_STORE") or "model_store"))


def _metrics() -> ServiceMetrics | None:
    """The service's metrics (live distributions), or None without the service."""
    state = current_app.extensions.get("convserve")
    return state.metrics if state is not None else None


def render_models_page(catalog: Catalog, metrics: ServiceMetrics | None = None) -> str:
    """The whole models view as an HTML document (needs an application context); the served
    versions' live distributions come from ``metrics`` when given."""
    try:
        names, problem = catalog.model_names(), None
    except (ConvserveError, OSError) as exc:
        names, problem = [], str(exc)
    return render_template(
        "models.html",
        models=[_model_view(catalog, name, metrics) for name in names],
        problem=problem,
        store_root=str(catalog.store.root),
    )


# ---------------------------------------------------------------------------------- views
# What the templates draw, every value already chosen and formatted: the templates only lay
# them out (and escape them).


@dataclass(frozen=True)
class Timestamp:
    """An ISO-8601 time (``iso``) and how the page shows it: to the minute, "UTC" if so."""

    iso: str
    shown: str


@dataclass(frozen=True)
class CalibrationView:
    """A version's temperature scaling: the temperature, test ECE before and after (text),
    where it was fitted, and the reliability diagram (None when not recorded)."""

    temperature: str
    ece_before: str
    ece_after: str
    fitted_on: str
    diagram: ReliabilityDiagram | None


@dataclass(frozen=True)
class DetectorView:
    """A version's not-a-digit detector: (figure, value) rows, and per kind of built-in
    non-digit (kind, images, AUROC, share flagged)."""

    facts: tuple[tuple[str, str], ...]
    kinds: tuple[tuple[str, str, str, str], ...]


@dataclass(frozen=True)
class DriftView:
    """The served version's live traffic against its validation split: the two charts (None
    when the bundle records no validation distribution for it), and (label, live, validation)
    rows in words."""

    split: str
    confidence: DistributionChart | None
    ood_score: DistributionChart | None
    rows: tuple[tuple[str, str, str], ...]


@dataclass(frozen=True)
class VersionView:
    """One version's row in the table and its details section."""

    version: int
    anchor: str  # the details element's id, also the table row's link target
    aliases: list[str]
    served: bool
    opened: bool
    error: str | None  # why the manifest cannot be read; then nothing below is set
    created: Timestamp | None = None
    test_accuracy: str = "-"
    val_accuracy: str = "-"
    test_loss: str = "-"
    architecture: str = "-"
    facts: tuple[tuple[str, str], ...] = ()  # (label, plain text), after "Created"
    bundle_size: str = "-"
    bundle_sha256: str = "-"  # its first 16 hex digits
    per_class: tuple[tuple[str, str], ...] = ()  # (class, accuracy)
    training: tuple[tuple[str, str], ...] = ()  # (setting, value)
    fingerprint: tuple[tuple[str, str, str], ...] = ()  # (file, size, sha256 prefix)
    accuracy_curve: LearningCurve | None = None
    loss_curve: LearningCurve | None = None
    matrix: ConfusionMatrix | None = None
    calibration: CalibrationView | None = None  # None: not recorded
    detector: DetectorView | None = None  # None: no detector
    drift: DriftView | None = None  # the served version only, when its bundle records it
    label: str = ""  # "<name> version <n>", for captions

    @property
    def missing(self) -> list[str]:
        """What this version records no chart for, in words."""
        absent = []
        if self.accuracy_curve is None:
            absent.append("no training history")
        if self.matrix is None:
            absent.append("no confusion matrix")
        return absent


@dataclass(frozen=True)
class ModelView:
    """One model's section: who serves what, its aliases, and its versions newest first.
    ``problem`` is set (and nothing else) when the model cannot be read at all."""

    name: str
    problem: str | None = None
    serving: dict | None = None  # Predictor.status() when this process serves the model
    aliases: tuple[tuple[str, int], ...] = ()
    versions: tuple[VersionView, ...] = ()

    @property
    def reload_error(self) -> str | None:
        error = (self.serving or {}).get("last_reload_error")
        return str(error.get("message")) if error else None


def _model_view(catalog: Catalog, name: str, metrics: ServiceMetrics | None) -> ModelView:
    try:
        model = catalog.model(name)
    except ConvserveError as exc:
        return ModelView(name, problem=str(exc))
    present = [entry.version for entry in model.versions]
    # The served version (else the newest) starts open; the others are one click away.
    served = model.served_version
    opened = served if served in present else max(present, default=None)
    versions = [
        _version_view(model, entry, opened=entry.version == opened, metrics=metrics)
        for entry in reversed(model.versions)
    ]
    return ModelView(
        name,
        serving=model.serving,
        aliases=tuple(model.aliases.items()),
        versions=tuple(versions),
    )


def _version_view(
    model: ModelEntry, entry: VersionEntry, *, opened: bool, metrics: ServiceMetrics | None
) -> VersionView:
    name, version = model.name, entry.version
    common = {
        "version": version,
        "anchor": f"{name}-v{version}",
        "aliases": sorted(entry.aliases),
        "served": entry.served,
        "opened": opened,
        "label": f"{name} version {version}",
    }
    manifest = entry.manifest
    if manifest is None:
        return VersionView(error=entry.error, **common)
    figures = _mapping(manifest.get("metrics"))
    live = None
    if entry.served and metrics is not None:
        live = metrics.live_distributions(name, version)
    labels = manifest.get("class_labels")
    labels = list(labels) if isinstance(labels, list) else None
    history = manifest.get("history")
    prefix, label = common["anchor"], common["label"]
    architecture = _text(manifest.get("architecture"))
    return VersionView(
        error=None,
        created=_timestamp(manifest.get("created")),
        test_accuracy=_percent(figures.get("test_accuracy")),
        val_accuracy=_percent(figures.get("val_accuracy")),
        test_loss=_number(figures.get("test_loss")),
        architecture=architecture,
        facts=(
            ("Note", _text(manifest.get("note"))),
            ("Parent version", _text(manifest.get("parent_version"))),
            ("Architecture", architecture),
            ("Weights", _text(manifest.get("dtype"))),
            ("Classes", ", ".join(str(label) for label in labels) if labels else "-"),
        ),
        bundle_size=_size(manifest.get("size")),
        bundle_sha256=_text(manifest.get("sha256"))[:16],
        per_class=_per_class(figures.get("per_class_accuracy"), labels),
        training=tuple(
            (key, _compact(value))
            for key, value in sorted(_mapping(manifest.get("training")).items())
        ),
        fingerprint=_fingerprint(_mapping(manifest.get("data_fingerprint"))),
        accuracy_curve=learning_curve_chart(history, "accuracy", f"{prefix}-acc", label),
        loss_curve=learning_curve_chart(history, "loss", f"{prefix}-loss", label),
        matrix=confusion_matrix(figures.get("confusion_matrix"), labels, f"{prefix}-cm", label),
        calibration=_calibration_view(manifest, f"{prefix}-rel", label),
        detector=_detector_view(manifest),
        drift=_drift_view(manifest, live, f"{prefix}-live", label) if live is not None else None,
        **common,
    )


def _calibration_view(manifest: dict, element_id: str, label: str) -> CalibrationView | None:
    """The ``calibration`` record (ECE from it, else from the metrics), or None."""
    record = manifest.get("calibration")
    if not isinstance(record, dict):
        return None
    figures = _mapping(manifest.get("metrics"))
    before = record.get("test_ece_before", figures.get("test_ece_uncalibrated"))
    after = record.get("test_ece_after", figures.get("test_ece"))
    temperature = record.get("temperature")
    return CalibrationView(
        temperature=f"{temperature:.3f}" if is_number(temperature) else "-",
        ece_before=_percent(before),
        ece_after=_percent(after),
        fitted_on=_text(record.get("fitted_on")),
        diagram=reliability_diagram(record, element_id, label),
    )


def _detector_view(manifest: dict) -> DetectorView | None:
    """The ``ood`` record and the metrics' OOD figures, or None without a detector."""
    record = manifest.get("ood")
    if not isinstance(record, dict):
        return None
    figures = _mapping(manifest.get("metrics"))
    views = record.get("views") if isinstance(record.get("views"), list) else []
    features = ", ".join(_text(_mapping(view).get("name")) for view in views)
    kinds = []
    for kind, entry in sorted(_mapping(record.get("nondigits")).items()):
        entry = _mapping(entry)
        images = entry.get("images")
        kinds.append(
            (kind, _text(images), _number(entry.get("auroc")), _percent(entry.get("flagged")))
        )
    return DetectorView(
        facts=(
            ("Method", _text(record.get("method")) + (f" on {features}" if features else "")),
            ("Threshold", f"at {_percent(record.get('tpr'))} of validation digits (TPR)"),
            ("AUROC", _number(figures.get("ood_auroc"))),
            ("Test digits flagged", _percent(figures.get("ood_test_digits_flagged"))),
            ("Non-digits flagged", _percent(figures.get("ood_nondigits_flagged"))),
        ),
        kinds=tuple(kinds),
    )


def _drift_view(manifest: dict, live: dict, element_id: str, label: str) -> DriftView | None:
    """The served version's live distributions against its bundle's validation ones; None
    when the bundle records none (then the page says "not recorded")."""
    recorded = manifest.get("distributions")
    if not isinstance(recorded, dict):
        return None
    reference_confidence, reference_ood = recorded.get("confidence"), recorded.get("ood_score")
    live_confidence, live_ood = live.get("confidence"), live.get("ood_score")
    rows = [("Predictions", _count(live_confidence), _count(reference_confidence))]
    flagged_live, flagged_reference = share_above(live_ood, 1.0), share_above(reference_ood, 1.0)
    if flagged_reference is not None:
        rows.append(("Flagged not a digit", _share(flagged_live), _share(flagged_reference)))
    return DriftView(
        split=_text(recorded.get("split")),
        confidence=distribution_chart(
            reference_confidence, live_confidence, "confidence", f"{element_id}-conf", label
        ),
        ood_score=distribution_chart(
            reference_ood, live_ood, "OOD score", f"{element_id}-ood", label, marker=1.0
        ),
        rows=tuple(rows),
    )


def _count(histogram) -> str:
    total = _mapping(histogram).get("total")
    return f"{int(total)}" if is_number(total) else "0"


def _share(found: tuple[float, float] | None) -> str:
    """(count, total) as "12.5% (5 of 40)"; "-" when there is nothing to divide."""
    if found is None or not found[1]:
        return "-"
    count, total = found
    return f"{100 * count / total:.1f}% ({count:g} of {total:g})"


def _per_class(values, labels: list | None) -> tuple[tuple[str, str], ...]:
    """(class, accuracy) per class; classes are numbered when the labels do not match."""
    if not isinstance(values, list) or not values:
        return ()
    names = labels if labels and len(labels) == len(values) else list(range(len(values)))
    return tuple((str(n), _percent(v)) for n, v in zip(names, values, strict=True))


def _fingerprint(fingerprint: dict) -> tuple[tuple[str, str, str], ...]:
    """(file name, size, first 16 hex digits of its sha256) per training data file."""
    rows = []
    for file_name, entry in sorted(fingerprint.items()):
        entry = _mapping(entry)
        rows.append((file_name, _size(entry.get("size")), _text(entry.get("sha256"))[:16]))
    return tuple(rows)


# ---------------------------------------------------------------------------------- formatting
# Manifests come from disk: every helper accepts any JSON value and shows "-" for what it
# cannot show.


def _mapping(value) -> dict:
    return value if isinstance(value, dict) else {}


def _text(value) -> str:
    return "-" if value is None or value == "" else str(value)


def _percent(value) -> str:
    return f"{100 * value:.2f}%" if is_number(value) else "-"


def _number(value) -> str:
    return f"{value:.4g}" if is_number(value) else "-"


def _size(value) -> str:
    """A byte count in bytes, kB or MB (decimal units)."""
    if not is_number(value):
        return "-"
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{int(value)} bytes"


def _timestamp(value) -> Timestamp | None:
    """An ISO-8601 time shown to the minute ("2026-01-02 03:04 UTC"), or None."""
    if not isinstance(value, str) or not value:
        return None
    shown = value.replace("T", " ")[:16]
    if value.endswith(("+00:00", "Z")):
        shown += " UTC"
    return Timestamp(value, shown)


def _compact(value) -> str:
    """A training setting as short text: nested mappings as ``k=v, ...``, lists in
    brackets, floats to six significant digits."""
    if isinstance(value, dict):
        return ", ".join(f"{key}={_compact(item)}" for key, item in value.items()) or "{}"
    if isinstance(value, list):
        return "[" + ", ".join(_compact(item) for item in value) + "]"
    if isinstance(value, float):
        return f"{value:.6g}"
    return _text(value)
