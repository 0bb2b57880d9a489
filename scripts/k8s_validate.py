"""Validate Kubernetes manifests against the API's JSON schemas, offline, in strict mode
(unknown fields are errors), with kubernetes-validate's bundled schemas.

    .venv-tools/bin/python scripts/k8s_validate.py --kubernetes-version 1.33 deploy/k8s/*.yaml

Why not its own CLI: it names each object by ``metadata.name`` and fails on the Jobs, which
have ``generateName``; the validation itself does not need a name. Kustomization files are
not Kubernetes objects (no schema) and are skipped. Prints one line per object; exit 1 when
any object is invalid.
"""

from __future__ import annotations

import argparse
import sys

import kubernetes_validate
import yaml

NOT_API_OBJECTS = {"kustomize.config.k8s.io/v1beta1"}


def object_name(document: dict) -> str:
    metadata = document.get("metadata", {})
    name = metadata.get("name") or metadata.get("generateName", "?") + "*"
    return f"{document.get('kind')}/{name}"


def validate_file(path: str, version: str) -> int:
    """Validate every document of ``path``; returns the number of invalid ones."""
    failures = 0
    with open(path) as handle:
        documents = [d for d in yaml.safe_load_all(handle) if d is not None]
    for document in documents:
        if document.get("apiVersion") in NOT_API_OBJECTS:
            print(f"skip  {path}: {document['kind']} (kustomize, not an API object)")
            continue
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            failures += 1
            where = ".".join(str(part) for part in exc.path)  # a jsonschema error's path
            print(f"FAIL  {path}: {object_name(document)} at {where}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            failures += 1
            print(f"FAIL  {path}: {object_name(document)}: {exc}")
        else:
            print(f"ok    {path}: {object_name(document)} (Kubernetes {version}, strict)")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubernetes-version", required=True, help="e.g. 1.33")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    failures = sum(validate_file(path, args.kubernetes_version) for path in args.files)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
