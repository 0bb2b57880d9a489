"""``convserve models ...``: list, show, publish, promote, rollback, delete and verify models in
the versioned store (``training.store``).

Every action takes ``--store DIR`` (default ``$MODEL_STORE``, else ``./model_store``) and
``--json``. Errors are ``ConvserveError``s: ``convserve.cli`` prints them and exits 2.
``models verify`` exits 1 when it finds problems.
"""

from __future__ import annotations

import argparse
import json
import textwrap

from training.errors import ConvserveError
from training.store import (
    DEFAULT_GATE,
    GATE_CHECKS,
    ModelStore,
    StoreError,
    aliases_by_version,
    default_store_root,
    format_ref,
    parse_ref,
)

EXIT_PROBLEMS = 1


def register(subparsers) -> None:
    """Add ``models`` and its actions to the ``convserve`` parser."""
    models = subparsers.add_parser(
        "models",
        help="the versioned model store: list, show, publish, promote, rollback, delete, verify",
        description="Manage the versioned model store (<store>/<name>/<version>/ + aliases).",
    )
    actions = models.add_subparsers(dest="models_action", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--store",
        metavar="DIR",
        default=None,
        help="store directory (default: $MODEL_STORE, else ./model_store)",
    )
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _register_reading(actions, common)
    _register_writing(actions, common)


def _register_reading(actions, common: argparse.ArgumentParser) -> None:
    """list, show, verify: the actions that change nothing (verify --clean aside)."""
    parser = actions.add_parser(
        "list", parents=[common], help="every version of every model, with aliases and accuracy"
    )
    parser.set_defaults(func=list_models)

    parser = actions.add_parser(
        "show", parents=[common], help="one version's manifest: metrics, training, history"
    )
    parser.add_argument("ref", metavar="REF", help="NAME (latest), NAME:VERSION or NAME@ALIAS")
    parser.set_defaults(func=show_model)

    parser = actions.add_parser(
        "verify",
        parents=[common],
        help="check hashes, bundles and aliases (exit 1 on problems)",
        description="Check every version's size, sha256 and bundle, and every alias. "
        "Exit status: 0 all good, 1 problems found, 2 error.",
    )
    parser.add_argument(
        "ref", metavar="REF", nargs="?", help="NAME, NAME:VERSION or NAME@ALIAS (default: all)"
    )
    parser.add_argument(
        "--clean",
        action="store_true",
        help="also remove staging directories left by killed publishes",
    )
    parser.set_defaults(func=verify_models)


def _register_writing(actions, common: argparse.ArgumentParser) -> None:
    """publish, promote, rollback, delete."""
    parser = actions.add_parser(
        "publish", parents=[common], help="add a bundle as the next version of a model"
    )
    parser.add_argument("bundle", metavar="BUNDLE", help="the .npz bundle to publish")
    parser.add_argument("--name", required=True, help="model name, e.g. mnist")
    parser.add_argument("--alias", help="also point this alias at the new version (gated)")
    parser.add_argument("--note", help="free text kept in the manifest")
    parser.add_argument(
        "--parent-version", type=int, help="the version this one was trained or derived from"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="set --alias even if the gate refuses (never publishes non-finite outputs)",
    )
    add_gate_argument(parser)
    parser.set_defaults(func=publish_model)

    parser = actions.add_parser(
        "promote", parents=[common], help="point an alias at a version (regression-gated)"
    )
    parser.add_argument("name", metavar="NAME")
    parser.add_argument("version", metavar="VERSION", type=int)
    parser.add_argument("--alias", required=True, help="e.g. production")
    parser.add_argument(
        "--force",
        action="store_true",
        help="promote even if the gate refuses (never a version that fails the probe)",
    )
    add_gate_argument(parser)
    parser.set_defaults(func=promote_model)

    parser = actions.add_parser(
        "rollback", parents=[common], help="point an alias back at its previous version"
    )
    parser.add_argument("name", metavar="NAME")
    parser.add_argument("--alias", required=True, help="e.g. production")
    parser.set_defaults(func=rollback_model)

    parser = actions.add_parser(
        "delete", parents=[common], help="remove a version no alias points at"
    )
    parser.add_argument("name", metavar="NAME")
    parser.add_argument("version", metavar="VERSION", type=int)
    parser.set_defaults(func=delete_model)


# ---------------------------------------------------------------------------------- helpers


def add_gate_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gate",
        metavar="CHECKS",
        default=",".join(DEFAULT_GATE),
        help="what the regression gate compares with the alias's current version, "
        f"comma-separated from {','.join(GATE_CHECKS)}: test accuracy lower, test ECE "
        "higher, not-a-digit AUROC lower is refused (default: %(default)s)",
    )


def open_store(args, *, must_exist: bool = True) -> ModelStore:
    store = ModelStore(default_store_root(args.store))
    if must_exist and not store.root.is_dir():
        raise StoreError(f"no model store at {store.root} (use --store DIR or $MODEL_STORE)")
    return store


