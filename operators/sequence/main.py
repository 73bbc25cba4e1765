"""``healingwork operator``: runs the Sequence operator (kopf) until SIGTERM/SIGINT.

One replica (the Deployment uses the Recreate strategy): kopf runs standalone, without peering, so
two replicas would both handle every change. Both would still be correct, because the reconcile
function is idempotent and serialises on the Sequence's row, but they would post every Event twice.
"""

from __future__ import annotations

import asyncio
from typing import Any

import kopf

from operators.sequence.handlers import configure_kopf, register_handlers
from services.common.config import OperatorSettings


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
    liveness = f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None
    await kopf.operator(
        registry=registry,
        settings=kopf_settings,
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness,
        stop_flag=stop_flag,
    )
