"""Tracking and unsubscribe routes (no authentication: the signed token is the authority).

Thin handlers: verify the token for its purpose, call one function of ``services.intake.engagement``
in a transaction, answer. A token that does not verify (tampered, truncated, another purpose, an
unknown key) changes nothing and gets 404.
"""

from __future__ import annotations

import html
import uuid
from typing import Any

from litestar import HttpMethod, Request, Response, get, post, route
from litestar.params import FromPath

from services.common.db import transaction
from services.common.tokens import InvalidToken, Purpose, verify_token
from services.intake.auth import NO_RATE_LIMIT
from services.intake.engagement import is_automated, record_engagement, unsubscribe
from services.intake.injection import Ctx
from services.intake.problems import problem_responses

# A transparent 1x1 GIF.
PIXEL = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
NO_STORE = {"Cache-Control": "no-store, private", "Referrer-Policy": "no-referrer"}


def _verified(ctx: Ctx, token: str, purpose: Purpose) -> tuple[uuid.UUID, str | None]:
    """The message (and click URL) of a token that verifies for ``purpose``; ``InvalidToken`` (404) else."""
    verified = verify_token(token, purpose, [ctx.settings.hmac_secret, ctx.settings.hmac_secret_previous])
    return verified.message_id, verified.url


@route(
    "/t/o/{token:str}",
    http_method=[HttpMethod.GET, HttpMethod.HEAD],
    opt={NO_RATE_LIMIT: True},
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
    automated = is_automated(request.headers.get("user-agent"), request.method)
    async with transaction(ctx.pool) as conn:
        await record_engagement(
            conn, message_id, "opened", automated=automated, detail="", topic=ctx.settings.topic_email_events
        )
    return Response(PIXEL, media_type="image/gif", headers=NO_STORE)


@route(
    "/t/c/{token:str}",
    http_method=[HttpMethod.GET, HttpMethod.HEAD],
    opt={NO_RATE_LIMIT: True},
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
    automated = is_automated(request.headers.get("user-agent"), request.method)
    async with transaction(ctx.pool) as conn:
        await record_engagement(
            conn, message_id, "clicked", automated=automated, detail=url, topic=ctx.settings.topic_email_events
        )
    # The only place a click may go is the URL bound into the signed token: no open redirect.
    return Response(b"", status_code=302, media_type="text/plain", headers={**NO_STORE, "Location": url})


def _page(title: str, body: str, status: int = 200) -> Response[str]:
    document = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f'<meta name="robots" content="noindex"><title>{html.escape(title)}</title></head>'
        f'<body style="font-family:sans-serif;max-width:32em;margin:3em auto">{body}</body></html>'
    )
    return Response(document, status_code=status, media_type="text/html", headers=NO_STORE)


@get(
    "/u/{token:str}",
    opt={NO_RATE_LIMIT: True},
    media_type="text/html",
    responses=problem_responses(404, 503),
    summary="Unsubscribe confirmation page",
    description="Changes nothing (link scanners fetch every GET); its form posts the one-click unsubscribe.",
)
async def unsubscribe_page(token: FromPath[str], ctx: Ctx) -> Response[str]:
    """A confirmation page. It changes nothing: link scanners fetch every GET, so only the POST unsubscribes."""
    _verified(ctx, token, Purpose.UNSUBSCRIBE)
    return _page(
        "Unsubscribe",
        "<h1>Unsubscribe</h1><p>Stop receiving these emails?</p>"
        '<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
        '<button type="submit">Unsubscribe</button></form>',
    )


@post(
    "/u/{token:str}",
    opt={NO_RATE_LIMIT: True},
    status_code=200,
    responses=problem_responses(404, 503),
    summary="One-click unsubscribe (RFC 8058)",
    description="No login, idempotent: the address is suppressed and every active enrollment of it is cancelled.",
)
async def unsubscribe_one_click(token: FromPath[str], ctx: Ctx) -> Response[str]:
    message_id, _ = _verified(ctx, token, Purpose.UNSUBSCRIBE)
    async with transaction(ctx.pool) as conn:
        await unsubscribe(
            conn,
            message_id,
            events_topic=ctx.settings.topic_email_events,
            suppressed_topic=ctx.settings.topic_leads_suppressed,
        )
    return _page("Unsubscribed", "<h1>You are unsubscribed</h1><p>You will not receive these emails again.</p>")


TRACKING_ROUTES = [track_open, track_click, unsubscribe_page, unsubscribe_one_click]