def print_json(document) -> None:
    print(json.dumps(document, indent=2, sort_keys=True))


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    """Left-aligned columns, two spaces apart."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    for line in [headers, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


def format_accuracy(value) -> str:
    return "-" if not isinstance(value, int | float) else f"{100 * value:.2f}%"


def describe_probe(record) -> str:
    """The manifest's probe entry in words: accuracy on the probe digits and its floor."""
    if not isinstance(record, dict):
        return "- (published before the probe: outputs checked for finiteness on load)"
    accuracy, floor = record.get("accuracy"), record.get("floor")
    if accuracy is None:
        return f"no probe digit is one of its classes ({record.get('images')} checked finite)"
    return (
        f"{format_accuracy(accuracy)} of {record.get('scored')} real digits "
        f"(loads refused below {format_accuracy(floor)})"
    )


def describe_calibration(manifest: dict) -> str:
    """Temperature and test ECE before -> after, or why there is none."""
    record = manifest.get("calibration")
    metrics = manifest.get("metrics") or {}
    if not isinstance(record, dict):
        return "- (trained before calibration: probabilities as the network gives them)"
    return (
        f"temperature {record.get('temperature', 0):.3f}; test ECE "
        f"{format_accuracy(metrics.get('test_ece_uncalibrated'))} -> "
        f"{format_accuracy(metrics.get('test_ece'))} (15 bins)"
    )


def describe_views(views) -> str:
    """The detector's views, e.g. ``channel_stats (60) + logits (10)``."""
    if not isinstance(views, list):
        return "?"
    return " + ".join(
        f"{v.get('name')} ({v.get('features')})" for v in views if isinstance(v, dict)
    )


def describe_detector(manifest: dict) -> list[tuple[str, str]]:
    """The not-a-digit detector's rows for ``models show``: method, threshold, AUROC and
    shares flagged, then one row per kind of built-in non-digit."""
    record = manifest.get("ood")
    metrics = manifest.get("metrics") or {}
    if not isinstance(record, dict):
        return [("not-a-digit", "- (no detector: predictions say the OOD score is unavailable)")]
    auroc = metrics.get("ood_auroc")
    rows = [
        (
            "not-a-digit",
            f"{record.get('method')} on {describe_views(record.get('views'))}; threshold at "
            f"{format_accuracy(record.get('tpr'))} of validation digits; AUROC "
            f"{auroc if not isinstance(auroc, float) else round(auroc, 4)}; flagged: test digits "
            f"{format_accuracy(metrics.get('ood_test_digits_flagged'))}, non-digits "
            f"{format_accuracy(metrics.get('ood_nondigits_flagged'))}",
        )
    ]
    kinds = record.get("nondigits") if isinstance(record.get("nondigits"), dict) else {}
    for kind, figures in kinds.items():
        if isinstance(figures, dict):
            rows.append(
                (
                    f"  {kind}",
                    f"AUROC {figures.get('auroc')}, flagged "
                    f"{format_accuracy(figures.get('flagged'))} of {figures.get('images')}",
                )
            )
    return rows


def shorten(text, limit: int = 40) -> str:
    text = "" if text is None else " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------- actions


def list_models(args) -> int:
    store = open_store(args)
    listing = []
    for name in store.models():
        aliases = store.aliases(name)
        inverse = aliases_by_version(aliases)
        versions = []
        for version in store.versions(name):
            row = {"version": version, "aliases": inverse.get(version, [])}
            try:
                manifest = store.manifest(name, version)
            except ConvserveError as exc:  # a damaged version: list it, say why
                row["error"] = str(exc)
            else:
                metrics = manifest.get("metrics") or {}
                row.update(
                    test_accuracy=metrics.get("test_accuracy"),
                    val_accuracy=metrics.get("val_accuracy"),
                    created=manifest.get("created"),
                    architecture=manifest.get("architecture"),
                    note=manifest.get("note"),
                )
            versions.append(row)
        listing.append({"name": name, "aliases": aliases, "versions": versions})
    if args.json:
        print_json({"store": str(store.root), "models": listing})
        return 0
    if not listing:
        print(f"no models in {store.root}")
        return 0
    rows = []
    for model in listing:
        for row in model["versions"]:
            rows.append(
                [
                    model["name"],
                    str(row["version"]),
                    ",".join(row["aliases"]) or "-",
                    format_accuracy(row.get("test_accuracy")),
                    (row.get("created") or "?")[:19].replace("T", " "),
                    shorten(row.get("note") or row.get("error") or ""),
                ]
            )
    print_table(["NAME", "VERSION", "ALIASES", "TEST ACC", "CREATED (UTC)", "NOTE"], rows)
    return 0


