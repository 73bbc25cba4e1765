"""Every module of the runtime packages is either domain (no framework, enforced by import-linter) or a named edge.

The forbidden contract in pyproject.toml lists the domain modules one by one; a new module that is in neither
list would escape it silently, so this test makes adding a module a decision: domain or edge.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Modules that drive or wire a framework (Litestar, kopf, aiokafka) or are process entry points.
EDGES = {
    "services.__main__",
    "services.cli",
    "services.common.bus",
    "services.common.consumer",
    "services.common.health",
    "services.common.idempotence",
    "services.common.logs",
    "services.common.metrics",
    "services.common.runtime",
    "services.common.shutdown",
    "services.intake.app",
    "services.intake.auth",
    "services.intake.clients_command",
    "services.intake.confirmation",
    "services.intake.injection",
    "services.intake.observability",
    "services.intake.problems",
    "services.intake.event_routes",
    "services.intake.routes",
    "services.intake.stats",
    "services.intake.tracking",
    "services.intake.webhooks",
    "services.intake.webhook_endpoint_routes",
    "services.scheduler.service",
    "services.scheduler.suppression_consumer",
    "services.dispatcher.service",
    "services.dispatcher.dead_letters_cli",
    "services.jobs.commands",
    "operators.sequence.cluster",
    "services.outgoing_webhooks.service",
    "operators.sequence.handlers",
    "operators.sequence.diffbase",
    "operators.sequence.config_maps",
    "operators.sequence.main",
    "operators.sequence.metrics",
}


def _top_level_modules() -> set[str]:
    """services.x.y for every module file, and services.x.pkg for a sub-package (its modules go with it)."""
    modules = set()
    for package in ("services", "operators"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if len(parts) > 3:  # inside a sub-package such as services.common.message_lifecycle
                parts = parts[:3]
            if len(parts) >= 2 and not (len(parts) == 2 and (ROOT / Path(*parts)).is_dir()):
                modules.add(".".join(parts))
    return modules


def _domain_modules() -> set[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    (domain,) = [c for c in contracts if c["name"].startswith("the domain imports no framework")]
    return set(domain["source_modules"])


def test_every_module_is_either_domain_or_a_named_edge() -> None:
    modules = _top_level_modules()
    unclassified = sorted(modules - _domain_modules() - EDGES)
    assert unclassified == [], f"add each to the domain contract in pyproject.toml or to EDGES here: {unclassified}"


def test_the_lists_name_only_modules_that_exist() -> None:
    modules = _top_level_modules()
    assert sorted((_domain_modules() | EDGES) - modules) == []
    assert sorted(_domain_modules() & EDGES) == []
