"""The operator's Prometheus metrics, served on its health port at /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter(
    "healingwork_operator_reconciles_total",
    "Sequence reconciliations by result (synced, invalid, stale, error, database_unavailable, skipped)",
    ["result"],
)
RECONCILE_SECONDS = Histogram(
    "healingwork_operator_reconcile_duration_seconds",
    "Time of one reconciliation of a Sequence, database transaction included",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
SEQUENCES_NOT_READY = Gauge(
    "healingwork_operator_sequences_not_ready", "Sequences whose last reconciliation left Ready not True"
)
DATABASE_REACHABLE = Gauge(
    "healingwork_operator_database_reachable", "1 while the operator's last database call succeeded, 0 while not"
)
CRD_SERVED = Gauge(
    "healingwork_operator_crd_served", "1 while the API server serves the Sequence resource, 0 while it does not"
)
SEQUENCES_SWEPT = Counter(
    "healingwork_operator_sequences_swept_total", "Stored Sequences marked deleted because their resource was gone"
)


class ReadinessTracker:
    """Which Sequences are not Ready, keyed by (namespace, name), kept in the gauge."""

    def __init__(self) -> None:
        self._not_ready: set[tuple[str, str]] = set()

    def record(self, key: tuple[str, str], ready: bool) -> None:
        """Note the Ready condition just written for ``key``."""
        if ready:
            self._not_ready.discard(key)
        else:
            self._not_ready.add(key)
        SEQUENCES_NOT_READY.set(len(self._not_ready))

    def forget(self, key: tuple[str, str]) -> None:
        """``key`` was deleted."""
        self.record(key, ready=True)
