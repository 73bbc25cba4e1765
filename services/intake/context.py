"""What the intake's routes work with, built once by the app's lifespan.

Routes receive an :class:`IntakeContext` through Litestar's dependency injection (``ctx``) and guards
read it with :func:`context_of`. It holds plain values (settings, the pool, the lead committer, the
SNS verifier, a clock), so no route depends on how the process runs (its Kafka relay, its signals):
``services.intake.app`` builds it from the service runtime.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg_pool

from proto.http import LeadReceipt
from services.common.clock import Clock, unix_now
from services.common.config import IntakeSettings
from services.common.db import Connection
from services.intake.batching import GroupCommitter
from services.intake.leads import LeadJob
from services.intake.rate_limit import KeyedRateLimiter, RequestLimits
from services.intake.sns import SnsVerifier

STATE_KEY = "intake_context"


@dataclass(frozen=True)
class IntakeContext:
    """The dependencies of every intake route."""

    settings: IntakeSettings
    pool: psycopg_pool.AsyncConnectionPool[Connection]
    committer: GroupCommitter[LeadJob, LeadReceipt]
    sns_verifier: SnsVerifier
    # True once the outbox relay has stopped (readiness fails then).
    relay_failed: Callable[[], bool]
    # Per-caller request budgets (services.intake.rate_limit), charged once the caller is known.
    limits: RequestLimits
    # Bounds on the unauthenticated write routes, per client IP: provider webhooks
    # (WEBHOOK_RATE_LIMIT_PER_MINUTE) and recorded opens/clicks (TRACKING_RATE_LIMIT_PER_MINUTE).
    webhook_limiter: KeyedRateLimiter
    tracking_limiter: KeyedRateLimiter
    clock: Clock = unix_now


def context_of(state: Any) -> IntakeContext:  # Any: Litestar's State, whose attributes are untyped
    """The context the lifespan stored in the application's state."""
    context: IntakeContext = getattr(state, STATE_KEY)
    return context
