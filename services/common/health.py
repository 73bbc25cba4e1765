"""A tiny HTTP server on a port of its own: ``/healthz`` (alive), ``/readyz`` (ready) and ``/metrics``.

The workers (scheduler, dispatcher) have no other port; the intake serves it beside its public API port,
so ``/metrics`` is never reachable where the API is (ingress, public NetworkPolicy rule)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

READ_TIMEOUT_S = 5.0


class CannotListen(OSError):
    """The health port cannot be bound (in use, or not permitted)."""


class HealthServer:
    """``/healthz``, ``/readyz`` and ``/metrics`` on a port bound at start-up, before anything else
    starts (a port that is taken is a start-up failure of one line); ``/readyz`` answers 503 until
    :attr:`is_ready` is set to a check that holds."""

    def __init__(self, server: asyncio.Server) -> None:
        self._server = server
        self.is_ready: Callable[[], bool] = lambda: False
        # /healthz answers 503 once this is false: a process stuck in a way only a restart repairs.
        self.is_alive: Callable[[], bool] = lambda: True

    @classmethod
    async def bind(cls, port: int, host: str = "0.0.0.0", *, sock: socket.socket | None = None) -> HealthServer:  # noqa: S104
        """Listen on ``host:port`` (or on ``sock``, bound already) or raise :class:`CannotListen`."""
        health: HealthServer | None = None

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            assert health is not None
            await _answer(reader, writer, health.is_ready, health.is_alive)

        try:
            server = await (
                asyncio.start_server(handle, sock=sock)
                if sock is not None
                else asyncio.start_server(handle, host, port)
            )
        except OSError as error:
            where = f"{host}:{port} for /healthz, /readyz and /metrics"
            reason = os.strerror(error.errno) if error.errno else str(error)
            raise CannotListen(f"cannot listen on {where}: {reason}") from error
        health = cls(server)
        return health

    async def serve(self, stop: asyncio.Event) -> None:
        """Answer until ``stop`` is set, then close (never waiting for a client: a probe still
        connected gets its answer or its reset)."""
        try:
            await stop.wait()
        finally:
            self._server.close()


async def _answer(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    is_ready: Callable[[], bool],
    is_alive: Callable[[], bool] = lambda: True,
) -> None:
    try:
        request_line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT_S)
        parts = request_line.decode("latin-1").split()
        path = parts[1] if len(parts) > 1 else "/"
        if path == "/metrics":
            status, body, kind = 200, generate_latest(), CONTENT_TYPE_LATEST
        elif path == "/healthz":
            alive = is_alive()
            status = 200 if alive else 503
            body = b'{"status":"ok"}' if alive else b'{"status":"stuck"}'
            kind = "application/json"
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
