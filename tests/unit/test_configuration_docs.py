"""docs/configuration.md documents every setting any command reads."""

from __future__ import annotations

from pathlib import Path

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
