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
        activation = {"self": celpy.json_to_cel(value)}
        try:
            holds = bool(program.evaluate(activation))
        except celpy.CELEvalError:
            # cel-python does not short-circuit an error the way Kubernetes' CEL does (a false side of
            # && wins); either way the object is refused, which is what is checked here.
            holds = False
        if not holds:
            message = rule["message"]
            if "messageExpression" in rule:  # the API server prefers it to message
                expression = _cel.program(_cel.compile(rule["messageExpression"]), functions=KUBERNETES_CEL_FUNCTIONS)
                message = str(expression.evaluate(activation))
            failures.append(f"{path}{rule.get('fieldPath', '')}: {message}")
    if isinstance(value, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name in value:
                failures.extend(_cel_failures(value[name], sub, f"{path}.{name}"))
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            failures.extend(_cel_failures(item, schema["items"], f"{path}[{index}]"))
    return failures


def _list_map_duplicates(value: Any, schema: dict[str, Any], path: str) -> list[str]:
    """The API server's check of ``x-kubernetes-list-type: map``: each key tuple at most once."""
    found = []
    if isinstance(value, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name in value:
                found.extend(_list_map_duplicates(value[name], sub, f"{path}.{name}" if path else name))
    elif isinstance(value, list) and schema.get("x-kubernetes-list-type") == "map":
        keys = schema["x-kubernetes-list-map-keys"]
        seen = set()
        for index, item in enumerate(value):
            key = tuple(item.get(k) for k in keys)
            if key in seen:
                shown = ",".join(f'"{k}":"{v}"' for k, v in zip(keys, key, strict=True))
                found.append(f"{path}[{index}]: Duplicate value: {{{shown}}}")
            seen.add(key)
    return found


def crd_problems(document: dict[str, Any]) -> list[str]:
    """Every reason the API server would refuse ``document`` (empty when it would accept it)."""
    schema = openapi_schema()
    defaulted = with_defaults(document, schema)
    validator = jsonschema.Draft7Validator(schema)
    problems = [
        f"{'.'.join(str(p) for p in error.absolute_path)}: {error.message}"
        for error in validator.iter_errors(defaulted)
    ]
    problems.extend(_list_map_duplicates(defaulted, schema, ""))
    if problems:  # the API server evaluates CEL only on a document that passed the schema
        return problems
    return _cel_failures(defaulted, schema, "")
