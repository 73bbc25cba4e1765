"""The kopf edge of the Sequence operator: thin handlers that call the reconcile functions inside one
transaction and write what they return into the object's status and Events.

``register_handlers`` puts them into a registry (the process's default one, or a test's own), so the
same handlers run under ``healingwork operator`` and under a test's Kubernetes API emulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from operators.sequence import metrics
from operators.sequence.cluster import ResourceNotServed, existing_objects, resource_served
from operators.sequence.config_maps import register_config_map_handlers, watch_only_labelled_config_maps
from operators.sequence.diffbase import DigestDiffBaseStorage
from operators.sequence.reconcile import (
    Reconciled,
    database_unavailable,
    finalize_sequence,
    reconcile_failed,
    reconcile_sequence,
)
from proto.sequence import TEMPLATES_LABEL, TEMPLATES_LABEL_VALUE
from services.common.clock import database_now
from services.common.config import OperatorSettings
from services.common.db import UNAVAILABLE_ERRORS, open_pool, transaction
from services.common.retry import backoff_delay
from services.common.sequences import mark_vanished_sequences

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "healingwork.io", "v1alpha1", "sequences"
FINALIZER = "healingwork.io/sequence"
# A database outage is retried with bounded backoff for as long as it lasts (kopf's retries=None): a
# handler that gave up would let kopf remove the finalizer of a deleted Sequence whose deletion was never
# recorded, or leave a change unapplied until the next refresh.
DB_RETRIES = None
# Between checks that the API server serves the Sequence resource (readiness, /readyz).
CRD_CHECK_INTERVAL_S = 10.0


@dataclass
class OperatorState:
    """What the operator knows about its own health, for /readyz and /healthz (see ``main``)."""

    # The namespaces watched; None: cluster-wide.
    namespaces: list[str] | None = None
    # Whether the API server serves the Sequence resource, now and at the first check after start-up
    # (kopf looks for the resource once, at start-up: one installed later is not watched until a restart).
    crd_served: bool | None = None
    crd_served_at_start: bool | None = None
    database_reachable: bool | None = None

    def problems(self) -> list[str]:
        """Why the operator is not ready, empty when it is."""
        found = []
        if not self.crd_served:
            found.append("the API server does not serve sequences.healingwork.io/v1alpha1 (is the CRD installed?)")
        if not self.database_reachable:
            found.append("the database is unreachable")
        return found

    def stuck(self) -> bool:
        """The CRD appeared after start-up: kopf will never watch it; only a restart helps."""
        return self.crd_served is True and self.crd_served_at_start is False


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    """kopf settings the operator relies on: its own finalizer name, events only from our handlers
    (not kopf's per-handler chatter), bounded API calls, and no scanning of namespaces and CRDs, so
    the operator needs no cluster-wide list rights (the CRD must exist before it starts)."""
    settings.persistence.finalizer = FINALIZER
    # Digests, not kopf's full copy of the spec in an annotation (capped at 256 KiB): see diffbase.py.
    settings.persistence.diffbase_storage = DigestDiffBaseStorage()
    watch_only_labelled_config_maps(settings)
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
        memo.setdefault("state", OperatorState())
        memo["pool"] = await open_pool(config, wait=False)

    @kopf.on.cleanup(registry=registry)
    async def close_database(*, memo: Any, **_: Any) -> None:
        if "pool" in memo:
            await memo["pool"].close()

    @kopf.index(
        "", "v1", "configmaps", labels={TEMPLATES_LABEL: TEMPLATES_LABEL_VALUE}, registry=registry, id="config_maps"
    )
    def config_maps(
        *, namespace: str | None, name: str, body: kopf.Body, **_: Any
    ) -> dict[tuple[str, str], dict[str, str]]:
        # ConfigMap data by (namespace, name), kept current by kopf's watch; only read for templateRefs.
        return {(namespace or "default", name): {str(k): str(v) for k, v in (body.get("data") or {}).items()}}

    def key_of(body: kopf.Body) -> tuple[str, str]:
        return (str(body.metadata.namespace or "default"), str(body.metadata.name))

    def unavailable(error: BaseException, retry: int) -> kopf.TemporaryError:
        metrics.DATABASE_REACHABLE.set(0)
        metrics.RECONCILES.labels("database_unavailable").inc()
        delay = backoff_delay(retry + 1, 2, config.operator_retry_max_delay_s)
        return kopf.TemporaryError(f"database unavailable: {error!r}", delay=delay)

    async def reconcile(
        body: kopf.Body,
        patch: kopf.Patch,
        memo: Any,
        index: kopf.Index[Any, Any],
        retry: int,
        *,
        report_outage: bool = True,
    ) -> Reconciled:
        def lookup(namespace: str, name: str) -> Mapping[str, str] | None:
            found = list(index.get((namespace, name), []))
            return found[-1] if found else None

        started = time.monotonic()
        try:
            async with transaction(memo["pool"]) as conn:
                result = await reconcile_sequence(conn, body, lookup)
        except UNAVAILABLE_ERRORS as error:
            # Said in status before retrying: Ready must not stay True for a change that is not live.
            # (Not by the refresh timer: its generation is live already, and its body may be older
            # than the one on.update is reporting about.)
            if report_outage:
                publish(database_unavailable(body, error), body, patch)
            raise unavailable(error, retry) from error
        except Exception as error:
            # Anything else is a bug or data the code cannot handle: retrying it would fail the same
            # way, silently. Say so in status and an Event; the refresh timer tries again.
            log.exception("reconciling %s/%s failed", *key_of(body))
            metrics.RECONCILES.labels("error").inc()
            result = reconcile_failed(body, error)
        else:
            metrics.DATABASE_REACHABLE.set(1)
            metrics.RECONCILES.labels(outcome(result)).inc()
        finally:
            metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)
        return result

    def outcome(result: Reconciled) -> str:
        if not result.status:
            return "stale"
        valid = [c for c in result.status.get("conditions", []) if c.get("type") == "Valid"]
        return "synced" if valid and valid[0].get("status") == "True" else "invalid"

    def publish(result: Reconciled, body: kopf.Body, patch: kopf.Patch) -> None:
        patch.status.update(result.status)
        ready = [c for c in result.status.get("conditions", []) if c.get("type") == "Ready"]
        if ready:
            memo_tracker.record(key_of(body), ready[0].get("status") == "True")
        if result.event is not None:
            kopf.event(body, type=result.event.type, reason=result.event.reason, message=result.event.message)

    memo_tracker = metrics.ReadinessTracker()

    register_config_map_handlers(registry, reconcile, publish)

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry, retries=DB_RETRIES)
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry, retries=DB_RETRIES)
    @kopf.on.update(GROUP, VERSION, PLURAL, field="spec", registry=registry, retries=DB_RETRIES)
    async def sequence_changed(*, body: kopf.Body, patch: kopf.Patch, memo: Any, retry: int, **kwargs: Any) -> None:
        publish(await reconcile(body, patch, memo, kwargs["config_maps"], retry), body, patch)

    @kopf.timer(GROUP, VERSION, PLURAL, registry=registry, interval=config.operator_refresh_interval_s)
    async def refresh(*, body: kopf.Body, patch: kopf.Patch, memo: Any, **kwargs: Any) -> None:
        observed = (body.get("status") or {}).get("observedGeneration")
        if observed is not None and observed != body.metadata.get("generation"):
            # A change is in the hands of on.update (maybe retrying): writing beside it would race it;
            # the timer resumes once that generation is observed. (A new object without status yet is
            # reconciled: at worst twice for one generation, which the per-Sequence lock serialises.)
            metrics.RECONCILES.labels("skipped").inc()
            return
        result = await reconcile(body, patch, memo, kwargs["config_maps"], kwargs.get("retry", 0), report_outage=False)
        # The timer re-posts only news (a ConfigMap edit made a new revision), never a repeated warning.
        publish(
            Reconciled(result.status, result.event if result.event and result.event.type == "Normal" else None),
            body,
            patch,
        )

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry, retries=DB_RETRIES)
    async def sequence_deleted(*, body: kopf.Body, patch: kopf.Patch, memo: Any, retry: int, **_: Any) -> None:
        # kopf removes the finalizer only after this returns: while the database cannot record the
        # deletion, the Sequence stays (Terminating) and this retries with bounded backoff.
        try:
            async with transaction(memo["pool"]) as conn:
                deleted = await finalize_sequence(conn, body)
        except UNAVAILABLE_ERRORS as error:
            publish(database_unavailable(body, error, deleting=True), body, patch)
            raise unavailable(error, retry) from error
        metrics.DATABASE_REACHABLE.set(1)
        memo_tracker.forget(key_of(body))
        log.info(
            "sequence deleted",
            extra={"cancelled": deleted.cancelled_enrollments, "skipped_messages": deleted.skipped_messages},
        )

    @kopf.on.startup(registry=registry)
    async def start_background_checks(*, memo: Any, settings: kopf.OperatorSettings, **_: Any) -> None:
        # Started here, they run once kopf has logged in (its API client waits for credentials).
        memo["background"] = [
            asyncio.create_task(check_resource_served(memo, settings), name="crd check"),
            asyncio.create_task(sweep_vanished(memo, settings), name="sweep"),
        ]

    @kopf.on.cleanup(registry=registry)
    async def stop_background_checks(*, memo: Any, **_: Any) -> None:
        for task in memo.get("background", []):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def check_resource_served(memo: Any, settings: kopf.OperatorSettings) -> None:
        state = memo["state"]
        while True:
            try:
                async with asyncio.timeout(CRD_CHECK_INTERVAL_S), memo["pool"].connection() as conn:
                    await conn.execute("SELECT 1")
            except Exception:
                state.database_reachable = False
            else:
                state.database_reachable = True
            metrics.DATABASE_REACHABLE.set(1 if state.database_reachable else 0)
            try:
                served = await resource_served(settings, GROUP, VERSION, PLURAL)
            except Exception:  # an API outage: keep the last answer, ask again
                log.warning("cannot tell whether %s/%s %s is served", GROUP, VERSION, PLURAL, exc_info=True)
            else:
                if state.crd_served_at_start is None:
                    state.crd_served_at_start = served
                state.crd_served = served
                metrics.CRD_SERVED.set(1 if served else 0)
                if not served:
                    log.error("the API server does not serve %s.%s/%s: install the CRD", PLURAL, GROUP, VERSION)
            await asyncio.sleep(CRD_CHECK_INTERVAL_S)

    async def sweep_vanished(memo: Any, settings: kopf.OperatorSettings) -> None:
        resource = kopf.Resource(GROUP, VERSION, PLURAL, namespaced=True)
        namespaces = memo["state"].namespaces
        while True:
            try:
                async with transaction(memo["pool"]) as conn:
                    listed_after = await database_now(conn)
                existing = await existing_objects(settings, resource, namespaces)
                async with transaction(memo["pool"]) as conn:
                    swept = await mark_vanished_sequences(conn, existing, namespaces, listed_after)
            except ResourceNotServed:
                # The CRD is not installed yet: nothing to sweep (the CRD check says so every 10 s).
                log.info("the sweep of deleted Sequences waits for the CRD")
            except Exception:  # the database or the API unreachable: the next pass repeats it
                log.warning("the sweep of deleted Sequences failed; retrying later", exc_info=True)
            else:
                metrics.SEQUENCES_SWEPT.inc(len(swept))
                for namespace, name in swept:
                    memo_tracker.forget((namespace, name))
                    log.warning("Sequence %s/%s is gone from the API server: marked deleted", namespace, name)
            await asyncio.sleep(config.operator_sweep_interval_s)
