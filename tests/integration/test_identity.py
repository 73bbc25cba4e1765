from __future__ import annotations

import psycopg
import pytest

from services.common.identity import legacy_email_hash

pytestmark = pytest.mark.integration


def test_email_hash_in_python_equals_the_sql_expression(postgres_url: str) -> None:
    key = "ädа@xn--bcher-kva.example"  # non-ASCII local part, Cyrillic 'а' included
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute("SELECT encode(sha256(convert_to(%s, 'UTF8')), 'hex')", (key,)).fetchone()
    assert row is not None
    assert row[0] == legacy_email_hash(key)
