"""Generate docs/configuration-reference.md from the code that defines the settings and the chart values.

Two tables:

- every environment variable, from the settings Structs of services/common/config.py: its type, its
  default (or that it is required) and the commands that read it;
- every chart value, from charts/healingwork/values.schema.json (type, description) and values.yaml
  (default).

``uv run python scripts/config_reference.py`` rewrites the file; ``--check`` exits 1 when it is stale.
tests/unit/test_configuration_docs.py compares it too, so the reference cannot drift from the code.
The prose (what a setting is for, how settings interact) stays in docs/configuration.md.
"""

from __future__ import annotations

import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

import msgspec
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.common import config  # noqa: E402

DOC = ROOT / "docs" / "configuration-reference.md"
CHART = ROOT / "charts" / "healingwork"

# The settings Struct of each command (services/cli.py loads exactly these).
COMMANDS: dict[str, type[msgspec.Struct]] = {
    "intake": config.IntakeSettings,
    "scheduler": config.SchedulerSettings,
    "dispatcher": config.DispatcherSettings,
    "webhooks": config.WebhooksSettings,
    "operator": config.OperatorSettings,
    "job *": config.JobSettings,
    "migrate": config.DatabaseSettings,
    "clients *": config.ClientsSettings,
}


def type_name(hint: Any) -> str:
    """A short, readable name of a settings field's type."""
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        return type_name(typing.get_args(hint)[0])
    if origin is typing.Literal:
        return " \\| ".join(f"`{arg}`" for arg in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(arg) for arg in typing.get_args(hint) if arg is not type(None))
    return getattr(hint, "__name__", str(hint))


def env_reference() -> str:
    readers: dict[str, list[str]] = {}
    fields: dict[str, tuple[Any, msgspec.structs.FieldInfo]] = {}
    for command, kind in COMMANDS.items():
        hints = typing.get_type_hints(kind, include_extras=True)
        for field in msgspec.structs.fields(kind):
            name = field.name.upper()
            readers.setdefault(name, []).append(command)
            fields.setdefault(name, (hints[field.name], field))
    lines = ["| variable | type | default | read by |", "|---|---|---|---|"]
    for name in sorted(fields):
        hint, field = fields[name]
        if field.required:
            default = "**required**"
        elif field.default in ("", None):
            default = "unset"
        else:
            default = f"`{field.default}`"
        lines.append(f"| `{name}` | {type_name(hint)} | {default} | {', '.join(readers[name])} |")
    return "\n".join(lines)


def resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = schema["definitions"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def schema_type(node: dict[str, Any]) -> str:
    if "enum" in node:
        return " \\| ".join(f"`{value}`" for value in node["enum"])
    if "anyOf" in node:
        return " or ".join(sorted({str(option.get("type")) for option in node["anyOf"]}))
    return str(node.get("type", "any"))


def chart_leaves(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any], str]]:
    """Every documented value: (dotted path, its schema, the description of it or of its parent)."""
    leaves: list[tuple[str, dict[str, Any], str]] = []

    def walk(path: str, node: dict[str, Any], inherited: str) -> None:
        node_description = node.get("description", "")
        node = resolve(schema, node)
        description = node_description or node.get("description", "") or inherited
        properties = node.get("properties")
        if node.get("type") == "object" and properties:
            for key, child in properties.items():
                walk(f"{path}.{key}" if path else key, child, "")
        else:
            leaves.append((path, node, description))

    walk("", schema, "")
    return leaves


def lookup(values: Any, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(values, dict) or key not in values:
            return None
        values = values[key]
    return values


def chart_reference() -> str:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    lines = ["| value | type | default | meaning |", "|---|---|---|---|"]
    for path, node, description in chart_leaves(schema):
        default = lookup(values, path)
        shown = "" if default is None else json.dumps(default, separators=(", ", ": "))
        shown = "see values.yaml" if len(shown) > 60 else f"`{shown}`" if shown else ""
        meaning = description.replace("|", "\\|")
        lines.append(f"| `{path}` | {schema_type(node)} | {shown} | {meaning} |")
    return "\n".join(lines)


def generated() -> str:
    """The whole reference document, as the code defines it now."""
    return f"""<!-- Generated by scripts/config_reference.py from services/common/config.py and
charts/healingwork/values.{{schema.json,yaml}}. Do not edit: run `uv run python scripts/config_reference.py`. -->

# Configuration reference

What each setting is for, and how settings interact, is explained in [configuration.md](configuration.md);
this is the exact list, generated from the code (a test fails when it is stale).

## Environment variables

Every variable any command reads (the field names of the settings Structs, upper-cased), its type, its
default, and the commands that read it. An empty variable counts as unset.

{env_reference()}

## Chart values

Every value of `charts/healingwork`: type and meaning from `values.schema.json`, default from
`values.yaml`. The schema rejects unknown keys and wrong types; the chart refuses to render without the
values marked REQUIRED in `values.yaml` ([deployment.md](deployment.md#2-values)). Settings without a
value of their own go in `config.extraEnv` (non-secret) or in the Secret (`secrets.existingSecret`).

{chart_reference()}
"""


def main(argv: list[str]) -> int:
    current = DOC.read_text() if DOC.exists() else ""
    fresh = generated()
    if "--check" in argv:
        if fresh != current:
            print(f"{DOC.relative_to(ROOT)} is stale: run `uv run python scripts/config_reference.py`")
            return 1
        return 0
    DOC.write_text(fresh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
