"""The OpenAPI document is one a client generator can use: valid by a standard validator,
an operationId on every operation, servers, and a real schema for every JSON answer; its
``image`` accepts both documented forms (28 rows of 28, or 784 flat values)."""

from __future__ import annotations

import pytest
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate

from service.openapi import openapi_document
from tests.support.apps import TEST_SETTINGS

ROWS = [[0] * 28] * 4 + [[0] * 13 + [255] * 3 + [0] * 12] * 20 + [[0] * 28] * 4
FLAT = [value for row in ROWS for value in row]


@pytest.fixture(scope="module")
def document() -> dict:
    return openapi_document(TEST_SETTINGS)


def operations(document: dict):
    for path, by_method in document["paths"].items():
        for method, operation in by_method.items():
            yield f"{method.upper()} {path}", operation


def resolve(document: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def schema_validator(document: dict, name: str) -> OAS30Validator:
    """A validator for components/schemas/<name>, with the document's $refs resolvable."""
    return OAS30Validator({**document, "$ref": f"#/components/schemas/{name}"})


def test_a_standard_validator_accepts_the_document(document):
    validate(document)  # raises OpenAPIValidationError on the first problem


def test_every_operation_has_a_unique_operation_id(document):
    ids = [operation.get("operationId") for _, operation in operations(document)]
    assert None not in ids
    assert len(set(ids)) == len(ids)


def test_the_document_names_its_servers(document):
    assert document["servers"] and all(server["url"] for server in document["servers"])


def test_no_json_answer_is_typed_only_as_object(document):
    vague = []
    for label, operation in operations(document):
        for status, response in operation["responses"].items():
            content = response.get("content", {}).get("application/json")
            if content is None:
                continue
            schema = resolve(document, content["schema"])
            if not ({"properties", "oneOf", "anyOf", "additionalProperties"} & set(schema)):
                vague.append(f"{label} {status}")
    assert vague == []


@pytest.mark.parametrize(
    ("body", "valid"),
    [
        ({"image": ROWS}, True),
        ({"image": FLAT}, True),
        ({"images": [ROWS, FLAT]}, True),
        ({"image": FLAT[:783]}, False),
        ({"image": ROWS[:27]}, False),
        ({"image": [[300] * 28] * 28}, False),
    ],
    ids=["rows", "flat", "both", "783-values", "27-rows", "over-255"],
)
def test_the_predict_body_schema_takes_both_image_forms(document, body, valid):
    assert schema_validator(document, "PredictJson").is_valid(body) is valid


def test_the_service_accepts_what_the_schema_accepts(client, document):
    for body in ({"image": ROWS}, {"image": FLAT}):
        answer = client.post("/predict", json=body)
        assert answer.status_code == 200
        assert schema_validator(document, "PredictResponse").is_valid(answer.get_json())
