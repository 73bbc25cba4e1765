"""schemathesis against the OpenAPI that intake serves: generated requests (valid and invalid) to every
operation find no 5xx, no undocumented status code or content type, no response that breaks the schema.

The intake runs as ``healingwork intake`` in its own process, against the real PostgreSQL and broker.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from psycopg import sql
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services.common.migrate import apply_migrations
from tests.support.intake import ALL_SCOPES, bearer, create_api_client
from tests.support.platform import free_port, topics_for
from tests.support.services import unique_topic_prefix, with_database

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
# Per operation and mode (valid and invalid requests): about 3,000 requests in all over the 19 operations
# (100 valid ones each, 100 invalid ones for each operation that has something to make invalid). 300 took
# about five minutes per mode on a quiet machine, a third of the whole suite's budget; derandomized, the
# cases are the same every run, so the count buys breadth once, not on every run.
EXAMPLES_PER_OPERATION = 100


@pytest.fixture(scope="module")
def served_intake(postgres_url: str, kafka_bootstrap_servers: str) -> Iterator[tuple[str, dict[str, str]]]:
    """``healingwork intake`` on a free port with a migrated database; yields its URL and auth headers."""
    name = f"test_{uuid.uuid4().hex}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    database_url = with_database(postgres_url, name)
    apply_migrations(database_url)
    _, key = asyncio.run(create_api_client(database_url, "schemathesis", ALL_SCOPES))
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap_servers,
        "KAFKA_PARTITIONS": "1",
        "HMAC_SECRET": secrets.token_hex(32),
        "SUPPRESSION_HASH_KEY": secrets.token_hex(32),
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "RATE_LIMIT_PER_MINUTE": "1000000",
        "FORM_RATE_LIMIT_PER_MINUTE": "1000000",
        # The chart turns /schema off; the test reads the document the intake serves, so it turns it on.
        "OPENAPI_ENABLED": "true",
        "HEALTH_PORT": "0",
        "LOG_LEVEL": "WARNING",
        **{k.upper(): v for k, v in topics_for(unique_topic_prefix()).items()},
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "services", "intake"], env=env, cwd=ROOT, stdin=subprocess.DEVNULL
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, "healingwork intake exited"
            try:
                with urllib.request.urlopen(f"{base_url}/readyz", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "healingwork intake did not become ready"
            time.sleep(0.1)
        yield base_url, bearer(key)
    finally:
        process.terminate()
        process.wait(timeout=30)
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def run_generated_cases(operation: Any, mode: GenerationMode, auth: dict[str, str]) -> Counter[int]:
    """Send the operation's generated cases; returns the statuses seen. Hypothesis raises (with the
    smallest example) on a failed check."""
    statuses: Counter[int] = Counter()

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        # Generated headers come first, so a generated Authorization cannot replace the real one.
        response = case.call_and_validate(headers={**(case.headers or {}), **auth}, checks=CHECKS, timeout=30)
        statuses[response.status_code] += 1

    check()
    return statuses


# 19 operations × 100 examples per mode take under two minutes on a quiet machine; more on a loaded one.
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_generated_requests_get_documented_answers(
    served_intake: tuple[str, dict[str, str]], mode: GenerationMode
) -> None:
    base_url, auth = served_intake
    schema = schemathesis.openapi.from_url(f"{base_url}/schema/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    calls: dict[str, Counter[int]] = {}

    for operation in operations:
        inputs = [operation.path_parameters, operation.query, operation.headers, operation.body]
        if mode is GenerationMode.NEGATIVE and not any(len(i) for i in inputs):
            continue  # nothing to make invalid (/healthz, /readyz)
        try:
            calls[operation.label] = run_generated_cases(operation, mode, auth)
        except Unsatisfiable:
            # Every input of the operation accepts any value (POST /u/{token}: any string is a token to
            # check), so there is no schema-invalid request to generate; positive mode covers it.
            assert mode is GenerationMode.NEGATIVE, operation.label

    labels = {operation.label for operation in operations}
    assert {"POST /v1/leads", "GET /v1/leads/{lead_id}", "DELETE /v1/leads/{lead_id}", "DELETE /v1/leads"} <= labels
    assert sum(sum(statuses.values()) for statuses in calls.values()) >= 1000, calls
    # Every documented operation, the tracking and unsubscribe links included.
    assert {"GET /t/o/{token}", "GET /t/c/{token}", "GET /u/{token}", "POST /u/{token}"} <= labels
    assert {"GET /confirm/{token}", "POST /confirm/{token}"} <= labels
    # The outgoing webhooks' admin API. Registering sends nothing (no delivery service runs here, and
    # registration never resolves or calls the URL), so generated URLs make no outgoing requests.
    assert {
        "POST /v1/webhook-endpoints",
        "GET /v1/webhook-endpoints",
        "DELETE /v1/webhook-endpoints/{endpoint_id}",
        "PATCH /v1/webhook-endpoints/{endpoint_id}",
        "POST /v1/webhook-endpoints/{endpoint_id}/rotate-secret",
        "GET /v1/webhook-endpoints/{endpoint_id}/deliveries",
        "POST /v1/webhook-endpoints/{endpoint_id}/deliveries/{delivery_id}/retry",
    } <= labels
    if mode is GenerationMode.POSITIVE:
        # Schema-valid leads are mostly accepted (some fail rules the schema cannot express, such as a
        # real phone number): the generated requests exercise the whole path, not only validation.
        assert calls["POST /v1/leads"][202] > 0, calls
    else:
        assert set(calls["POST /v1/leads"]) <= {400, 413, 415, 422}, calls
