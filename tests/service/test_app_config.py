"""Configuration: defaults, then the environment, then the mapping given to create_app; nothing
read at import time; bad values refused with the setting's name."""

import subprocess
import sys

import pytest

from service.config import SETTINGS, load_config
from tests.support.apps import build_app


def test_defaults():
    settings = load_config(environ={})
    assert settings["MODEL_STORE"] == "model_store"
    assert settings["MODEL_NAME"] == "mnist"
    assert settings["MODEL_ALIAS"] == "production"
    assert settings["RELOAD_INTERVAL_S"] == 2.0
    assert settings["ADMIN_TOKEN"] is None
    assert settings["MAX_BATCH"] == 256
    assert settings["MAX_CONTENT_LENGTH"] == 10 * 1024 * 1024
    assert settings["LOG_LEVEL"] == "info"
    assert set(settings) == set(SETTINGS)


def test_environment_overrides_defaults_and_the_mapping_overrides_both():
    environ = {"MAX_BATCH": "32", "RELOAD_INTERVAL_S": "0.5", "MODEL_ALIAS": "staging"}
    settings = load_config({"MODEL_ALIAS": "canary"}, environ=environ)
    assert settings["MAX_BATCH"] == 32
    assert settings["RELOAD_INTERVAL_S"] == 0.5
    assert settings["MODEL_ALIAS"] == "canary"


def test_blank_environment_values_mean_the_default():
    assert load_config(environ={"MAX_BATCH": " ", "ADMIN_TOKEN": ""})["MAX_BATCH"] == 256


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"MAX_BATCH": "lots"}, "MAX_BATCH"),
        ({"MAX_BATCH": "0"}, "MAX_BATCH"),
        ({"MAX_CONTENT_LENGTH": "-1"}, "MAX_CONTENT_LENGTH"),
        ({"MAX_IMAGE_PIXELS": "100"}, "MAX_IMAGE_PIXELS"),
        ({"RELOAD_INTERVAL_S": "-2"}, "RELOAD_INTERVAL_S"),
        ({"LOG_LEVEL": "chatty"}, "LOG_LEVEL"),
        ({"MODEL_CACHE_SIZE": "-1"}, "MODEL_CACHE_SIZE"),
    ],
)
def test_bad_values_are_refused_naming_the_setting(environ, named):
    with pytest.raises(ValueError, match=named):
        load_config(environ=environ)


def test_bad_model_name_is_refused():
    from training.store import InvalidName

    with pytest.raises(InvalidName):
        load_config({"MODEL_NAME": "../etc"}, environ={})


def test_the_environment_is_read_by_create_app(store_root, monkeypatch):
    monkeypatch.setenv("MODEL_STORE", str(store_root))
    monkeypatch.setenv("MAX_BATCH", "3")
    monkeypatch.setenv("RELOAD_INTERVAL_S", "0")
    from service.app import create_app

    app = create_app()
    assert app.config["MAX_BATCH"] == 3
    assert app.test_client().get("/readyz").status_code == 200


def test_max_content_length_is_flasks_own_limit(store_root):
    app = build_app(store_root, MAX_CONTENT_LENGTH=1000)
    assert app.config["MAX_CONTENT_LENGTH"] == 1000
    response = app.test_client().post("/v2/models/mnist/infer", data=b"x" * 1001)
    assert response.status_code == 413


def test_importing_the_app_reads_no_configuration():
    """With every setting invalid in the environment, the import still works: only
    create_app() reads them."""
    env = {"MAX_BATCH": "not-a-number", "LOG_LEVEL": "chatty", "MODEL_STORE": "/nonexistent"}
    code = "import service.app, service.v2, service.predictor, service.metrics; print('ok')"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
