"""``healingwork operator``: runs the Sequence operator (kopf) until SIGTERM/SIGINT.

One replica, enforced by the chart (``replicas: 1``, the Recreate strategy): kopf runs standalone,
without peering. A second one that runs anyway for a while (a partitioned node, a hand-scaled
Deployment) cannot store an older spec: every write serialises on a per-Sequence lock and refuses a
generation older than the stored one. It would still post Events twice and race on status; see
docs/operator.md "Failure behaviour".

``/healthz`` (liveness), ``/readyz`` (readiness) and ``/metrics`` listen on HEALTH_PORT: ready while
the API server serves the Sequence resource and the database answers; not alive once the CRD appeared
after start-up (kopf looks for it only then: a restart is the repair).
"""

from __future__ import annotations

import asyncio
from typing import Any

import kopf

from operators.sequence.handlers import OperatorState, configure_kopf, register_handlers
from services.common.config import OperatorSettings
from services.common.health import HealthServer


def watched_namespaces(settings: OperatorSettings) -> list[str]:
    """The namespaces to watch; empty means cluster-wide."""
    return [name.strip() for name in settings.operator_namespaces.split(",") if name.strip()]


async def run_operator(
    settings: OperatorSettings,
    *,
    stop_flag: asyncio.Event | None = None,
    connection: kopf.ConnectionInfo | None = None,
) -> None:
    """Run the operator with its own registry until ``stop_flag`` is set (or a signal arrives).

    It logs in with the pod's service account (or a kubeconfig outside a cluster), unless an explicit
    ``connection`` is given (tests give the Kubernetes API emulator's).
    """
    registry = kopf.OperatorRegistry()
    register_handlers(registry, settings)

    # An own registry has none of the fallback logins of kopf's default one: without this handler the
    # operator could not authenticate at all ("Ran out of valid credentials").
    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        if connection is not None:
            return connection
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    kopf_settings = kopf.OperatorSettings()
    configure_kopf(kopf_settings)
    namespaces = watched_namespaces(settings)
    state = OperatorState(namespaces=namespaces or None)
    stop = stop_flag or asyncio.Event()
    health = await HealthServer.bind(settings.health_port) if settings.health_port else None
    if health is not None:
        health.is_ready = lambda: not state.problems()
        health.is_alive = lambda: not state.stuck()
    try:
        async with asyncio.TaskGroup() as group:
            if health is not None:
                group.create_task(health.serve(stop))
            await kopf.operator(
                registry=registry,
                settings=kopf_settings,
                standalone=True,
                clusterwide=not namespaces,
                namespaces=namespaces,
                memo=kopf.Memo(state=state),
                stop_flag=stop,
            )
            stop.set()
    finally:
        stop.set()
