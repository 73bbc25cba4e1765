"""``/v1/webhook-endpoints``: the admin API of outgoing webhooks (scope ``admin``).

Thin handlers over :mod:`services.intake.webhook_endpoints`; its domain errors become problem
documents (``services.intake.problems``).
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated, Any

from litestar import Request, Response, delete, get, patch, post
from litestar.params import FromPath, QueryParameter

from proto.http import (
    WebhookDeliveryList,
    WebhookDeliveryView,
    WebhookEndpointCreated,
    WebhookEndpointList,
    WebhookEndpointRequest,
    WebhookEndpointUpdate,
    WebhookEndpointView,
    WebhookSecretRotated,
)
from services.common.db import transaction
from services.intake.auth import requires_scope
from services.intake.bodies import decode_json
from services.intake.injection import Ctx
from services.intake.problems import ProblemError, problem_responses
from services.intake.routes import json_body_operation
from services.intake.webhook_endpoints import (
    MAX_DELIVERIES_LISTED,
    delete_endpoint,
    list_deliveries,
    list_endpoints,
    parse_endpoint_request,
    parse_endpoint_update,
    register_endpoint,
    retry_delivery,
    rotate_secret,
    update_endpoint,
)


@post(
    "/v1/webhook-endpoints",
    status_code=201,
    summary="Register an outgoing webhook endpoint",
    description=(
        "Events of the listed types are POSTed to url, signed per the Standard Webhooks specification "
        "(headers webhook-id, webhook-timestamp, webhook-signature) with the secret in the answer, which is "
        "shown only this once. The url must be http(s) and not point to a loopback, private, link-local or "
        "metadata address (checked again at every delivery). Needs admin."
    ),
    guards=[requires_scope("admin")],
    operation_class=json_body_operation(WebhookEndpointRequest),
    responses=problem_responses(400, 401, 403, 413, 415, 422, 429, 503),
)
async def create_webhook_endpoint(request: Request[Any, Any, Any], ctx: Ctx) -> WebhookEndpointCreated:
    endpoint = parse_endpoint_request(await _json_body(request))
    async with transaction(ctx.pool) as conn:
        return await register_endpoint(
            conn,
            endpoint,
            hmac_secret=ctx.settings.hmac_secret,
            allow_private_networks=ctx.settings.webhook_allow_private_networks,
        )


async def _json_body(request: Request[Any, Any, Any]) -> Any:  # Any: decoded JSON, checked by the caller
    if request.content_type[0] != "application/json":
        raise ProblemError(415, "Send the endpoint as a JSON object with Content-Type: application/json.")
    return decode_json(await request.body())


@patch(
    "/v1/webhook-endpoints/{endpoint_id:uuid}",
    summary="Update an outgoing webhook endpoint",
    description=(
        "Changes the fields given (url, events, description: checked as at registration; nothing changes "
        "when one is refused). enabled=true enables an endpoint disabled after persistent failure again "
        "(its failure state cleared; deliveries that failed stay failed, and the retry route replays "
        "them); enabled=false stops deliveries to it. The id and the secret stay. Needs admin."
    ),
    guards=[requires_scope("admin")],
    operation_class=json_body_operation(WebhookEndpointUpdate),
    responses=problem_responses(400, 401, 403, 404, 413, 415, 422, 429, 503),
)
async def update_webhook_endpoint(
    endpoint_id: FromPath[uuid.UUID], request: Request[Any, Any, Any], ctx: Ctx
) -> WebhookEndpointView:
    update = parse_endpoint_update(await _json_body(request))
    async with transaction(ctx.pool) as conn:
        return await update_endpoint(
            conn, endpoint_id, update, allow_private_networks=ctx.settings.webhook_allow_private_networks
        )


@post(
    "/v1/webhook-endpoints/{endpoint_id:uuid}/rotate-secret",
    status_code=200,
    summary="Rotate the signing secret of an outgoing webhook endpoint",
    description=(
        "A new signing secret, shown only this once. Until previous_secret_expires_at "
        "(WEBHOOK_SECRET_GRACE_S, 24 h by default) every delivery carries two signatures in "
        "webhook-signature, by the new and by the previous secret, so a receiver can switch to the new "
        "secret without losing events; after it, only the new one signs. Needs admin."
    ),
    guards=[requires_scope("admin")],
    responses=problem_responses(400, 401, 403, 404, 429, 503),
)
async def rotate_webhook_secret(endpoint_id: FromPath[uuid.UUID], ctx: Ctx) -> WebhookSecretRotated:
    async with transaction(ctx.pool) as conn:
        return await rotate_secret(
            conn,
            endpoint_id,
            hmac_secret=ctx.settings.hmac_secret,
            grace=timedelta(seconds=ctx.settings.webhook_secret_grace_s),
        )


@get(
    "/v1/webhook-endpoints",
    summary="List outgoing webhook endpoints",
    description="Every registered endpoint with its status (never its secret). Needs admin.",
    guards=[requires_scope("admin")],
    responses=problem_responses(401, 403, 429, 503),
)
async def get_webhook_endpoints(ctx: Ctx) -> WebhookEndpointList:
    async with ctx.pool.connection() as conn:
        return WebhookEndpointList(endpoints=await list_endpoints(conn))


@delete(
    "/v1/webhook-endpoints/{endpoint_id:uuid}",
    summary="Delete an outgoing webhook endpoint",
    description="Deletes the endpoint and its delivery records; nothing more is sent to it. Needs admin.",
    guards=[requires_scope("admin")],
    responses=problem_responses(400, 401, 403, 404, 429, 503),
)
async def delete_webhook_endpoint(endpoint_id: FromPath[uuid.UUID], ctx: Ctx) -> None:
    async with transaction(ctx.pool) as conn:
        await delete_endpoint(conn, endpoint_id)


@get(
    "/v1/webhook-endpoints/{endpoint_id:uuid}/deliveries",
    summary="Recent deliveries of an outgoing webhook endpoint",
    description=(
        "The most recent deliveries, newest first, with status (pending, delivered, failed), attempts, the "
        "last response status and the first KiB of its body. A delivery's id is its webhook-id header. "
        "Needs admin."
    ),
    guards=[requires_scope("admin")],
    responses=problem_responses(400, 401, 403, 404, 429, 503),
)
async def get_webhook_deliveries(
    endpoint_id: FromPath[uuid.UUID],
    ctx: Ctx,
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_DELIVERIES_LISTED, description="at most this many")] = 50,
) -> WebhookDeliveryList:
    async with ctx.pool.connection() as conn:
        return WebhookDeliveryList(deliveries=await list_deliveries(conn, endpoint_id, limit=limit))


@post(
    "/v1/webhook-endpoints/{endpoint_id:uuid}/deliveries/{delivery_id:uuid}/retry",
    status_code=202,
    summary="Retry a delivery",
    description=(
        "Makes the delivery due now with a fresh retry schedule (the same body and webhook-id), and enables "
        "its endpoint again if it was disabled after persistent failure. Needs admin."
    ),
    guards=[requires_scope("admin")],
    responses=problem_responses(400, 401, 403, 404, 429, 503),
)
async def retry_webhook_delivery(
    endpoint_id: FromPath[uuid.UUID], delivery_id: FromPath[uuid.UUID], ctx: Ctx
) -> Response[WebhookDeliveryView]:
    async with transaction(ctx.pool) as conn:
        delivery = await retry_delivery(conn, endpoint_id, delivery_id)
    return Response(delivery, status_code=202)


WEBHOOK_ENDPOINT_ROUTES = [
    create_webhook_endpoint,
    get_webhook_endpoints,
    update_webhook_endpoint,
    rotate_webhook_secret,
    delete_webhook_endpoint,
    get_webhook_deliveries,
    retry_webhook_delivery,
]
