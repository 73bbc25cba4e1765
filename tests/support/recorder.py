"""A real HTTP server that records every request it receives (a Pushgateway or Sentry stand-in)."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        body = self.body
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        return body.decode(errors="replace")


@dataclass
class Recorder:
    url: str
    requests: list[RecordedRequest] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)
    status: int = 200


@contextmanager
def recording_http_server() -> Iterator[Recorder]:
    """Serve on 127.0.0.1 (a free port) for the block; every request is answered with ``status``."""
    recorder: Recorder

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            recorder.requests.append(RecordedRequest(self.command, self.path, headers, body))
            recorder.arrived.set()
            self.send_response(recorder.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = do_PUT = do_DELETE = _record

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    recorder = Recorder(url=f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield recorder
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
