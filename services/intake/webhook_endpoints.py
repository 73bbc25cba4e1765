"""Outgoing webhook endpoints, as the admin API manages them: register (the secret shown once), list,
update (and enable again), rotate the secret, delete, their deliveries, and retrying one.

Plain functions over a connection; they raise domain errors (:class:`InvalidWebhookEndpoint`,
:class:`NoSuchWebhookEndpoint`, :class:`NoSuchWebhookDelivery`) that ``services.intake.problems``
maps to problem documents. Delivering is ``healingwork webhooks`` (``services/outgoing_webhooks``).
"""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from typing import Any, TypeVar

import msgspec

from proto.http import (
    FieldError,
    WebhookDeliveryView,
    WebhookEndpointCreated,
    WebhookEndpointRequest,
    WebhookEndpointUpdate,
    WebhookEndpointView,
    WebhookSecretRotated,
)
from services.common.db import Connection
from services.common.errors import CallerError
from services.common.webhook_addresses import RefusedWebhookUrl, check_webhook_url
from services.common.webhook_secrets import encrypt_secret, new_signing_secret

MAX_DELIVERIES_LISTED = 100


class InvalidWebhookEndpoint(CallerError):
    """The endpoint cannot be registered; ``errors`` names each invalid field (422)."""

    message = "One or more fields are invalid; see errors."

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__()
        self.errors = errors


class NoSuchWebhookEndpoint(CallerError):
    """No endpoint has this id (404)."""

    message = "No such webhook endpoint."


class NoSuchWebhookDelivery(CallerError):
    """The endpoint has no delivery with this id (404)."""

    message = "No such delivery of this webhook endpoint."


_AT_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")


_Body = TypeVar("_Body", WebhookEndpointRequest, WebhookEndpointUpdate)


def _parse(value: Any, kind: type[_Body]) -> _Body:  # Any: decoded JSON, checked here
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as error:
        text = str(error)
        match = _AT_PATH.search(text)
        pointer = "/" + match["path"].lstrip(".").replace(".", "/").replace("[", "/").replace("]", "") if match else ""
        reason = _AT_PATH.sub("", text)
        raise InvalidWebhookEndpoint([FieldError(field=pointer or "/", reason=reason)]) from None


def parse_endpoint_request(value: Any) -> WebhookEndpointRequest:  # Any: decoded JSON, checked here
    """The registration body, or :class:`InvalidWebhookEndpoint` naming the field that is wrong."""
    return _parse(value, WebhookEndpointRequest)


def parse_endpoint_update(value: Any) -> WebhookEndpointUpdate:  # Any: decoded JSON, checked here
    """The update body (the registration's fields, each optional, and ``enabled``), or
    :class:`InvalidWebhookEndpoint` naming the field that is wrong."""
    return _parse(value, WebhookEndpointUpdate)


def _checked_fields(url: str | None, description: str | None, *, allow_private_networks: bool) -> str | None:
    """What registration and update check beyond the body's shape: the URL outgoing webhooks may call
    (returned normalized) and a description without control characters; raises
    :class:`InvalidWebhookEndpoint` naming every field refused. ``None`` = not given."""
    errors = []
    checked = None
    if url is not None:
        try:
            checked = check_webhook_url(url, allow_private_networks=allow_private_networks)
        except RefusedWebhookUrl as error:
            errors.append(FieldError(field="/url", reason=str(error)))
    if description is not None and any(ord(c) < 0x20 and c not in "\t\n\r" for c in description):
        errors.append(FieldError(field="/description", reason="must not contain control characters"))
    if errors:
        raise InvalidWebhookEndpoint(errors)
    return checked


_ENDPOINT_COLUMNS = "id, url, events, description, status, disabled_reason, created_at, disabled_at"


def _endpoint_view(row: Any) -> WebhookEndpointView:  # Any: a dict row of _ENDPOINT_COLUMNS
    return WebhookEndpointView(**row)


