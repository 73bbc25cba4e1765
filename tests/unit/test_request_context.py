"""Log lines written while serving a request carry its id; the client IP is believed only from trusted proxies."""

from __future__ import annotations

import ipaddress
import json
import logging

import pytest
from litestar.connection import ASGIConnection

from services.common.logs import REQUEST_ID, JsonFormatter
from services.intake.auth import client_ip


def test_log_lines_carry_the_current_request_id() -> None:
    formatter = JsonFormatter("intake")
    record = logging.makeLogRecord({"msg": "accepted", "levelno": logging.INFO, "levelname": "INFO"})

    token = REQUEST_ID.set("req-1")
    try:
        during = json.loads(formatter.format(record))
    finally:
        REQUEST_ID.reset(token)
    after = json.loads(formatter.format(record))

    assert during["request_id"] == "req-1"
    assert "request_id" not in after


def connection(peer: str, forwarded: str | None) -> ASGIConnection:  # type: ignore[type-arg]
    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded is not None else []
    return ASGIConnection({"type": "http", "client": (peer, 5000), "headers": headers})  # type: ignore[arg-type]


TRUSTED = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128")]


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("203.0.113.9", None, "203.0.113.9"),
        ("203.0.113.9", "198.51.100.1", "203.0.113.9"),  # untrusted peer: its header is ignored
        ("10.0.0.5", "198.51.100.1", "198.51.100.1"),
        ("10.0.0.5", "6.6.6.6, 198.51.100.1, 10.0.0.7", "198.51.100.1"),  # left-most was written by the client
        ("10.0.0.5", "10.1.1.1, 10.0.0.7", "10.0.0.5"),  # only proxies: the peer
        ("10.0.0.5", "garbage", "10.0.0.5"),
        ("::1", "2001:db8::1", "2001:db8::1"),
    ],
)
def test_client_ip_walks_x_forwarded_for_through_trusted_proxies_only(
    peer: str, forwarded: str | None, expected: str
) -> None:
    assert client_ip(connection(peer, forwarded), TRUSTED) == expected
