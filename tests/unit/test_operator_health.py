"""The operator's own health: what /readyz and /healthz answer from what it knows (OperatorState), over
the shared HealthServer."""

from __future__ import annotations

import asyncio

from operators.sequence.handlers import OperatorState
from services.common.health import HealthServer


def test_the_operator_is_ready_only_with_the_crd_served_and_the_database_reachable() -> None:
    assert OperatorState().problems() != []  # nothing checked yet: not ready
    assert OperatorState(crd_served=True, database_reachable=True).problems() == []
    assert OperatorState(crd_served=False, database_reachable=True).problems() == [
        "the API server does not serve sequences.healingwork.io/v1alpha1 (is the CRD installed?)"
    ]
    assert OperatorState(crd_served=True, database_reachable=False).problems() == ["the database is unreachable"]


def test_the_operator_is_stuck_only_when_the_crd_appeared_after_start_up() -> None:
    assert OperatorState(crd_served=True, crd_served_at_start=False).stuck()
    assert not OperatorState(crd_served=True, crd_served_at_start=True).stuck()
    assert not OperatorState(crd_served=False, crd_served_at_start=False).stuck()  # not ready, but a restart won't help


async def get(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer.split(b"\r\n", 1)[0]


async def test_healthz_fails_once_the_process_says_it_is_stuck() -> None:
    health = await HealthServer.bind(0, host="127.0.0.1")
    port = health._server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    serving = asyncio.create_task(health.serve(stop))
    state = OperatorState(crd_served=False, crd_served_at_start=False, database_reachable=True)
    health.is_ready = lambda: not state.problems()
    health.is_alive = lambda: not state.stuck()
    try:
        assert await get(port, "/healthz") == b"HTTP/1.1 200 OK"
        assert await get(port, "/readyz") == b"HTTP/1.1 503 Service Unavailable"

        state.crd_served = True  # installed after start-up: kopf will never watch it

        assert await get(port, "/healthz") == b"HTTP/1.1 503 Service Unavailable"
        assert await get(port, "/readyz") == b"HTTP/1.1 200 OK"
    finally:
        stop.set()
        await serving
