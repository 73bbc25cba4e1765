"""Validating documents against the Sequence CRD offline, as the API server would: defaults from the
schema, the OpenAPI v3 schema itself (jsonschema) and every CEL rule (cel-python), so the examples and
the invalid cases are checked against the very file the cluster installs."""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml

CRD_PATH = Path(__file__).resolve().parents[2] / "k8s" / "crds" / "sequences.healingwork.io.yaml"


@cache
def crd() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())
    return document


def openapi_schema() -> dict[str, Any]:
    schema: dict[str, Any] = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def with_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """``value`` with the schema's defaults filled in, as the API server does before validating."""
    if isinstance(value, dict) and schema.get("type") == "object":
        result = dict(value)
        for name, sub in (schema.get("properties") or {}).items():
            if name not in result and "default" in sub:
                result[name] = copy.deepcopy(sub["default"])
            if name in result:
                result[name] = with_defaults(result[name], sub)
        return result
    if isinstance(value, list) and "items" in schema:
        return [with_defaults(item, schema["items"]) for item in value]
    return value


_cel = celpy.Environment()


def _cel_failures(value: Any, schema: dict[str, Any], path: str) -> list[str]:
    failures = []
    for rule in schema.get("x-kubernetes-validations") or []:
        program = _cel.program(_cel.compile(rule["rule"]))
        if not bool(program.evaluate({"self": celpy.json_to_cel(value)})):
            failures.append(f"{path}: {rule['message']}")
    if isinstance(value, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name in value:
                failures.extend(_cel_failures(value[name], sub, f"{path}.{name}"))
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            failures.extend(_cel_failures(item, schema["items"], f"{path}[{index}]"))
    return failures


def crd_problems(document: dict[str, Any]) -> list[str]:
    """Every reason the API server would refuse ``document`` (empty when it would accept it)."""
    schema = openapi_schema()
    defaulted = with_defaults(document, schema)
    validator = jsonschema.Draft7Validator(schema)
    problems = [
        f"{'.'.join(str(p) for p in error.absolute_path)}: {error.message}"
        for error in validator.iter_errors(defaulted)
    ]
    if problems:  # the API server evaluates CEL only on a document that passed the schema
        return problems
    return _cel_failures(defaulted, schema, "")
