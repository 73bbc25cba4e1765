"""Opens, clicks and unsubscribes from signed links: plain functions over a connection.

Opens and clicks by mail-privacy proxies and link scanners are recorded but flagged ``automated``, so
stats can leave them out: Apple Mail Privacy Protection, Gmail's and Yahoo's image proxies fetch every
pixel, and security gateways (Microsoft Safe Links, Mimecast, Proofpoint, Barracuda, ...) follow every
link, often with HEAD. The list is a heuristic by nature; it is kept here, in one place.
"""

from __future__ import annotations

import hashlib
import re
import uuid

from services.common import metrics
from services.common.db import Connection
from services.common.events import find_message, record_event
from services.common.identity import email_hash
from services.common.redaction import click_target_for_storage, known_values_of
from services.common.suppressions import suppress_address
from services.intake.hash_upgrade import rekey_address

_AUTOMATED_AGENTS = re.compile(
    r"GoogleImageProxy|ggpht\.com|YahooMailProxy|Yahoo! Slurp|Outlook-iOS-Android-Proxy|"
    r"Barracuda|Mimecast|Proofpoint|Symantec|MessageLabs|Trend ?Micro|Sophos|Forcepoint|FireEye|"
    r"SafeLinks|Safe Links|Microsoft Office Protocol Discovery|BingPreview|bingbot|Googlebot|"
    r"HeadlessChrome|PhantomJS|python-requests|python-httpx|aiohttp|curl/|Wget|Go-http-client|Java/|okhttp|"
    r"facebookexternalhit|Slackbot|Twitterbot|LinkedInBot|Discordbot|WhatsApp|TelegramBot|SkypeUriPreview",
    re.IGNORECASE,
)
# Apple Mail Privacy Protection fetches through its proxy with this bare user agent.
_APPLE_MPP_AGENT = "Mozilla/5.0"


def is_automated(user_agent: str | None, method: str) -> bool:
    """Whether a tracking request looks like a privacy proxy or link scanner rather than a person."""
    if method.upper() == "HEAD" or not user_agent or not user_agent.strip():
        return True
    agent = user_agent.strip()
    return agent == _APPLE_MPP_AGENT or _AUTOMATED_AGENTS.search(agent) is not None


def engagement_dedupe_key(
    message_id: uuid.UUID, event: str, *, automated: bool, url: str, now: float, window_s: float
) -> str:
    """The key that makes repeats of one open or click within a window one event: the message, the event,
    whether it was automated, the URL's digest (not the URL: it may carry personal parameters) and the
    number of the ``window_s`` window ``now`` falls in. Held by a unique index, so every replica agrees."""
    url_digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    who = "automated" if automated else "person"
    return f"{message_id}/{event}/{who}/{url_digest}/{int(now // window_s)}"


async def record_engagement(
    conn: Connection,
    message_id: uuid.UUID,
    event: str,
    *,
    automated: bool,
    detail: str,
    topic: str,
    now: float,
    dedupe_window_s: float,
) -> bool:
    """Record an ``opened`` or ``clicked`` event, unless the same one (message, event, URL, automated) was
    recorded in the same ``dedupe_window_s`` window; returns whether a new event was recorded (False
    also when the message no longer exists)."""
    found = await find_message(conn, message_id)
    if found is None:
        metrics.TRACKING.labels(event, "unknown_message").inc()
        return False
    ref, _ = found
    # The key from the URL as clicked (as a digest), the row with the URL as it may be stored.
    key = engagement_dedupe_key(message_id, event, automated=automated, url=detail, now=now, window_s=dedupe_window_s)
    if event == "clicked":
        detail = await _stored_click_target(conn, ref.lead_id, detail)
    if not await record_event(conn, ref, event, topic=topic, detail=detail, automated=automated, dedupe_key=key):
        metrics.TRACKING.labels(event, "repeat").inc()
        return False
    metrics.TRACKING.labels(event, "automated" if automated else "recorded").inc()
    if ref.variant is not None and not automated:
        metrics.VARIANT_EVENTS.labels(ref.sequence_name, ref.step, ref.variant, event).inc()
    return True


async def _stored_click_target(conn: Connection, lead_id: uuid.UUID, url: str) -> str:
    """The clicked URL as stored and published: no query, fragment or user info (templates personalise
    links there, e.g. ``?email={{ lead.email }}``), and no address or name of the lead in its path."""
    cursor = await conn.execute("SELECT email, first_name, last_name FROM leads WHERE id = %s", (lead_id,))
    lead = await cursor.fetchone()
    known = known_values_of(lead["email"], lead["first_name"], lead["last_name"]) if lead else []  # type: ignore[arg-type]
    return click_target_for_storage(url, known)


async def unsubscribe(
    conn: Connection, message_id: uuid.UUID, *, events_topic: str, suppressed_topic: str, hash_key: str
) -> bool:
    """Suppress the message's recipient and record ``unsubscribed`` (once); idempotent.

    Returns False when the message no longer exists (its lead was erased: nothing left to mail).
    ``hash_key`` is ``SUPPRESSION_HASH_KEY``.
    """
    found = await find_message(conn, message_id)
    if found is None:
        return False
    ref, recipient = found
    await rekey_address(conn, recipient, hash_key)
    await suppress_address(
        conn,
        email_hash(recipient, hash_key),
        reason="unsubscribed",
        detail=f"link in message {message_id}",
        topic=suppressed_topic,
    )
    await record_event(conn, ref, "unsubscribed", topic=events_topic, dedupe_key=f"{message_id}/unsubscribed")
    metrics.TRACKING.labels("unsubscribed", "recorded").inc()
    return True
