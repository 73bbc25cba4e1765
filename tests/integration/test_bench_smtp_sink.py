"""The benchmarks' SMTP sink (``bench.smtp_sink``; the chaos harness's, storing, is ``bench.chaos_sink``):
real SMTP clients (aiosmtplib one command at a time, the dispatcher's pipelined transaction) against it,
for what the chaos audit relies on: the bytes as sent, 550 at RCPT for rejected addresses, a DATA
failure period, pipelined groups."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiosmtplib
import pytest

from bench.smtp_sink import SinkRules, read_stored, serve
from devstack.embedded import find_free_port
from services.dispatcher.smtp_pipelining import pipelined_transaction
from tests.support.smtp_client import session

BODY = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: t\r\n\r\nfirst\r\n.dot line\r\n..two dots\r\n.\r\nend\r\n"


@asynccontextmanager
async def sink(rules: SinkRules) -> AsyncIterator[int]:
    port = find_free_port()
    started = asyncio.Event()
    server = asyncio.create_task(serve(port, rules, started))
    await asyncio.wait_for(started.wait(), 5)
    try:
        yield port
    finally:
        server.cancel()


def stored(path: Path) -> list[bytes]:
    return [data for _, data in read_stored(path)]


async def test_messages_are_stored_as_sent_one_command_at_a_time_and_pipelined(tmp_path: Path) -> None:
    async with sink(SinkRules(store_path=tmp_path / "mail.log")) as port, session(port) as client:
        assert client.supports_extension("pipelining")
        await client.sendmail("a@example.com", ["b@example.com"], BODY)  # dot-stuffed by aiosmtplib
        await pipelined_transaction(client, b"FROM:<a@example.com>", b"TO:<c@example.com>", BODY)
        await pipelined_transaction(client, b"FROM:<a@example.com>", b"TO:<c@example.com>", b"x\r\n")
        assert (await client.noop()).code == 250  # still in step with its replies
    assert stored(tmp_path / "mail.log") == [BODY, BODY, b"x\r\n"]


async def test_a_rejected_address_is_refused_at_rcpt_with_550_and_nothing_is_stored(tmp_path: Path) -> None:
    rules = SinkRules(store_path=tmp_path / "mail.log", rejected={"bounce@example.com"})
    async with sink(rules) as port, session(port) as client:
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
            await client.sendmail("a@example.com", ["Bounce@Example.com"], BODY)
        assert refused.value.recipients[0].code == 550
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as pipelined:
            await pipelined_transaction(client, b"FROM:<a@example.com>", b"TO:<bounce@example.com>", BODY)
        assert pipelined.value.recipients[0].code == 550
        await client.sendmail("a@example.com", ["ok@example.com"], b"kept\r\n")
    assert stored(tmp_path / "mail.log") == [b"kept\r\n"]


async def test_while_failing_every_data_gets_the_reply_and_nothing_is_stored(tmp_path: Path) -> None:
    rules = SinkRules(store_path=tmp_path / "mail.log")
    async with sink(rules) as port, session(port) as client:
        rules.fail_with = (451, "4.3.0 try later")
        with pytest.raises(aiosmtplib.SMTPDataError) as failed:
            await client.sendmail("a@example.com", ["b@example.com"], BODY)
        assert failed.value.code == 451
        rules.fail_with = None
        await client.sendmail("a@example.com", ["b@example.com"], b"after\r\n")
    assert stored(tmp_path / "mail.log") == [b"after\r\n"]


def test_a_pipelined_group_is_answered_in_order_and_the_content_can_carry_the_next_command() -> None:
    async def exchange() -> list[bytes]:
        async with sink(SinkRules()) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await reader.readline()  # 220
            writer.write(b"EHLO x\r\n")
            while not (await reader.readline()).startswith(b"250 "):
                pass
            writer.write(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
            first = b""
            while first.count(b"\r\n") < 3:
                first += await reader.read(4096)
            writer.write(b"body\r\n.\r\nQUIT\r\n")
            rest = b""
            while not rest.endswith(b"221 2.0.0 bye\r\n"):
                chunk = await reader.read(4096)
                assert chunk, rest
                rest += chunk
            writer.close()
            return [first, rest]

    first, rest = asyncio.run(exchange())
    assert [line[:4] for line in first.split(b"\r\n")[:3]] == [b"250 ", b"250 ", b"354 "]
    assert rest.startswith(b"250 2.0.0 OK queued as ")


def test_the_chaos_sink_process_stores_refuses_and_fails_on_command(tmp_path: Path) -> None:
    rejected = tmp_path / "rejected.json"
    rejected.write_text(json.dumps(["bounce@example.com"]))
    port = find_free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.chaos_sink", str(tmp_path / "mail.log"), str(port), str(rejected)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        assert process.stdout.readline().strip() == "ready"

        async def send(recipient: str) -> int:
            async with session(port) as client:
                try:
                    await client.sendmail("a@example.com", [recipient], BODY)
                except aiosmtplib.SMTPRecipientsRefused as refused:
                    return refused.recipients[0].code
                except aiosmtplib.SMTPResponseException as error:
                    return error.code
                return 250

        assert asyncio.run(send("b@example.com")) == 250
        assert asyncio.run(send("bounce@example.com")) == 550
        process.stdin.write("fail 451 4.3.0 chaos\n")
        process.stdin.flush()
        assert process.stdout.readline().strip() == "done"
        assert asyncio.run(send("b@example.com")) == 451
        process.stdin.write("ok\n")
        process.stdin.flush()
        assert process.stdout.readline().strip() == "done"
        assert asyncio.run(send("c@example.com")) == 250
        process.stdin.close()
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert stored(tmp_path / "mail.log") == [BODY, BODY]
