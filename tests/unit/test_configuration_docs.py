"""docs/configuration.md documents every setting any command reads."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import msgspec

from services.common.config import (
    DatabaseSettings,
    DeadLetterSettings,
    DispatcherSettings,
    IntakeSettings,
    JobSettings,
    OperatorSettings,
    SchedulerSettings,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_every_environment_variable_is_documented() -> None:
    text = DOC.read_text()
    names = {
        field.name.upper()
        for kind in (
            DatabaseSettings,
            IntakeSettings,
            SchedulerSettings,
            DispatcherSettings,
            DeadLetterSettings,
            JobSettings,
            OperatorSettings,
        )
        for field in msgspec.structs.fields(kind)
    }
    missing = sorted(name for name in names if f"`{name}`" not in text)
    assert missing == []


def _config_reference() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "scripts" / "config_reference.py"
    spec = importlib.util.spec_from_file_location("config_reference", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_reference_matches_the_settings_code_and_the_chart_schema() -> None:
    reference = _config_reference()
    assert reference.DOC.read_text() == reference.generated(), (
        "docs/configuration-reference.md is stale: run `uv run python scripts/config_reference.py`"
    )


def test_every_chart_value_has_a_description_to_generate_from() -> None:
    reference = _config_reference()
    schema = json.loads((DOC.parents[1] / "charts" / "healingwork" / "values.schema.json").read_text())
    undocumented = [path for path, _, description in reference.chart_leaves(schema) if not description]
    assert undocumented == []


def test_the_generated_env_reference_lists_every_setting_with_its_default() -> None:
    reference = _config_reference()
    table = reference.env_reference()
    assert "| `DATABASE_URL` | str | **required** |" in table
    assert "| `OPERATOR_REFRESH_INTERVAL_S` | float | `60.0` | operator |" in table
