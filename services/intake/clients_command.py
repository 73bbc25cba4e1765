"""``healingwork clients create|list|revoke|signing-secret``: the command side of API clients."""

from __future__ import annotations

import argparse

from services.common.config import ClientsSettings, DatabaseSettings, signing_key_entries
from services.common.db import command_transaction
from services.intake.clients import (
    ApiClient,
    InvalidClient,
    create_client,
    find_client_by_name,
    list_clients,
    revoke_client,
    signing_secret,
)

NO_SIGNING_KEYS = "not configured (set REQUEST_SIGNING_KEYS to sign requests; the API key works without it)"


def signing_lines(settings: ClientsSettings, client: ApiClient) -> list[str]:
    """The key id and the client's signing secret under the current (first) ``REQUEST_SIGNING_KEYS`` key."""
    keys = signing_key_entries(settings.request_signing_keys)
    if not keys:
        return [f"signing secret: {NO_SIGNING_KEYS}"]
    key_id, key = keys[0]
    return [f"signing key id: {key_id}", f"signing secret: {signing_secret(key, client.id)}"]


async def run_clients_command(settings: DatabaseSettings, args: argparse.Namespace) -> str:
    """Run one ``clients`` action; returns what to print. Raises ValueError with a message for the user."""
    async with command_transaction(settings) as conn:
        if args.client_command == "create":
            assert isinstance(settings, ClientsSettings)
            try:
                client, key = await create_client(conn, args.name, args.scopes or ["leads:write"])
            except InvalidClient as error:
                raise ValueError(str(error)) from error
            return "\n".join(
                [
                    f"client:         {client.name}",
                    f"id:             {client.id}",
                    f"scopes:         {' '.join(sorted(client.scopes))}",
                    f"api key:        {key}",
                    *signing_lines(settings, client),
                    "Store them now: they are not shown again (only the key's hash is kept).",
                ]
            )
        if args.client_command == "signing-secret":
            assert isinstance(settings, ClientsSettings)
            found = await find_client_by_name(conn, args.name)
            if found is None:
                raise ValueError(f"no active client named {args.name!r}")
            return "\n".join(
                [f"client:         {found.name}", f"id:             {found.id}", *signing_lines(settings, found)]
            )
        if args.client_command == "list":
            clients = await list_clients(conn)
            lines = [f"{'NAME':<24} {'ID':<36} {'SCOPES':<32} {'CREATED':<20} STATUS"]
            for c in clients:
                status = f"revoked {c.revoked_at:%Y-%m-%d %H:%M}" if c.revoked_at else "active"
                scopes = ",".join(sorted(c.scopes))
                lines.append(f"{c.name:<24} {c.id!s:<36} {scopes:<32} {c.created_at:%Y-%m-%d %H:%M:%S}  {status}")
            return "\n".join(lines) if clients else "no clients"
        if not await revoke_client(conn, args.name):
            raise ValueError(f"no client named {args.name!r}")
        return f"client {args.name} revoked"