async def register_endpoint(
    conn: Connection, request: WebhookEndpointRequest, *, hmac_secret: str, allow_private_networks: bool
) -> WebhookEndpointCreated:
    """Store a new endpoint with a fresh secret (kept encrypted); returns it with the secret, which
    is never shown again. Raises :class:`InvalidWebhookEndpoint` for a URL outgoing webhooks refuse."""
    url = _checked_fields(request.url, request.description, allow_private_networks=allow_private_networks)
    endpoint_id = uuid.uuid4()
    secret = new_signing_secret()
    cursor = await conn.execute(
        f"""INSERT INTO webhook_endpoints (id, url, events, description, secret_ciphertext)
            VALUES (%s, %s, %s, %s, %s) RETURNING {_ENDPOINT_COLUMNS}""",  # noqa: S608 - constant columns
        (
            endpoint_id,
            url,
            list(dict.fromkeys(request.events)),
            request.description,
            encrypt_secret(secret, endpoint_id, hmac_secret),
        ),
    )
    row = await cursor.fetchone()
    assert row is not None  # an INSERT ... RETURNING returns its row
    return WebhookEndpointCreated(**row, secret=secret)  # type: ignore[arg-type]


async def list_endpoints(conn: Connection) -> list[WebhookEndpointView]:
    """Every endpoint, oldest first (without secrets)."""
    cursor = await conn.execute(
        f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints ORDER BY created_at, id"  # noqa: S608 - constant
    )
    return [_endpoint_view(row) for row in await cursor.fetchall()]


async def update_endpoint(
    conn: Connection, endpoint_id: uuid.UUID, update: WebhookEndpointUpdate, *, allow_private_networks: bool
) -> WebhookEndpointView:
    """Change the fields ``update`` gives (checked as at registration; nothing changes when one is
    refused); ``enabled`` true enables the endpoint again with its failure state cleared, false disables
    it. Raises :class:`InvalidWebhookEndpoint` or :class:`NoSuchWebhookEndpoint`."""
    url = _checked_fields(
        None if update.url is msgspec.UNSET else update.url,
        None if update.description is msgspec.UNSET else update.description,
        allow_private_networks=allow_private_networks,
    )
    changes: dict[str, object] = {}
    if url is not None:
        changes["url"] = url
    if update.events is not msgspec.UNSET:
        changes["events"] = list(dict.fromkeys(update.events))
    if update.description is not msgspec.UNSET:
        changes["description"] = update.description
    cursor = await conn.execute("SELECT status FROM webhook_endpoints WHERE id = %s FOR UPDATE", (endpoint_id,))
    row = await cursor.fetchone()
    if row is None:
        raise NoSuchWebhookEndpoint()
    if update.enabled is True and row["status"] == "disabled":
        await _enable(conn, endpoint_id)
    elif update.enabled is False and row["status"] == "enabled":
        await conn.execute(
            """UPDATE webhook_endpoints SET status = 'disabled', disabled_at = now(),
                      disabled_reason = 'disabled by an admin' WHERE id = %s""",
            (endpoint_id,),
        )
    if changes:
        assignments = ", ".join(f"{column} = %({column})s" for column in changes)  # columns named above
        await conn.execute(
            f"UPDATE webhook_endpoints SET {assignments} WHERE id = %(id)s",  # noqa: S608 - constant columns
            {**changes, "id": endpoint_id},
        )
    cursor = await conn.execute(
        f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = %s",  # noqa: S608 - constant columns
        (endpoint_id,),
    )
    updated = await cursor.fetchone()
    assert updated is not None  # locked above
    return _endpoint_view(updated)


async def _enable(conn: Connection, endpoint_id: uuid.UUID) -> None:
    """Enable a disabled endpoint again and reset what disabled it: its due deliveries are claimed again,
    and one created before now that fails for its whole schedule does not disable it again
    (``enabled_at``; the deliverer's check)."""
    await conn.execute(
        """UPDATE webhook_endpoints SET status = 'enabled', disabled_at = NULL, disabled_reason = NULL,
                  enabled_at = now()
           WHERE id = %s AND status = 'disabled'""",
        (endpoint_id,),
    )


