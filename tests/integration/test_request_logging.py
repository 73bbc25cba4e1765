"""What the services' logging leaves out: httpx's line per request, which names the URL (an outgoing
webhook's endpoint URL may carry a token)."""

from __future__ import annotations

import http.server
import logging
import threading
from collections.abc import Iterator

import httpx
import pytest

from services.common.logs import configure_logging


class _NoContent(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NoContent)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in ("httpx", "httpcore")}
    yield
    root.handlers[:], root.level = handlers, level
    for name, saved in levels.items():
        logging.getLogger(name).setLevel(saved)


@pytest.mark.usefixtures("restore_logging")
def test_an_outgoing_request_url_never_reaches_the_logs(receiver: str, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("webhooks", "INFO")
    with httpx.Client() as client:
        assert client.post(f"{receiver}/hooks/T0/B0/secret-token-123", content=b"{}").status_code == 204
    logging.getLogger("services.test").info("a line of our own")
    written = capsys.readouterr().err
    assert "a line of our own" in written  # the handler did write to the captured stream
    assert "secret-token-123" not in written
