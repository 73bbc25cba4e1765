"""The double opt-in confirmation routes: ``GET`` and ``POST /confirm/{token}``.

Thin handlers (the signed token is the authority, no authentication): verify the token, call one
function of :mod:`services.intake.double_opt_in`, answer with a page of
:mod:`services.intake.confirmation_pages`. ``GET`` changes nothing — mail scanners follow every link —
and shows a button; only the ``POST`` confirms. A token that does not verify, an expired lead or an
erased one gets a page that says so, never a 500. Both routes are charged to the client IP under
``FORM_RATE_LIMIT_PER_MINUTE``.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from litestar import Request, Response, get, post
from litestar.openapi import ResponseSpec
from litestar.params import FromPath

from services.common.config import IntakeSettings
from services.common.db import transaction
from services.common.tokens import InvalidToken, Purpose, verify_token
from services.intake.auth import client_ip, rate_limited_by_ip
from services.intake.authentication import trusted_networks
from services.intake.confirmation_pages import PAGE_HEADERS, PAGES, render_page
from services.intake.double_opt_in import Confirmation, ConfirmationRules, confirm_lead, confirmation_state
from services.intake.injection import Ctx
from services.intake.problems import problem_responses
from services.intake.validation import clean_text


def confirmation_rules(settings: IntakeSettings) -> ConfirmationRules:
    """The double opt-in rules of this intake (``CONFIRMATION_*`` settings, the topics)."""
    return ConfirmationRules(
        cooldown=timedelta(minutes=settings.confirmation_cooldown_minutes),
        expiry=timedelta(hours=settings.confirmation_expiry_hours),
        dispatch_topic=settings.topic_email_dispatch,
        leads_topic=settings.topic_leads_accepted,
    )


def _lead_of(ctx: Ctx, token: str) -> uuid.UUID | None:
    try:
        verified = verify_token(token, Purpose.CONFIRM, [ctx.settings.hmac_secret, ctx.settings.hmac_secret_previous])
    except InvalidToken:
        return None
    return verified.message_id


def _answer(state: Confirmation) -> Response[str]:
    page = PAGES[state]
    return Response(render_page(page), status_code=page.status, media_type="text/html", headers=PAGE_HEADERS)


_LIMITED = [rate_limited_by_ip(lambda limits: limits.forms)]
_DOCUMENTED = {
    404: ResponseSpec(str, media_type="text/html", description="A page: the link is not valid"),
    410: ResponseSpec(str, media_type="text/html", description="A page: the link has expired"),
    **problem_responses(429, 503),
}


@get(
    "/confirm/{token:str}",
    guards=_LIMITED,
    media_type="text/html",
    responses=_DOCUMENTED,
    summary="Double opt-in: the confirmation page",
    description=(
        "An HTML page with a confirm button (a form POST to the same URL). Changes nothing: mail "
        "scanners fetch every link. 404 page for a link that is not valid, 410 for an expired one."
    ),
)
async def confirmation_page(token: FromPath[str], ctx: Ctx) -> Response[str]:
    lead_id = _lead_of(ctx, token)
    if lead_id is None:
        return _answer(Confirmation.UNKNOWN)
    async with ctx.pool.connection() as conn:
        state = await confirmation_state(conn, lead_id, expiry=timedelta(hours=ctx.settings.confirmation_expiry_hours))
    return _answer(state)


@post(
    "/confirm/{token:str}",
    guards=_LIMITED,
    status_code=200,
    media_type="text/html",
    responses=_DOCUMENTED,
    summary="Double opt-in: confirm",
    description=(
        "Confirms the address: records time, client IP and user agent in the lead's consent record, "
        "then the lead enrolls. Idempotent (a second POST answers 'already confirmed'). 404 page for a "
        "link that is not valid, 410 for an expired one."
    ),
)
async def confirm(token: FromPath[str], request: Request[Any, Any, Any], ctx: Ctx) -> Response[str]:
    lead_id = _lead_of(ctx, token)
    if lead_id is None:
        return _answer(Confirmation.UNKNOWN)
    ip = client_ip(request, trusted_networks(ctx.settings))
    async with transaction(ctx.pool) as conn:
        state = await confirm_lead(
            conn,
            lead_id,
            ip=ip if ip != "unknown" else None,
            user_agent=clean_text(request.headers.get("user-agent") or "") or None,
            rules=confirmation_rules(ctx.settings),
        )
    return _answer(state)


CONFIRMATION_ROUTES = [confirmation_page, confirm]
