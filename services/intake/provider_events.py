"""Bounces and complaints reported by the mail provider, whatever the adapter that parsed them.

A permanent bounce or a complaint suppresses the address (``services.common.suppressions``), which
cancels its enrollments and blocks every later send; a transient bounce is recorded only. Each event
is idempotent on the provider's event id, so a webhook the provider retries changes nothing twice.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from services.common import metrics
from services.common.db import Connection, Pool, transaction
from services.common.errors import CallerError
from services.common.events import find_message, record_event
from services.common.identity import email_hash
from services.common.redaction import known_values_of, redact_addresses
from services.common.suppressions import suppress_address
from services.intake.hash_upgrade import rekey_address
from services.intake.validation import normalize_email

_MESSAGE_ID_HEADER = re.compile(r"<([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})@[^>]+>", re.I)


@dataclass(frozen=True)
class ProviderEvent:
    """One recipient's bounce or complaint, as reported by a provider."""

    event_id: str  # the provider's id, unique per (event, recipient)
    kind: str  # "bounced" or "complained"
    email: str
    permanent: bool
    detail: str = ""
    message_id: uuid.UUID | None = None


class AdapterNotConfigured(CallerError):
    """The webhook adapter the request is for is switched off in this deployment (404)."""


def message_id_from_header(value: str | None) -> uuid.UUID | None:
    """Our message id, from a Message-ID header we built (``<uuid@domain>``); None for anything else."""
    match = _MESSAGE_ID_HEADER.fullmatch(value.strip()) if value else None
    return uuid.UUID(match.group(1)) if match else None


async def apply_provider_event(
    conn: Connection,
    event: ProviderEvent,
    *,
    adapter: str,
    events_topic: str,
    suppressed_topic: str,
    hash_key: str,
) -> None:
    """Record the event against its message (when known) and suppress the address if it must be."""
    # Provider diagnostics quote the recipient ("550 <jane@...>"): nothing stored keeps the address.
    diagnostic = redact_addresses(event.detail, known_values_of(event.email))
    found = await find_message(conn, event.message_id) if event.message_id else None
    if found is not None:
        ref, key = found
        detail = diagnostic if event.permanent else f"transient: {diagnostic}"
        await record_event(
            conn, ref, event.kind, topic=events_topic, detail=detail, dedupe_key=f"{adapter}/{event.event_id}"
        )
    else:
        try:
            _, key = normalize_email(event.email)
        except ValueError:
            key = event.email.strip().lower()
    address_hash = email_hash(key, hash_key)
    if event.permanent or event.kind == "complained":
        await rekey_address(conn, key, hash_key)
        await suppress_address(
            conn, address_hash, reason=event.kind, detail=f"{adapter}: {diagnostic}", topic=suppressed_topic
        )
    metrics.WEBHOOK_EVENTS.labels(adapter, event.kind if event.permanent else f"{event.kind}_transient").inc()


async def apply_provider_events(
    pool: Pool,
    events: list[ProviderEvent],
    *,
    adapter: str,
    events_topic: str,
    suppressed_topic: str,
    hash_key: str,
) -> None:
    """Apply every event of one webhook request in one transaction (all of them, or none); ``hash_key``
    is ``SUPPRESSION_HASH_KEY``."""
    async with transaction(pool) as conn:
        for event in events:
            await apply_provider_event(
                conn,
                event,
                adapter=adapter,
                events_topic=events_topic,
                suppressed_topic=suppressed_topic,
                hash_key=hash_key,
            )
