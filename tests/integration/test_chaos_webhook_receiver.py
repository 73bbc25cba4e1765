"""The chaos harness's webhook receiver records what a customer's endpoint would accept: whole requests.
A sender killed mid-body (the fault ``kill9:webhooks``) leaves a truncated request that must not count as
a delivery with a bad signature."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from bench.chaos_webhooks import WebhookSink


@pytest.fixture
def sink() -> Iterator[WebhookSink]:
    receiver = WebhookSink()
    receiver.start()
    yield receiver
    receiver.stop()


def test_a_request_cut_off_mid_body_is_not_recorded_and_a_whole_one_is(sink: WebhookSink) -> None:
    address = urlsplit(sink.url)
    with socket.create_connection((address.hostname, address.port), timeout=5) as cut_off:
        cut_off.sendall(
            b"POST /hooks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n"
            b"webhook-id: msg_cut\r\n\r\n" + b'{"type": "email.sent", "da'
        )
    whole = urllib.request.Request(
        sink.url, data=b'{"type": "lead.accepted"}', headers={"webhook-id": "msg_whole"}, method="POST"
    )
    with urllib.request.urlopen(whole, timeout=5) as answer:
        assert answer.status == 204
    deadline = time.monotonic() + 5
    while not sink.received and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # the cut-off request's thread has had its chance to record it
    assert [(headers["webhook-id"], body) for headers, body in sink.received] == [
        ("msg_whole", b'{"type": "lead.accepted"}')
    ]
