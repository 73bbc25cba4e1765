"""``healingwork clients create|list|revoke``: the command side of API clients."""

from __future__ import annotations

import argparse

from services.common.config import ClientsSettings, DatabaseSettings
from services.common.db import command_transaction
from services.intake.clients import InvalidClient, create_client, list_clients, revoke_client, signing_secret


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
                    f"signing secret: {signing_secret(settings.hmac_secret, client.id)}",
                    "Store both now: they are not shown again (only their hash is kept).",
                ]
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