async def rotate_secret(
    conn: Connection, endpoint_id: uuid.UUID, *, hmac_secret: str, grace: timedelta
) -> WebhookSecretRotated:
    """Give the endpoint a fresh signing secret (returned, never shown again); the one it replaces keeps
    signing deliveries too, next to the new one, for ``grace``. A rotation within the grace period of
    the last one drops the secret before that. Raises :class:`NoSuchWebhookEndpoint`."""
    secret = new_signing_secret()
    cursor = await conn.execute(
        f"""UPDATE webhook_endpoints
            SET previous_secret_ciphertext = secret_ciphertext, previous_secret_expires_at = now() + %(grace)s,
                secret_ciphertext = %(new)s
            WHERE id = %(id)s
            RETURNING {_ENDPOINT_COLUMNS}, previous_secret_expires_at""",  # noqa: S608 - constant columns
        {"id": endpoint_id, "grace": grace, "new": encrypt_secret(secret, endpoint_id, hmac_secret)},
    )
    row = await cursor.fetchone()
    if row is None:
        raise NoSuchWebhookEndpoint()
    return WebhookSecretRotated(**row, secret=secret)  # type: ignore[arg-type]


async def delete_endpoint(conn: Connection, endpoint_id: uuid.UUID) -> None:
    """Delete the endpoint and its deliveries (nothing more is sent to it); :class:`NoSuchWebhookEndpoint`
    when there is none."""
    cursor = await conn.execute("DELETE FROM webhook_endpoints WHERE id = %s", (endpoint_id,))
    if cursor.rowcount == 0:
        raise NoSuchWebhookEndpoint()


_DELIVERY_COLUMNS = """id, event_id, event_type, status, attempts,
    CASE WHEN status = 'pending' THEN next_attempt_at END AS next_attempt_at, last_attempt_at,
    response_status, response_body, last_error, created_at, delivered_at"""


async def _require_endpoint(conn: Connection, endpoint_id: uuid.UUID) -> None:
    cursor = await conn.execute("SELECT 1 FROM webhook_endpoints WHERE id = %s", (endpoint_id,))
    if await cursor.fetchone() is None:
        raise NoSuchWebhookEndpoint()


async def list_deliveries(conn: Connection, endpoint_id: uuid.UUID, *, limit: int) -> list[WebhookDeliveryView]:
    """The endpoint's ``limit`` most recent deliveries, newest first; :class:`NoSuchWebhookEndpoint`."""
    await _require_endpoint(conn, endpoint_id)
    cursor = await conn.execute(
        f"""SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE endpoint_id = %s
            ORDER BY created_at DESC, id DESC LIMIT %s""",  # noqa: S608 - constant columns
        (endpoint_id, min(max(limit, 1), MAX_DELIVERIES_LISTED)),
    )
    return [WebhookDeliveryView(**row) for row in await cursor.fetchall()]  # type: ignore[arg-type]


async def retry_delivery(conn: Connection, endpoint_id: uuid.UUID, delivery_id: uuid.UUID) -> WebhookDeliveryView:
    """Make the delivery due now with a fresh retry schedule (same body, same ``webhook-id``), and
    enable its endpoint again if it was disabled (whoever retries has fixed it)."""
    await _require_endpoint(conn, endpoint_id)
    cursor = await conn.execute(
        f"""UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = now()
            WHERE id = %s AND endpoint_id = %s RETURNING {_DELIVERY_COLUMNS}""",  # noqa: S608 - constant columns
        (delivery_id, endpoint_id),
    )
    row = await cursor.fetchone()
    if row is None:
        raise NoSuchWebhookDelivery()
    await _enable(conn, endpoint_id)
    return WebhookDeliveryView(**row)  # type: ignore[arg-type]
