"""Tracking, unsubscribe and preference-page routes (no authentication: the signed token is the authority).

Thin handlers: verify the token for its purpose, call one function of ``services.intake.engagement``
or ``services.intake.preferences`` in a transaction, answer. A token that does not verify (tampered,
truncated, another purpose, an unknown key) changes nothing and gets 404. Opens and clicks are
bounded: repeats of one within ``TRACKING_DEDUPE_WINDOW_S`` are one event, and each client IP records at
most ``TRACKING_RATE_LIMIT_PER_MINUTE`` of them per process (docs/security.md).
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any
from urllib.parse import parse_qs

from litestar import HttpMethod, Request, Response, get, post, route
from litestar.params import FromPath

from services.common import metrics
from services.common.db import transaction
from services.common.tokens import InvalidToken, Purpose, verify_token
from services.intake.auth import client_ip
from services.intake.authentication import trusted_networks
from services.intake.engagement import is_automated, record_engagement
from services.intake.injection import Ctx
from services.intake.preference_page import (
    EVERYTHING_FIELD,
    FORM_MARKER,
    FORM_MARKER_VALUE,
    KEEP_FIELD,
    PAGE_HEADERS,
    Notice,
    choose_language,
    render_gone,
    render_preferences,
    render_unsubscribed,
)
from services.intake.preferences import Topics, apply_preferences, load_preferences, one_click_unsubscribe
from services.intake.problems import problem_responses
from services.intake.rate_limit import ip_key

# A transparent 1x1 GIF.
PIXEL = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
NO_STORE = {"Cache-Control": "no-store, private", "Referrer-Policy": "no-referrer"}


async def _record(ctx: Ctx, request: Request[Any, Any, Any], message_id: uuid.UUID, event: str, detail: str) -> None:
    """Record an open or click, within the per-IP limit (beyond it nothing is written, but the person
    still gets the pixel or the redirect: the limit bounds the rows one token can add, never a link)."""
    if ctx.tracking_limiter.take(ip_key(client_ip(request, trusted_networks(ctx.settings)))) > 0.0:
        metrics.TRACKING.labels(event, "rate_limited").inc()
        return
    automated = is_automated(request.headers.get("user-agent"), request.method)
    async with transaction(ctx.pool) as conn:
        await record_engagement(
            conn,
            message_id,
            event,
            automated=automated,
            detail=detail,
            topic=ctx.settings.topic_email_events,
            now=ctx.clock(),
            dedupe_window_s=ctx.settings.tracking_dedupe_window_s,
        )


def _verified(ctx: Ctx, token: str, purpose: Purpose) -> tuple[uuid.UUID, str | None]:
    """The message (and click URL) of a token that verifies for ``purpose``; ``InvalidToken`` (404) else."""
    verified = verify_token(token, purpose, [ctx.settings.hmac_secret, ctx.settings.hmac_secret_previous])
    return verified.message_id, verified.url


@route(
    "/t/o/{token:str}",
    http_method=[HttpMethod.GET, HttpMethod.HEAD],
    media_type="image/gif",
    responses=problem_responses(404, 503),
    summary="Open-tracking pixel",
    description=(
        "A 1x1 GIF. Records the open of the message the signed token names; opens from mail-privacy "
        "proxies and link scanners are recorded as automated."
    ),
)
async def track_open(token: FromPath[str], request: Request[Any, Any, Any], ctx: Ctx) -> Response[bytes]:
    message_id, _ = _verified(ctx, token, Purpose.OPEN)
    await _record(ctx, request, message_id, "opened", "")
    return Response(PIXEL, media_type="image/gif", headers=NO_STORE)


@route(
    "/t/c/{token:str}",
    http_method=[HttpMethod.GET, HttpMethod.HEAD],
    status_code=302,
    media_type="text/plain",
    responses=problem_responses(404, 503),
    summary="Click-tracking redirect",
    description="Records the click and redirects to the URL bound into the signed token, and nowhere else.",
)
async def track_click(token: FromPath[str], request: Request[Any, Any, Any], ctx: Ctx) -> Response[bytes]:
    message_id, url = _verified(ctx, token, Purpose.CLICK)
    if not url or not url.lower().startswith(("http://", "https://")):
        raise InvalidToken  # the only redirects are to web pages
    await _record(ctx, request, message_id, "clicked", url)
    # The only place a click may go is the URL bound into the signed token: no open redirect.
    return Response(b"", status_code=302, media_type="text/plain", headers={**NO_STORE, "Location": url})


def _html(document: str) -> Response[str]:
    return Response(document, media_type="text/html", headers=PAGE_HEADERS)


# A preference form is a few hundred bytes; anything far larger is not one.
_MAX_FORM_BYTES = 16 * 1024


def _topics(ctx: Ctx) -> Topics:
    return Topics(
        events=ctx.settings.topic_email_events,
        suppressed=ctx.settings.topic_leads_suppressed,
        hash_key=ctx.settings.suppression_hash_key,
        lifecycle=ctx.settings.topic_lifecycle_events,
    )


@get(
    "/u/{token:str}",
    media_type="text/html",
    responses=problem_responses(404, 503),
    summary="Preference page",
    description=(
        "The subscriber's email preferences: the address masked, each Sequence it is enrolled in with a "
        "checkbox, and unsubscribe from everything. Changes nothing (link scanners fetch every GET); its "
        "form posts back to the same URL. No JavaScript; a strict Content-Security-Policy."
    ),
)
async def preference_page(token: FromPath[str], request: Request[Any, Any, Any], ctx: Ctx) -> Response[str]:
    """The preference page. It changes nothing: link scanners fetch every GET, so only a POST acts."""
    message_id, _ = _verified(ctx, token, Purpose.UNSUBSCRIBE)
    async with transaction(ctx.pool) as conn:
        preferences = await load_preferences(conn, message_id)
    accept_language = request.headers.get("accept-language")
    if preferences is None:
        return _html(render_gone(choose_language(None, accept_language)))
    return _html(render_preferences(preferences, choose_language(preferences.locale, accept_language)))


def _preference_form(body: bytes) -> tuple[set[uuid.UUID], bool] | None:
    """The page's choice (Sequences kept, everything left) when ``body`` is the page's form; None for
    anything else, which is a one-click unsubscribe (RFC 8058 posts ``List-Unsubscribe=One-Click``)."""
    if len(body) > _MAX_FORM_BYTES:
        return None
    try:
        fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=200)
    except ValueError:
        return None
    if fields.get(FORM_MARKER) != [FORM_MARKER_VALUE]:
        return None
    keep = set()
    for value in fields.get(KEEP_FIELD, []):
        with contextlib.suppress(ValueError):
            keep.add(uuid.UUID(value))
    return keep, EVERYTHING_FIELD in fields


@post(
    "/u/{token:str}",
    status_code=200,
    media_type="text/html",
    responses=problem_responses(404, 503),
    summary="One-click unsubscribe (RFC 8058) and the preference page's form",
    description=(
        "No login, idempotent. The preference page's form (form=preferences, keep=<sequence id>..., "
        "everything) ends the enrollments of every Sequence not kept, or unsubscribes from everything. "
        "Any other body is RFC 8058 one-click: by the Sequence's unsubscribeScope the address is "
        "suppressed (Global, the default: every active enrollment cancelled) or leaves that Sequence only."
    ),
)
async def unsubscribe_one_click(token: FromPath[str], request: Request[Any, Any, Any], ctx: Ctx) -> Response[str]:
    message_id, _ = _verified(ctx, token, Purpose.UNSUBSCRIBE)
    choice = _preference_form(await request.body())
    accept_language = request.headers.get("accept-language")
    async with transaction(ctx.pool) as conn:
        if choice is None:
            scope = await one_click_unsubscribe(conn, message_id, _topics(ctx))
            preferences = None
        else:
            keep, everything = choice
            preferences = await apply_preferences(
                conn, message_id, keep=keep, everything=everything, topics=_topics(ctx)
            )
    if choice is None:
        # The language of a one-click answer matters little (a mailbox provider posts it); a person
        # pressing the page's plain form gets their browser's.
        return _html(render_unsubscribed(choose_language(None, accept_language), scope or "Global"))
    if preferences is None:
        return _html(render_gone(choose_language(None, accept_language)))
    language = choose_language(preferences.locale, accept_language)
    return _html(render_preferences(preferences, language, Notice("saved")))


TRACKING_ROUTES = [track_open, track_click, preference_page, unsubscribe_one_click]
