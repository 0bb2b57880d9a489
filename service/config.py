"""The service's settings: one table of names, defaults and parsers, read by ``load_config``.

Defaults, then the environment (strings, parsed), then the ``config`` mapping handed to
``create_app`` (the tests' way in). Nothing is read at import time. Every setting is documented
in docs/SERVING.md ("Configuration" and "Limits and failure behaviour").
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from training.store import validate_name

# name -> (default, parser of the environment's string).
SETTINGS: dict[str, tuple[object, type]] = {
    "MODEL_STORE": ("model_store", str),
    "MODEL_NAME": ("mnist", str),
    "MODEL_ALIAS": ("production", str),
    "MODELS": ("", str),
    "RELOAD_INTERVAL_S": (2.0, float),
    "ADMIN_TOKEN": (None, str),
    "MAX_BATCH": (256, int),
    "MAX_CONTENT_LENGTH": (10 * 1024 * 1024, int),
    "MAX_IMAGE_PIXELS": (8_388_608, int),
    "MAX_REQUEST_PIXELS": (67_108_864, int),
    "MODEL_CACHE_SIZE": (4, int),
    "LOG_LEVEL": ("info", str),
    "LOG_FORMAT": ("json", str),
}
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("json", "text")
# Settings that must be positive integers.
POSITIVE_INTEGERS = ("MAX_BATCH", "MAX_CONTENT_LENGTH", "MAX_IMAGE_PIXELS", "MAX_REQUEST_PIXELS")


def load_config(config: Mapping | None = None, environ: Mapping | None = None) -> dict:
    """Defaults, then the environment (strings, parsed), then ``config`` (values as they
    are). Raises ValueError naming the setting for a value that cannot work."""
    environ = os.environ if environ is None else environ
    settings = {}
    for key, (default, parse) in SETTINGS.items():
        value = default
        raw = environ.get(key)
        if raw is not None and raw.strip() != "":
            try:
                value = parse(raw.strip())
            except ValueError:
                raise ValueError(f"{key}={raw!r}: expected {parse.__name__}") from None
        settings[key] = value
    settings.update(config or {})
    check_config(settings)
    return settings


def parse_models(value, default_alias: str) -> list[tuple[str, str]]:
    """MODELS, "mnist,letters@staging" -> [("mnist", default_alias), ("letters", "staging")];
    empty means every model in the store. Already parsed lists pass through (checked)."""
    if isinstance(value, list | tuple):
        entries = [f"{name}@{alias}" for name, alias in value]
    else:
        entries = [entry.strip() for entry in str(value).split(",") if entry.strip()]
    models = []
    for entry in entries:
        name, _, alias = entry.partition("@")
        validate_name(name.strip())
        alias = alias.strip() or default_alias
        if alias:
            validate_name(alias, "alias")
        models.append((name.strip(), alias))
    if len({name for name, _ in models}) != len(models):
        raise ValueError(f"MODELS={value!r}: a model is named twice")
    return models


def check_config(settings: dict) -> None:
    """Raise ValueError naming the first setting that cannot work; normalises LOG_LEVEL and
    an empty ADMIN_TOKEN (unset) in place."""

    def require(condition: bool, key: str, expected: str) -> None:
        if not condition:
            raise ValueError(f"{key}={settings[key]!r}: {expected}")

    for key in POSITIVE_INTEGERS:
        value = settings[key]
        require(isinstance(value, int) and not isinstance(value, bool) and value > 0, key, "> 0")
    require(settings["MAX_IMAGE_PIXELS"] >= 28 * 28, "MAX_IMAGE_PIXELS", "at least 784")
    require(
        settings["MAX_REQUEST_PIXELS"] >= settings["MAX_IMAGE_PIXELS"],
        "MAX_REQUEST_PIXELS",
        "at least MAX_IMAGE_PIXELS",
    )
    cache = settings["MODEL_CACHE_SIZE"]
    require(isinstance(cache, int) and cache >= 0, "MODEL_CACHE_SIZE", "an integer >= 0")
    interval = settings["RELOAD_INTERVAL_S"]
    require(isinstance(interval, int | float) and interval >= 0, "RELOAD_INTERVAL_S", ">= 0")
    level = str(settings["LOG_LEVEL"]).lower()
    require(level in LOG_LEVELS, "LOG_LEVEL", f"one of {', '.join(LOG_LEVELS)}")
    settings["LOG_LEVEL"] = level
    log_format = str(settings["LOG_FORMAT"]).lower()
    require(log_format in LOG_FORMATS, "LOG_FORMAT", f"one of {', '.join(LOG_FORMATS)}")
    settings["LOG_FORMAT"] = log_format
    validate_name(settings["MODEL_NAME"])
    settings["MODELS"] = parse_models(settings["MODELS"], settings["MODEL_ALIAS"])
    names = [name for name, _ in settings["MODELS"]]
    require(
        not names or settings["MODEL_NAME"] in names,
        "MODEL_NAME",
        f"one of MODELS ({', '.join(names)}): the model /predict answers with",
    )
    if not settings["ADMIN_TOKEN"]:
        settings["ADMIN_TOKEN"] = None  # empty means unset: /admin/reload stays hidden


# What service/gunicorn.conf.py reads besides the app's settings: name -> (parser, what it must be).
GUNICORN_SETTINGS = {
    "WORKERS": (int, lambda value: value > 0, "a positive integer"),
    "DRAIN_SECONDS": (float, lambda value: value >= 0, "a number of seconds >= 0"),
    "GRACEFUL_TIMEOUT": (int, lambda value: value > 0, "a positive integer (seconds)"),
}


def check_startup(environ: Mapping | None = None) -> dict:
    """Everything a server needs before it may say "serving": the app's settings, gunicorn's
    own (WORKERS, DRAIN_SECONDS, GRACEFUL_TIMEOUT) and a readable store directory. Raises
    ValueError with one line naming the problem; returns the app's settings."""
    environ = os.environ if environ is None else environ
    settings = load_config(environ=environ)
    for key, (parse, valid, expected) in GUNICORN_SETTINGS.items():
        raw = (environ.get(key) or "").strip()
        if not raw:
            continue
        try:
            ok = valid(parse(raw))
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"{key}={raw!r}: expected {expected}")
    check_store_directory(settings["MODEL_STORE"])
    return settings


def check_store_directory(root: str | os.PathLike) -> None:
    """ValueError unless ``root`` is a directory this process can list. An empty store is
    fine (the server starts not ready until a model is published); a missing one is a typo or
    a volume that was not mounted, and a server on it would never become ready."""
    path = Path(root)
    if not path.is_dir():
        problem = "is not a directory" if path.exists() else "does not exist"
        raise ValueError(
            f"MODEL_STORE={str(root)!r} {problem}: point it at a model store "
            "(convserve models publish creates one)"
        )
    if not os.access(path, os.R_OK | os.X_OK):
        raise ValueError(
            f"MODEL_STORE={str(root)!r} cannot be read by this user (uid {os.getuid()})"
        )
