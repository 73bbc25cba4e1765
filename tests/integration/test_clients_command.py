"""``healingwork clients create|list|revoke|signing-secret`` as a process, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import uuid

import pytest

from services.intake.clients import signing_secret
from tests.support.platform import fetch_all
from tests.unit.test_cli import clean_env, healingwork

pytestmark = pytest.mark.integration


def test_create_list_and_revoke_a_client(migrated_database_url: str) -> None:
    signing_key = secrets.token_hex(32)
    env = clean_env(DATABASE_URL=migrated_database_url, REQUEST_SIGNING_KEYS=f"k1:{signing_key}")

    created = healingwork("clients", "create", "crm", "--scope", "leads:write", "--scope", "leads:read", env=env)

    assert created.returncode == 0, created.stderr
    fields = dict(re.findall(r"^([a-z ]+):\s+(\S+)$", created.stdout, re.MULTILINE))
    key, client_id = fields["api key"], uuid.UUID(fields["id"])
    assert re.fullmatch(r"hw_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", key)
    assert fields["signing key id"] == "k1"
    assert fields["signing secret"] == signing_secret(signing_key, client_id)
    [row] = asyncio.run(fetch_all(migrated_database_url, "SELECT key_hash, scopes FROM api_clients"))
    assert row == {"key_hash": hashlib.sha256(key.encode()).hexdigest(), "scopes": ["leads:read", "leads:write"]}

    listed = healingwork("clients", "list", env=clean_env(DATABASE_URL=migrated_database_url))
    assert listed.returncode == 0
    assert re.search(r"^crm\s+\S+\s+leads:read,leads:write\s+.*active$", listed.stdout, re.MULTILINE)
    assert key not in listed.stdout

    revoked = healingwork("clients", "revoke", "crm", env=clean_env(DATABASE_URL=migrated_database_url))
    assert (revoked.returncode, revoked.stdout.strip()) == (0, "client crm revoked")
    listed = healingwork("clients", "list", env=clean_env(DATABASE_URL=migrated_database_url))
    assert re.search(r"^crm\s+.*revoked \d{4}-\d\d-\d\d", listed.stdout, re.MULTILINE)


def test_create_defaults_to_the_write_scope_and_needs_no_signing_keys(migrated_database_url: str) -> None:
    env = clean_env(DATABASE_URL=migrated_database_url)

    created = healingwork("clients", "create", "forms", env=env)

    assert created.returncode == 0
    assert "scopes:         leads:write\n" in created.stdout
    assert "signing secret: not configured" in created.stdout


def test_signing_secret_after_a_rotation_is_derived_from_the_new_key(migrated_database_url: str) -> None:
    old, new = secrets.token_hex(32), secrets.token_hex(32)
    before = clean_env(DATABASE_URL=migrated_database_url, REQUEST_SIGNING_KEYS=f"2026-05:{old}")
    during = clean_env(DATABASE_URL=migrated_database_url, REQUEST_SIGNING_KEYS=f"2026-11:{new},2026-05:{old}")
    created = healingwork("clients", "create", "crm", env=before)
    client_id = uuid.UUID(dict(re.findall(r"^([a-z ]+):\s+(\S+)$", created.stdout, re.MULTILINE))["id"])

    reissued = healingwork("clients", "signing-secret", "crm", env=during)

    assert reissued.returncode == 0, reissued.stderr
    fields = dict(re.findall(r"^([a-z ]+):\s+(\S+)$", reissued.stdout, re.MULTILINE))
    assert (fields["signing key id"], fields["signing secret"]) == ("2026-11", signing_secret(new, client_id))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["clients", "create", "crm"], "a client named 'crm' exists already"),
        (["clients", "create", "Bad Name"], "invalid name 'Bad Name'"),
        (["clients", "revoke", "nobody"], "no client named 'nobody'"),
        (["clients", "signing-secret", "nobody"], "no active client named 'nobody'"),
    ],
)
def test_mistakes_are_one_message_and_exit_1(migrated_database_url: str, args: list[str], message: str) -> None:
    env = clean_env(DATABASE_URL=migrated_database_url, REQUEST_SIGNING_KEYS=f"k1:{secrets.token_hex(32)}")
    assert healingwork("clients", "create", "crm", env=env).returncode == 0

    result = healingwork(*args, env=env)

    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unknown_scope_is_refused_by_the_parser(migrated_database_url: str) -> None:
    env = clean_env(DATABASE_URL=migrated_database_url)

    result = healingwork("clients", "create", "crm", "--scope", "leads:delete", env=env)

    assert result.returncode == 2
    assert "invalid choice: 'leads:delete'" in result.stderr


def test_create_refuses_signing_keys_that_are_not_secrets(migrated_database_url: str) -> None:
    env = clean_env(DATABASE_URL=migrated_database_url, REQUEST_SIGNING_KEYS="k1:changeme")

    result = healingwork("clients", "create", "crm", env=env)

    assert result.returncode == 2
    assert "REQUEST_SIGNING_KEYS has the key 'k1' whose secret must be at least 32 bytes" in result.stderr
