"""``healingwork dlq list|replay``: the edge over :mod:`services.dispatcher.dead_letters`."""

from __future__ import annotations

import argparse
import uuid

import msgspec

from services.common.config import DeadLetterSettings
from services.common.db import command_transaction
from services.dispatcher.dead_letters import list_dead_letters, replay_dead_letters


def parse_message_ids(values: list[str]) -> list[uuid.UUID]:
    """The ids as UUIDs; a ValueError naming the first that is not one."""
    ids = []
    for value in values:
        try:
            ids.append(uuid.UUID(value))
        except ValueError:
            raise ValueError(f"--id {value!r} is not a message id (a UUID)") from None
    return ids


async def run_dlq_command(settings: DeadLetterSettings, args: argparse.Namespace) -> str:
    """Run ``list`` or ``replay``; returns what to print. ValueError for anything the user can fix."""
    ids = parse_message_ids(args.ids) if getattr(args, "ids", None) else None
    async with command_transaction(settings) as conn:
        if args.sequence_command == "list":
            if args.limit < 1:
                raise ValueError("--limit must be at least 1")
            letters = await list_dead_letters(conn, limit=args.limit)
            if args.json:
                return "".join(msgspec.json.encode(letter).decode() + "\n" for letter in letters)
            if not letters:
                return "no dead letters\n"
            lines = [f"{'MESSAGE':36}  {'DIED AT (UTC)':19}  {'ATTEMPTS':8}  SEQUENCE/STEP  REASON"]
            for letter in letters:
                lines.append(
                    f"{letter.message_id!s:36}  {letter.died_at:%Y-%m-%d %H:%M:%S}  {letter.attempts:8}  "
                    f"{letter.sequence}/{letter.step}  {' '.join(letter.reason.split())[:120]}"
                )
            return "\n".join(lines) + "\n"
        replayed = await replay_dead_letters(
            conn, ids, dispatch_topic=settings.topic_email_dispatch, events_topic=settings.topic_email_events
        )
        missing = sorted(set(ids or []) - set(replayed), key=str)
        if missing:
            # All or nothing: naming an id that is not dead is a mistake worth stopping for.
            raise ValueError(f"not dead letters (nothing replayed): {', '.join(map(str, missing))}")
        return f"replayed {len(replayed)} message(s)\n"
