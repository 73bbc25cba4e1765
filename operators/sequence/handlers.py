"""The kopf edge of the Sequence operator: thin handlers that call the reconcile functions inside one
transaction and write what they return into the object's status and Events.

``register_handlers`` puts them into a registry (the process's default one, or a test's own), so the
same handlers run under ``healingwork operator`` and under a test's Kubernetes API emulator.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

from operators.sequence.reconcile import Reconciled, finalize_sequence, reconcile_sequence
from services.common.config import OperatorSettings
from services.common.db import UNAVAILABLE_ERRORS, open_pool, transaction
from services.common.retry import backoff_delay

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "healingwork.io", "v1alpha1", "sequences"
FINALIZER = "healingwork.io/sequence"
# A database outage is retried with backoff this many times per handler; the refresh timer repairs
# whatever is still missing afterwards.
DB_RETRIES = 8


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    """kopf settings the operator relies on: its own finalizer name, events only from our handlers
    (not kopf's per-handler chatter), bounded API calls, and no scanning of namespaces and CRDs, so
    the operator needs no cluster-wide list rights (the CRD must exist before it starts)."""
    settings.persistence.finalizer = FINALIZER
    settings.scanning.disabled = True
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = 4
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30


def register_handlers(registry: kopf.OperatorRegistry, config: OperatorSettings) -> None:
    """Register every handler of the Sequence operator into ``registry``."""

    @kopf.on.startup(registry=registry)
    async def open_database(*, memo: Any, **_: Any) -> None:
        memo["pool"] = await open_pool(config, wait=False)

    @kopf.on.cleanup(registry=registry)
    async def close_database(*, memo: Any, **_: Any) -> None:
        if "pool" in memo:
            await memo["pool"].close()

    @kopf.index("", "v1", "configmaps", registry=registry, id="config_maps")
    def config_maps(
        *, namespace: str | None, name: str, body: kopf.Body, **_: Any
    ) -> dict[tuple[str, str], dict[str, str]]:
        # ConfigMap data by (namespace, name), kept current by kopf's watch; only read for templateRefs.
        return {(namespace or "default", name): {str(k): str(v) for k, v in (body.get("data") or {}).items()}}

    async def reconcile(body: kopf.Body, memo: Any, index: kopf.Index[Any, Any], retry: int) -> Reconciled:
        def lookup(namespace: str, name: str) -> Mapping[str, str] | None:
            found = list(index.get((namespace, name), []))
            return found[-1] if found else None

        try:
            async with transaction(memo["pool"]) as conn:
                return await reconcile_sequence(conn, body, lookup)
        except UNAVAILABLE_ERRORS as error:
            raise kopf.TemporaryError(
                f"database unavailable: {error!r}", delay=backoff_delay(retry + 1, 2, 60)
            ) from error

    def publish(result: Reconciled, body: kopf.Body, patch: kopf.Patch) -> None:
        patch.status.update(result.status)
        if result.event is not None:
            kopf.event(body, type=result.event.type, reason=result.event.reason, message=result.event.message)

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry, retries=DB_RETRIES)
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry, retries=DB_RETRIES)
    @kopf.on.update(GROUP, VERSION, PLURAL, field="spec", registry=registry, retries=DB_RETRIES)
    async def sequence_changed(*, body: kopf.Body, patch: kopf.Patch, memo: Any, retry: int, **kwargs: Any) -> None:
        publish(await reconcile(body, memo, kwargs["config_maps"], retry), body, patch)

    @kopf.timer(GROUP, VERSION, PLURAL, registry=registry, interval=config.operator_refresh_interval_s)
    async def refresh(*, body: kopf.Body, patch: kopf.Patch, memo: Any, **kwargs: Any) -> None:
        result = await reconcile(body, memo, kwargs["config_maps"], kwargs.get("retry", 0))
        # The timer re-posts only news (a ConfigMap edit made a new revision), never a repeated warning.
        publish(
            Reconciled(result.status, result.event if result.event and result.event.type == "Normal" else None),
            body,
            patch,
        )

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry, retries=DB_RETRIES)
    async def sequence_deleted(*, body: kopf.Body, memo: Any, retry: int, **_: Any) -> None:
        try:
            async with transaction(memo["pool"]) as conn:
                deleted = await finalize_sequence(conn, body)
        except UNAVAILABLE_ERRORS as error:
            raise kopf.TemporaryError(
                f"database unavailable: {error!r}", delay=backoff_delay(retry + 1, 2, 60)
            ) from error
        log.info(
            "sequence deleted",
            extra={"cancelled": deleted.cancelled_enrollments, "skipped_messages": deleted.skipped_messages},
        )
