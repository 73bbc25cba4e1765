"""SMTP PIPELINING (RFC 2920) against real servers: Postfix's smtp-sink (which offers PIPELINING and can
refuse or drop any command) and the aiosmtpd sink (which stores what it receives, and does not offer it).

A refusal anywhere in the pipelined group (MAIL, RCPT, DATA, the final reply) is classified exactly as
when the commands go one at a time; a server that does not offer PIPELINING gets one command at a time;
the connection stays usable after a refusal, and a session left with replies outstanding is closed.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import aiosmtplib
import pytest
import uvloop

from bench.postfix_sink import ensure_smtp_sink, start_smtp_sink
from devstack.embedded import find_free_port
from devstack.mailsink import MailSink
from services.dispatcher.smtp import SendError, SmtpConnection, SmtpTarget, classify, mail_transaction
from services.dispatcher.smtp_pipelining import pipelined_transaction
from tests.support.smtp_client import session

pytestmark = pytest.mark.integration

BODY = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: t\r\n\r\nfirst line\r\n.a line starting with a dot\r\n"


@contextmanager
def postfix_sink(*options: str) -> Iterator[int]:
    """A running Postfix smtp-sink with ``options``; yields its port."""
    binary = ensure_smtp_sink()
    assert binary is not None, "Postfix smtp-sink could not be unpacked (apt-get download postfix)"
    port = find_free_port()
    process = start_smtp_sink(binary, port, *options)
    try:
        for _ in range(100):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert process.poll() is None, f"smtp-sink exited with {process.returncode}"
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


async def refusal_of(transaction: Callable[[], object]) -> SendError:
    with pytest.raises(aiosmtplib.SMTPException) as raised:
        await transaction()  # type: ignore[misc]
    return classify(raised.value)


async def test_postfix_sink_offers_pipelining_and_a_transaction_is_accepted_pipelined() -> None:
    with postfix_sink() as port:
        async with session(port) as client:
            assert client.supports_extension("pipelining")
            for _ in range(3):  # the session stays in step with its replies, transaction after transaction
                reply = await mail_transaction(client, "a@example.com", "b@example.com", BODY)
                assert reply.startswith("2.0.0 Ok")
            assert (await client.noop()).code == 250  # aiosmtplib reads replies again afterwards


@pytest.mark.parametrize(
    ("options", "code", "permanent"),
    [
        (("-r", "MAIL"), 450, False),
        (("-f", "MAIL"), 500, True),
        (("-r", "RCPT"), 450, False),
        (("-f", "RCPT"), 500, True),
        (("-r", "DATA"), 450, False),
        (("-f", "DATA"), 500, True),
        (("-r", "."), 450, False),
        (("-f", "."), 500, True),
    ],
)
async def test_a_refusal_mid_pipeline_is_classified_as_when_the_commands_go_one_at_a_time(
    options: tuple[str, str], code: int, permanent: bool
) -> None:
    # -r and -f make smtp-sink stop offering PIPELINING, so the pipelined group is sent regardless:
    # smtp-sink reads commands in order whether or not it offered it.
    with postfix_sink(*options) as port:
        async with session(port) as client:
            one_at_a_time = await refusal_of(lambda: mail_transaction(client, "a@example.com", "b@example.com", BODY))
            pipelined = await refusal_of(
                lambda: pipelined_transaction(client, b"FROM:<a@example.com>", b"TO:<b@example.com>", BODY)
            )
            assert (pipelined.code, pipelined.permanent) == (one_at_a_time.code, one_at_a_time.permanent)
            assert (pipelined.code, pipelined.permanent) == (code, permanent)
            assert (await client.noop()).code == 250  # still in step: the refusal consumed every reply


async def test_a_connection_dropped_mid_pipeline_is_a_transient_failure_and_the_next_send_reconnects() -> None:
    with postfix_sink("-q", "DATA") as port:
        connection = SmtpConnection(SmtpTarget.from_url(f"smtp://127.0.0.1:{port}?starttls=never"), 5.0)
        try:
            for _ in range(2):
                with pytest.raises(SendError) as raised:
                    await connection.send("a@example.com", "b@example.com", BODY)
                assert raised.value.permanent is False
                assert raised.value.code is None
        finally:
            await connection.close()


async def test_a_server_without_pipelining_gets_one_command_at_a_time() -> None:
    with postfix_sink("-p") as port:
        async with session(port) as client:
            assert not client.supports_extension("pipelining")
            reply = await mail_transaction(client, "a@example.com", "b@example.com", BODY)
            assert reply.startswith("2.0.0 Ok")


async def test_the_aiosmtpd_sink_does_not_offer_pipelining_and_still_receives_every_message(
    mail_sink: MailSink,
) -> None:
    async with session(mail_sink.port) as client:
        assert not client.supports_extension("pipelining")
        await mail_transaction(client, "a@example.com", "b@example.com", BODY)
    (message,) = await mail_sink.wait_for_messages_async(1)
    assert ".a line starting with a dot" in message.get_content()


async def test_the_aiosmtpd_sink_offers_pipelining_when_asked_and_the_dispatcher_pipelines_to_it(
    tmp_path: Path,
) -> None:
    with MailSink(tmp_path / "mail", pipelining=True) as sink:
        sink.reject_recipients = {"bounce@example.com": (550, "5.1.1 no such user")}
        async with session(sink.port) as client:
            assert client.supports_extension("pipelining")
            assert client.supports_extension("8bitmime")
            assert client.supports_extension("smtputf8")
            await mail_transaction(client, "a@example.com", "b@example.com", BODY)
            refusal = await refusal_of(lambda: mail_transaction(client, "a@example.com", "bounce@example.com", BODY))
            assert (refusal.code, refusal.permanent) == (550, True)
            await client.rset()
            await mail_transaction(client, "a@example.com", "c@example.com", BODY)
        messages = await sink.wait_for_messages_async(2)
    assert [rcpts for _, rcpts in sink.envelopes] == [["b@example.com"], ["c@example.com"]]
    assert all(m.get_content().splitlines() == ["first line", ".a line starting with a dot"] for m in messages)


async def test_a_pipelined_message_arrives_byte_for_byte_with_its_dot_lines_unstuffed(mail_sink: MailSink) -> None:
    async with session(mail_sink.port) as client:
        await pipelined_transaction(client, b"FROM:<a@example.com>", b"TO:<b@example.com>", BODY)
        await pipelined_transaction(client, b"FROM:<a@example.com>", b"TO:<c@example.com>", BODY)
    messages = await mail_sink.wait_for_messages_async(2)
    assert sorted(r for _, rcpts in mail_sink.envelopes for r in rcpts) == ["b@example.com", "c@example.com"]
    assert all(m.get_content().splitlines() == ["first line", ".a line starting with a dot"] for m in messages)


async def test_a_recipient_refused_mid_pipeline_leaves_the_session_usable_for_the_next_message(
    mail_sink: MailSink,
) -> None:
    mail_sink.reject_recipients = {"bounce@example.com": (550, "5.1.1 no such user")}
    async with session(mail_sink.port) as client:
        refusal = await refusal_of(
            lambda: pipelined_transaction(client, b"FROM:<a@example.com>", b"TO:<bounce@example.com>", BODY)
        )
        assert (refusal.code, refusal.permanent) == (550, True)
        await client.rset()
        await pipelined_transaction(client, b"FROM:<a@example.com>", b"TO:<b@example.com>", BODY)
    await mail_sink.wait_for_messages_async(1)
    assert [rcpts for _, rcpts in mail_sink.envelopes] == [["b@example.com"]]


async def test_a_temporary_failure_of_the_final_reply_mid_pipeline_is_transient(mail_sink: MailSink) -> None:
    mail_sink.fail_with = (451, "4.3.0 try again later")
    async with session(mail_sink.port) as client:
        refusal = await refusal_of(
            lambda: pipelined_transaction(client, b"FROM:<a@example.com>", b"TO:<b@example.com>", BODY)
        )
    assert (refusal.code, refusal.permanent) == (451, False)


async def test_a_server_silent_past_the_reply_timeout_times_out_and_the_session_is_closed() -> None:
    # smtp-sink -w: it waits that many seconds before answering DATA, the third reply of the group.
    with postfix_sink("-w", "3") as port:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=0.5)
        await client.connect()
        await client.ehlo()
        try:
            # Without the reply timeout the transaction would succeed once smtp-sink answers.
            with pytest.raises(aiosmtplib.SMTPReadTimeoutError):
                await pipelined_transaction(client, b"FROM:<a@example.com>", b"TO:<b@example.com>", BODY)
            assert not client.is_connected  # replies were outstanding: the session cannot be reused
        finally:
            client.close()


def test_pipelining_works_on_uvloop_as_the_services_run_it() -> None:
    # The services run on uvloop (services.common.shutdown.run_service), whose transports bind their
    # protocol's methods when it is set: the replies' reader must be installed with set_protocol.
    async def transactions() -> tuple[list[str], int, int]:
        with postfix_sink() as port:
            async with session(port) as client:
                replies = [
                    await pipelined_transaction(client, b"FROM:<a@example.com>", b"TO:<b@example.com>", BODY)
                    for _ in range(3)
                ]
                noop = (await client.noop()).code
        with postfix_sink("-f", "RCPT") as port:
            async with session(port) as client:
                refusal = await refusal_of(
                    lambda: pipelined_transaction(client, b"FROM:<a@example.com>", b"TO:<b@example.com>", BODY)
                )
        return replies, noop, refusal.code

    replies, noop, refused = uvloop.run(transactions())
    assert all(reply.startswith("2.0.0 Ok") for reply in replies)
    assert noop == 250
    assert refused == 500
