"""The short chaos run: the platform as separate processes (two replicas of each service, the batch jobs
on a short schedule), a few hundred leads through a three-step Sequence, and at least one fault of each
kind (kill -9 of an intake, a scheduler, a dispatcher and a webhooks deliverer, a broker pause, a broker
restart — Tansu loses everything, Apache Kafka keeps its log —, a PostgreSQL restart, an SMTP 4xx period,
the webhook receiver answering 503 for a while; 550 for chosen addresses throughout). On Tansu with 20
faults, on Apache Kafka with 12: each fault kind is there, and the suite's added time stays modest (50
faults on Tansu took 165 s of a CI budget of 25 minutes; the default `bench.chaos` run injects 50 and
more).

The assertions are the invariants only, never timings: nothing lost, nothing duplicated outside the
recorded ``sending`` window, nothing stuck, the dead letters exactly the permanently rejected messages.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.services import BROKERS

pytestmark = pytest.mark.e2e

# Faults at least, per broker (bench.chaos's default is 50; the default run's figures are in reliability.md).
MIN_FAULTS = {"tansu": 20, "kafka": 12}


@pytest.mark.parametrize("broker", BROKERS)
def test_short_chaos_run_loses_nothing_duplicates_nothing_and_leaves_nothing_stuck(broker: str) -> None:
    command = [
        sys.executable, "-m", "bench.chaos",
        "--leads", "300", "--duration", "12", "--seed", "8", "--scripted",
        "--calm-seconds", "2", "--max-pause", "6", "--rejected", "3", "--drain-timeout", "120",
        "--broker", broker, "--min-faults", str(MIN_FAULTS[broker]),
    ]  # fmt: skip
    finished = subprocess.run(command, capture_output=True, text=True, timeout=280, check=False)
    assert finished.returncode == 0, finished.stderr[-4000:]
    result = json.loads(finished.stdout.strip().splitlines()[-1])
    context = json.dumps(result, indent=1)
    assert result["broker"] == broker, context

    # Every kind of fault happened, each service process was killed at least once.
    assert set(result["faults_by_kind"]) == {
        "kill9",
        "broker-pause",
        "broker-restart",
        "postgres-restart",
        "smtp-4xx",
        "webhook-5xx",
    }
    assert result["faults"] >= 8, context
    assert result["service_restarts"] >= 4, context
    # Every lead was acknowledged and every step of every deliverable lead arrived exactly once.
    assert result["leads"] == result["leads_acknowledged"] == 300, context
    assert result["emails_expected"] == (300 - 3) * 3, context
    assert result["emails_delivered"] == result["emails_expected"], context
    assert result["lost"] == 0, context
    assert result["duplicates_outside_window"] == 0, context
    assert result["stuck"] == 0, context
    assert result["drain_s"] is not None, context
    # The dead-letter topic holds exactly what the sink refused for good (3 addresses x 3 steps).
    assert result["permanently_rejected"] == 9, context
    assert result["dead_lettered"] == 9, context
    assert result["dlq_mismatch"] == 0, context
    # Outgoing webhooks: every lead.accepted and email.sent reached the receiver, signed, and copies of
    # one event (at least once) only ever under its one webhook-id.
    assert result["webhooks_expected"] == 300 + (300 - 3) * 3, context
    assert result["webhooks_lost"] == 0, context
    assert result["webhooks_bad_signatures"] == 0, context
    assert result["webhooks_duplicates_with_another_id"] == 0, context
    assert result["webhooks_failed"] == result["webhook_endpoints_disabled"] == 0, context
