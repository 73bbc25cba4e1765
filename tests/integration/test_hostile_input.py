"""Hostile input at the intake, end to end: whatever a caller sends gets a 4xx (never a 5xx) and a
rejected request stores nothing; what is accepted is stored verbatim as data, rendered as text (never as
a template) and never reaches an email header or the recipient list.

Covered elsewhere, not repeated here: generated requests across every endpoint
(test_intake_schema.py, schemathesis, 100 positive + 100 negative cases per operation); signature
tampering, expiry and replay (test_intake_auth.py test_bad_signatures_are_refused,
test_signed_request_is_accepted_once_and_a_replay_is_refused); token tampering, truncation and wrong
purpose (tests/unit/test_tokens.py; test_tracking.py
test_tampered_truncated_or_wrong_purpose_tokens_get_404_and_change_nothing);
webhook forgery and replay (test_webhooks.py); template sandboxing and size limits
(tests/unit/test_templates.py); header building (tests/unit/test_mime.py).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from devstack.mailsink import MailSink
from services.common.config import DispatcherSettings, SchedulerSettings
from services.common.tokens import Purpose, sign_token
from services.dispatcher.service import run_dispatcher
from services.scheduler.service import run_scheduler
from tests.support.intake import Intake, running_intake
from tests.support.platform import apply_examples, fetch_all, make_settings, running, smtp_url_of

pytestmark = pytest.mark.integration

INJECTION = "Ada\r\nBcc: eve@evil.example\r\n\r\nbody"
TEMPLATE = "{{ 7 * 7 }}{% for x in range(3) %}loop{% endfor %}"
SQL = "Robert'); DROP TABLE leads; -- %s %(x)s $1"
# RTL override, astral plane, a Cyrillic confusable, zero-width space, BOM, a combining accent.
UNICODE = "\u202eevil\u202c \U0001f600 \u0430dmin\u200b \ufeff e\u0301"


@pytest.fixture
async def intake(migrated_database_url: str, kafka_bootstrap_servers: str, topic_prefix: str) -> AsyncIterator[Intake]:
    async with running_intake(migrated_database_url, kafka_bootstrap_servers, topic_prefix) as served:
        yield served


async def stored(intake: Intake) -> dict[str, int]:
    [row] = await fetch_all(
        intake.settings.database_url,
        "SELECT (SELECT count(*) FROM leads) AS leads, (SELECT count(*) FROM outbox) AS outbox,"
        " (SELECT count(*) FROM suppressions) AS suppressions",
    )
    return {key: int(value) for key, value in row.items()}  # type: ignore[call-overload]


def lead(**fields: object) -> dict[str, object]:
    return {"email": "ada@example.com", "source": "website", "consent": {"marketing": True}, **fields}


@pytest.mark.parametrize(
    "body",
    [
        b'{"email": "ada@example.com", "source": "website", "consent": {"marketing": true}, "first_name": "\\ud800"}',
        b'{"email": "ada@example.com", "source": "website", "consent": {"marketing": true}, "last_name": "\\udfff x"}',
        b'{"email": "\\ud83d@example.com", "source": "website", "consent": {"marketing": true}}',
        b'{"email": "ada@example.com", "source": "website", "consent": {"marketing": true}, "first_name": "\xff\xfe"}',
        b'{"email": "ada@example.com", "source": "website", "consent": {"marketing": true}, "tags": ["\\ud800"]}',
        b'{"email": "ada@example.com", "source": "website", "consent": {"marketing": true},'
        b' "metadata": {"\\udc00": "x"}}',
        b"[" * 20000 + b"]" * 20000,
        b'{"email": "ada@example.com", "metadata": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}",
        b'{"email": "ada@example.com", "utm": ' + b"[" * 10000 + b"]" * 10000 + b"}",
        b'{"email": "ada@example.com", "email": "eve@example.com", "source": "website", "consent": {"marketing": 1}}',
        b'{"email": 1e999999, "source": "website", "consent": {"marketing": true}}',
        b'{"email": "ada@example.com", "source": "website", "consent": {"marketing": true}, "first_name": '
        + b'"'
        + b"\\u0041" * 8000
        + b'"}',
    ],
    ids=[
        "lone-high-surrogate",
        "lone-low-surrogate",
        "surrogate-in-email",
        "invalid-utf8",
        "surrogate-in-tag",
        "surrogate-in-metadata-key",
        "nested-arrays",
        "nested-objects",
        "nested-in-a-field",
        "duplicate-keys-bad-consent",
        "huge-number",
        "name-over-limit-after-unescaping",
    ],
)
async def test_malformed_or_hostile_bodies_get_a_4xx_problem_and_store_nothing(intake: Intake, body: bytes) -> None:
    before = await stored(intake)

    response = await intake.http.post("/v1/leads", content=body, headers={"Content-Type": "application/json"})

    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "Traceback" not in response.text
    assert await stored(intake) == before


async def test_an_oversized_body_sent_in_chunks_without_a_length_gets_413(intake: Intake) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"email": "ada@example.com", "source": "website", "consent": {"marketing": true}, "first_name": "'
        for _ in range(200):
            yield b"x" * 1024
        yield b'"}'

    response = await intake.http.post("/v1/leads", content=chunks(), headers={"Content-Type": "application/json"})

    assert response.status_code == 413, response.text
    assert await stored(intake) == {"leads": 0, "outbox": 0, "suppressions": 0}


@pytest.mark.parametrize(
    ("method", "path", "params"),
    [
        ("GET", "/v1/stats", {"sequence": "welcome' OR '1'='1", "from": "2026-01-01", "to": "2026-01-02"}),
        ("GET", "/v1/stats", {"sequence": "welcome", "from": "2026-01-01'; --", "to": "2026-01-02"}),
        ("DELETE", "/v1/leads", {"email": "' OR ''='"}),
        ("DELETE", "/v1/leads", {"email": "a@example.com' OR 1=1 --"}),
        ("GET", "/v1/leads/1' OR '1'='1", {}),
        ("DELETE", "/v1/leads/00000000-0000-0000-0000-000000000000' OR 1=1 --", {}),
    ],
)
async def test_sql_metacharacters_in_queries_and_paths_are_refused_and_change_nothing(
    intake: Intake, method: str, path: str, params: dict[str, str]
) -> None:
    assert (await intake.http.post("/v1/leads", json=lead())).status_code == 202
    before = await stored(intake)

    response = await intake.http.request(method, path, params=params)

    assert response.status_code in (400, 404, 422), response.text
    assert await stored(intake) == before


@pytest.mark.parametrize("purpose", [Purpose.OPEN, Purpose.CLICK, Purpose.UNSUBSCRIBE])
async def test_every_single_character_change_of_a_token_is_refused(intake: Intake, purpose: Purpose) -> None:
    import uuid

    url = "https://example.com/" if purpose is Purpose.CLICK else None
    token = sign_token(intake.settings.hmac_secret, purpose, uuid.uuid4(), url)
    route = {Purpose.OPEN: "/t/o/", Purpose.CLICK: "/t/c/", Purpose.UNSUBSCRIBE: "/u/"}[purpose]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    statuses = set()
    async with intake.anonymous() as client:
        for index, char in enumerate(token):
            if char == ".":
                continue
            flipped = alphabet[(alphabet.index(char) + 1) % len(alphabet)]
            variant = token[:index] + flipped + token[index + 1 :]
            response = await (client.post if purpose is Purpose.UNSUBSCRIBE else client.get)(route + variant)
            statuses.add(response.status_code)
    assert statuses == {404}
    assert await stored(intake) == {"leads": 0, "outbox": 0, "suppressions": 0}


async def test_a_hostile_lead_is_stored_verbatim_and_its_email_carries_it_only_as_text(
    migrated_database_url: str, kafka_bootstrap_servers: str, topic_prefix: str, mail_sink: MailSink
) -> None:
    await apply_examples(migrated_database_url)
    common = (migrated_database_url, kafka_bootstrap_servers, topic_prefix)
    scheduler = make_settings(SchedulerSettings, *common)
    dispatcher = make_settings(DispatcherSettings, *common, smtp_url=smtp_url_of(mail_sink))
    hostile = {
        "first_name": f"{INJECTION} {TEMPLATE}",
        "last_name": SQL,
        "tags": ["vip", "a\r\nb"],
        "utm": {"source": INJECTION, "campaign": TEMPLATE, "content": UNICODE},
        "metadata": {"note": SQL, "x": UNICODE},
        "consent": {"marketing": True, "text": f"{INJECTION} {TEMPLATE}"},
    }

    async with (
        running_intake(*common) as intake,
        running(run_scheduler, scheduler),
        running(run_dispatcher, dispatcher),
    ):
        response = await intake.http.post("/v1/leads", json=lead(**hostile))
        assert response.status_code == 202, response.text
        [email] = await mail_sink.wait_for_messages_async(1)

    [row] = await fetch_all(migrated_database_url, "SELECT first_name, last_name, metadata FROM leads")
    # Stored as data: SQL text kept to the byte, line breaks folded to spaces, nothing executed.
    assert row["first_name"] == f"Ada Bcc: eve@evil.example body {TEMPLATE}"
    assert row["last_name"] == SQL
    assert json.loads(json.dumps(row["metadata"]))["note"] == SQL
    assert (await fetch_all(migrated_database_url, "SELECT count(*) AS n FROM leads")) == [{"n": 1}]
    # Nothing reached a header or the envelope; the template syntax arrived as text, never evaluated.
    assert mail_sink.envelopes[0][1] == ["ada@example.com"]
    assert "Bcc" not in email
    assert [address.addr_spec for address in email["To"].addresses] == ["ada@example.com"]  # the rest is a name
    assert all("\n" not in value and "\r" not in value for value in email.values())
    assert email["Subject"] == f"Welcome to healingwork, Ada Bcc: eve@evil.example body {TEMPLATE}"
    raw = email.as_string()
    assert "\nBcc:" not in raw.split("\n\n", 1)[0]
    text = email.get_body(("plain",))
    assert text is not None
    assert f"Hi Ada Bcc: eve@evil.example body {TEMPLATE}" in text.get_content()
    assert "loop" not in text.get_content().replace("%}loop{%", "")  # the for-loop never ran
