"""Validating documents against the Sequence CRD offline, as the API server would: defaults from the
schema, the OpenAPI v3 schema itself (jsonschema) and every CEL rule (cel-python), so the examples and
the invalid cases are checked against the very file the cluster installs."""

from __future__ import annotations

import copy
import re
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


# Functions of the Kubernetes CEL libraries the CRD's rules use and cel-python lacks (regex `findAll`,
# lists `sum`, strings `substring`), as the Kubernetes documentation defines them.
def _find_all(text: Any, pattern: Any) -> Any:
    return celpy.celtypes.ListType(
        [celpy.celtypes.StringType(m.group(0)) for m in re.finditer(str(pattern), str(text))]
    )


def _sum(items: Any) -> Any:
    return celpy.celtypes.IntType(sum(int(item) for item in items))


def _substring(text: Any, start: Any, end: Any = None) -> Any:
    return celpy.celtypes.StringType(str(text)[int(start) : None if end is None else int(end)])


KUBERNETES_CEL_FUNCTIONS = {"findAll": _find_all, "sum": _sum, "substring": _substring}


def _cel_failures(value: Any, schema: dict[str, Any], path: str) -> list[str]:
    failures = []
    for rule in schema.get("x-kubernetes-validations") or []:
        program = _cel.program(_cel.compile(rule["rule"]), functions=KUBERNETES_CEL_FUNCTIONS)
        try:
            holds = bool(program.evaluate({"self": celpy.json_to_cel(value)}))
        except celpy.CELEvalError:
            # cel-python does not short-circuit an error the way Kubernetes' CEL does (a false side of
            # && wins); either way the object is refused, which is what is checked here.
            holds = False
        if not holds:
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
