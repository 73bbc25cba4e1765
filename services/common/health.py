"""A tiny HTTP server for worker processes (scheduler, dispatcher): ``/healthz`` (alive), ``/readyz`` (ready)
and ``/metrics``, so Kubernetes probes and Prometheus see workers the way they see the intake."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

READ_TIMEOUT_S = 5.0


async def serve_health(port: int, is_ready: Callable[[], bool], stop: asyncio.Event, host: str = "0.0.0.0") -> None:  # noqa: S104
    """Serve until ``stop`` is set; ``/readyz`` answers 200 while ``is_ready()`` holds, else 503."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT_S)
            parts = request_line.decode("latin-1").split()
            path = parts[1] if len(parts) > 1 else "/"
            if path == "/metrics":
                status, body, kind = 200, generate_latest(), CONTENT_TYPE_LATEST
            elif path == "/healthz":
                status, body, kind = 200, b'{"status":"ok"}', "application/json"
            elif path == "/readyz":
                ready = is_ready()
                status = 200 if ready else 503
                body = b'{"status":"ok"}' if ready else b'{"status":"starting"}'
                kind = "application/json"
            else:
                status, body, kind = 404, b'{"status":"not found"}', "application/json"
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, host, port)
    async with server:
        await stop.wait()
