"""schemathesis against the app: requests generated from /openapi.json, every answer checked
against the document (status code documented, content type, body schema) and never a 5xx (the
service's rule: every client error is a JSON 4xx). Bounded: a few examples per operation, no
deadline flakiness (the forward pass is not what is measured)."""

from __future__ import annotations

import shutil

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.openapi import openapi_document
from tests.support import REPO
from tests.support.apps import ADMIN_TOKEN, TEST_SETTINGS, build_app

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES_PER_OPERATION = 8  # 28 operations positive, 9 negative: ~300 requests, ~30 s


@pytest.fixture(scope="module")
def embedded_app(tmp_path_factory):
    """The app on a copy of the embedded store (the real mnist:1), polling off."""
    store = tmp_path_factory.mktemp("openapi") / "store"
    shutil.copytree(REPO / "model_store", store, ignore=shutil.ignore_patterns("README.md"))
    app = build_app(store)
    yield app
    app.extensions["convserve"].predictor.stop()


@pytest.fixture(scope="module")
def api_schema(embedded_app):
    return schemathesis.openapi.from_wsgi("/openapi.json", embedded_app)


def _can_be_made_invalid(operation: dict) -> bool:
    """Whether a request can break the document: a body, or a parameter that is not any
    string (schemathesis cannot make an invalid string, so it would have nothing to send)."""
    parameters = operation.get("parameters", [])
    return "requestBody" in operation or any(p["schema"]["type"] != "string" for p in parameters)


def _cases() -> list[tuple[str, GenerationMode]]:
    """("METHOD /path", mode) of every documented operation: positive for all, negative for
    those a request can break (the document is a pure function of the settings)."""
    document = openapi_document(TEST_SETTINGS)
    cases = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            label = f"{method.upper()} {path}"
            cases.append((label, GenerationMode.POSITIVE))
            if _can_be_made_invalid(operation):
                cases.append((label, GenerationMode.NEGATIVE))
    return cases


# schemathesis' WSGI transport never closes a streamed file response (GET /, the static files):
# the unclosed file is the test client's, not the app's.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize(("label", "mode"), _cases())
def test_every_answer_conforms_to_the_document(api_schema, label, mode):
    """Requests that fit the document get documented answers; requests that do not (wrong
    types, missing fields, invalid parameters) get a 4xx, never a 5xx."""
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None, label
    checks = CHECKS if mode == GenerationMode.POSITIVE else [not_a_server_error]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def call_and_validate(case):
        case.call_and_validate(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, checks=checks)

    call_and_validate()
