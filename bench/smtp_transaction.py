"""CPU per SMTP transaction in one process: aiosmtplib's ``sendmail`` against the dispatcher's
``mail_transaction`` (MAIL, RCPT, DATA on a session past EHLO), interleaved, to the same sink.

``uv run python -m bench.smtp_transaction [--messages 8000] [--connections 16] [--rounds 4]``

CPU time (``time.process_time``) of the sending process per transaction: unlike a rate, it changes
little with what else a shared machine is doing. Postfix's ``smtp-sink`` (``bench/postfix_sink.py``)
is the sink. The last line of output is one JSON object. ``--smoke`` (bench/smoke.py): the sizes of
``SMOKE`` for the options not given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

import aiosmtplib

from bench.postfix_sink import ensure_smtp_sink, start_smtp_sink
from bench.smoke import parse_arguments
from devstack.embedded import find_free_port
from services.dispatcher.smtp import mail_transaction

SENDER, RECIPIENT = "hello@example.com", "lead1234@example.com"
DATA = b"From: Bench <hello@example.com>\r\nTo: lead1234@example.com\r\nSubject: hi\r\n\r\n" + (
    b"Hello there, this is a line of the body.\r\n" * 40
)
SMOKE = {"messages": 200, "connections": 4, "rounds": 1}  # --smoke (bench/smoke.py)


async def cpu_per_transaction(port: int, kind: str, messages: int, connections: int) -> float:
    """Microseconds of this process's CPU per transaction, ``kind`` being sendmail or transaction."""
    clients = [aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False) for _ in range(connections)]
    for client in clients:
        await client.connect()
        await client.ehlo()

    async def pump(client: aiosmtplib.SMTP) -> None:
        for _ in range(messages // connections):
            if kind == "sendmail":
                await client.sendmail(SENDER, [RECIPIENT], DATA)
            else:
                await mail_transaction(client, SENDER, RECIPIENT, DATA)

    started = time.process_time()
    await asyncio.gather(*(pump(client) for client in clients))
    cpu = time.process_time() - started
    for client in clients:
        client.close()
    return cpu / (messages // connections * connections) * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=8000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4)
    args = parse_arguments(parser, SMOKE)
    binary = ensure_smtp_sink()
    if binary is None:
        raise SystemExit("Postfix's smtp-sink is not available here (see bench/postfix_sink.py)")
    port = find_free_port()
    sink = start_smtp_sink(binary, port)
    await asyncio.sleep(0.5)  # the sink binds its port
    results: dict[str, list[float]] = {"sendmail": [], "transaction": []}
    try:
        for _ in range(args.rounds):
            for kind in results:
                results[kind].append(round(await cpu_per_transaction(port, kind, args.messages, args.connections)))
    finally:
        sink.terminate()
        sink.wait(10)
    print(
        json.dumps(
            {
                "cpu_us_per_sendmail": results["sendmail"],
                "cpu_us_per_transaction": results["transaction"],
                "load_average_1m": round(os.getloadavg()[0], 2),
                "messages": args.messages,
                "connections": args.connections,
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
