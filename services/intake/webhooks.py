"""POST /v1/webhooks/email-events: bounces and complaints from the mail provider (the HTTP edge).

Two adapters on one URL:

* **generic** (any provider or relay): a JSON body signed with WEBHOOK_SECRET
  (:mod:`services.intake.generic_webhook`).
* **Amazon SES via SNS**, recognised by the ``x-amz-sns-message-type`` header: the SNS signature is
  verified, the topic must be one of SNS_TOPIC_ARNS, and a subscription confirmation is confirmed
  (:func:`services.intake.sns.receive_sns`).

Either way the events are applied in one transaction (:func:`apply_provider_events`); every refusal is
a domain error mapped by ``services.intake.problems``.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, Response, post
from litestar.params import HeaderParameter

from services.intake.auth import client_ip
from services.intake.authentication import trusted_networks
from services.intake.generic_webhook import parse_generic, verify_generic_request
from services.intake.injection import Ctx
from services.intake.problems import problem_responses
from services.intake.provider_events import AdapterNotConfigured, ProviderEvent, apply_provider_events
from services.intake.rate_limit import ip_key
from services.intake.sns import receive_sns


class WebhookReceipt(msgspec.Struct, frozen=True, kw_only=True):
    accepted: int


def _generic_events(ctx: Ctx, timestamp: str | None, signature: str | None, body: bytes) -> list[ProviderEvent]:
    settings = ctx.settings
    if not settings.webhook_secret:
        raise AdapterNotConfigured("The generic webhook is not configured (WEBHOOK_SECRET).")
    verify_generic_request(
        settings.webhook_secret, timestamp, signature, body, tolerance_s=settings.webhook_tolerance_s, now=ctx.clock()
    )
    return parse_generic(body)


@post(
    "/v1/webhooks/email-events",
    status_code=200,
    responses=problem_responses(400, 401, 404, 413, 422, 429, 503),
    summary="Bounces and complaints from the mail provider",
    description=(
        "A generic HMAC-signed JSON format (Webhook-Timestamp, Webhook-Signature: v1=<hex>), or Amazon SES "
        "notifications via SNS (signature verified). Permanent bounces and complaints suppress the address."
    ),
)
async def email_events_webhook(
    request: Request[Any, Any, Any],
    ctx: Ctx,
    # Declared (not only read) so the API documents them; the body is read raw, as it was signed.
    webhook_timestamp: Annotated[
        str | None, HeaderParameter(name="Webhook-Timestamp", description="Unix seconds (generic format)")
    ] = None,
    webhook_signature: Annotated[
        str | None, HeaderParameter(name="Webhook-Signature", description="v1=<hex HMAC-SHA256> (generic format)")
    ] = None,
    sns_message_type: Annotated[
        str | None, HeaderParameter(name="x-amz-sns-message-type", description="Set by Amazon SNS")
    ] = None,
) -> Response[WebhookReceipt]:
    # RateLimited (429 + Retry-After) before any signature is verified or certificate fetched.
    ctx.webhook_limiter.check(ip_key(client_ip(request, trusted_networks(ctx.settings))))
    body = await request.body()
    if sns_message_type:
        adapter, events = "ses", await receive_sns(ctx.sns_verifier, body)
    else:
        adapter, events = "generic", _generic_events(ctx, webhook_timestamp, webhook_signature, body)
    if events:
        await apply_provider_events(
            ctx.pool,
            events,
            adapter=adapter,
            events_topic=ctx.settings.topic_email_events,
            suppressed_topic=ctx.settings.topic_leads_suppressed,
            hash_key=ctx.settings.suppression_hash_key,
        )
    return Response(WebhookReceipt(accepted=len(events)), status_code=200)