def show_model(args) -> int:
    store = open_store(args)
    name, version = store.resolve_ref(args.ref)
    manifest = store.manifest(name, version)
    aliases = aliases_by_version(store.aliases(name)).get(version, [])
    if args.json:
        print_json({"ref": format_ref(name, version), "aliases": aliases, "manifest": manifest})
        return 0
    metrics = manifest.get("metrics") or {}
    labels = manifest.get("class_labels") or []
    parent = manifest.get("parent_version")
    training = manifest.get("training") or {}
    fields = [
        ("aliases", ", ".join(aliases) or "-"),
        ("created", manifest.get("created")),
        ("note", manifest.get("note") or "-"),
        ("parent", "-" if parent is None else format_ref(name, parent)),
        ("architecture", f"{manifest.get('architecture')} ({manifest.get('dtype')})"),
        ("classes", " ".join(map(str, labels))),
        ("size", f"{manifest['size']:,} bytes"),
        ("sha256", manifest["sha256"]),
        ("test accuracy", format_accuracy(metrics.get("test_accuracy"))),
        ("val accuracy", format_accuracy(metrics.get("val_accuracy"))),
        ("probe", describe_probe(manifest.get("probe"))),
        ("calibration", describe_calibration(manifest)),
        *describe_detector(manifest),
        ("training", " ".join(f"{k}={v}" for k, v in sorted(training.items())) or "-"),
    ]
    print(format_ref(name, version))
    for key, value in fields:
        # Long values (the training settings) wrap under their column, not past 100 columns.
        print(textwrap.fill(f"  {key:<14} {value}", width=100, subsequent_indent=" " * 17))
    per_class = metrics.get("per_class_accuracy")
    if isinstance(per_class, list) and len(per_class) == len(labels):
        print(
            "  per class      "
            + "  ".join(f"{c}: {a:.3f}" for c, a in zip(labels, per_class, strict=True))
        )
    history = manifest.get("history") or []
    if history:
        print()
        columns = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"]
        rows = [
            [
                f"{e.get(c):.4g}" if isinstance(e.get(c), float) else str(e.get(c, ""))
                for c in columns
            ]
            for e in history
        ]
        print_table(columns, rows)
    return 0


def publish_model(args) -> int:
    store = open_store(args, must_exist=False)
    version = store.publish(
        args.bundle,
        args.name,
        alias=args.alias,
        note=args.note,
        parent_version=args.parent_version,
        force=args.force,
        gate=args.gate,
    )
    if args.json:
        print_json({"name": args.name, "version": version, "alias": args.alias})
        return 0
    print(f"published {format_ref(args.name, version)}")
    if args.alias:
        print(f"{args.name}@{args.alias} -> {format_ref(args.name, version)}")
    return 0


def describe_move(name: str, alias: str, previous, version: int) -> str:
    before = "(new)" if previous is None else format_ref(name, previous)
    return f"{name}@{alias}: {before} -> {format_ref(name, version)}"


def promote_model(args) -> int:
    store = open_store(args)
    result = store.promote(args.name, args.version, args.alias, force=args.force, gate=args.gate)
    if args.json:
        print_json(result)
        return 0
    print(describe_move(args.name, args.alias, result["previous"], result["version"]))
    return 0


def rollback_model(args) -> int:
    store = open_store(args)
    previous = store.resolve(args.name, alias=args.alias)
    version = store.rollback(args.name, args.alias)
    if args.json:
        print_json(
            {"name": args.name, "alias": args.alias, "version": version, "previous": previous}
        )
        return 0
    print(describe_move(args.name, args.alias, previous, version))
    return 0


def delete_model(args) -> int:
    store = open_store(args)
    store.delete(args.name, args.version)
    if args.json:
        print_json({"name": args.name, "version": args.version, "deleted": True})
        return 0
    print(f"deleted {format_ref(args.name, args.version)}")
    return 0


def verify_models(args) -> int:
    store = open_store(args)
    name = version = None
    if args.ref:
        name, version, alias = parse_ref(args.ref)
        if alias is not None:
            version = store.resolve(name, alias=alias)
    removed = [str(p) for p in store.clean(name)] if args.clean else []
    problems = store.verify(name, version)
    names = [name] if name is not None else store.models()
    checked = [
        format_ref(n, v)
        for n in names
        for v in ([version] if version is not None else store.versions(n))
    ]
    leftovers = [str(p) for p in store.abandoned_leftovers(name)]
    if args.json:
        print_json(
            {
                "ok": not problems,
                "problems": problems,
                "checked": checked,
                "leftovers": leftovers,
                "removed": removed,
            }
        )
        return EXIT_PROBLEMS if problems else 0
    for path in removed:
        print(f"removed {path}")
    for problem in problems:
        print(f"PROBLEM {problem}")
    if leftovers:
        print(
            f"note: {len(leftovers)} directories left by interrupted publishes "
            "(harmless; `convserve models verify --clean` removes them)"
        )
    verdict = f"{len(problems)} problem(s)" if problems else "all good"
    print(f"checked {len(checked)} version(s): {verdict}")
    return EXIT_PROBLEMS if problems else 0
