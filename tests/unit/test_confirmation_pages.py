"""The double opt-in pages and who must confirm: plain functions, no server."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest

from services.intake.confirmation_pages import CONTENT_SECURITY_POLICY, PAGES, STYLE, Page, render_page
from services.intake.double_opt_in import Confirmation, must_confirm


@pytest.mark.parametrize(
    ("policy", "public_form", "expected"),
    [
        ("public-forms", True, True),
        ("public-forms", False, False),
        ("all", True, True),
        ("all", False, True),
        ("off", True, False),
        ("off", False, False),
    ],
)
def test_who_must_confirm_follows_the_setting(policy: str, public_form: bool, expected: bool) -> None:
    assert must_confirm(policy, public_form=public_form) is expected  # type: ignore[arg-type]


def test_every_state_has_a_page_and_only_the_pending_one_a_button() -> None:
    assert set(PAGES) == set(Confirmation)
    assert [state for state, page in PAGES.items() if page.button] == [Confirmation.PENDING]
    assert {state: page.status for state, page in PAGES.items()} == {
        Confirmation.PENDING: 200,
        Confirmation.CONFIRMED_NOW: 200,
        Confirmation.ALREADY_CONFIRMED: 200,
        Confirmation.EXPIRED: 410,
        Confirmation.UNKNOWN: 404,
    }


def test_the_style_is_allowed_by_its_hash_and_nothing_else_is() -> None:
    digest = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()

    assert f"style-src 'sha256-{digest}'" in CONTENT_SECURITY_POLICY
    assert "default-src 'none'" in CONTENT_SECURITY_POLICY
    assert "unsafe" not in CONTENT_SECURITY_POLICY
    assert "script-src" not in CONTENT_SECURITY_POLICY


def test_a_page_is_an_accessible_document_without_script() -> None:
    document = render_page(PAGES[Confirmation.PENDING])

    assert document.startswith('<!doctype html><html lang="en">')
    assert re.search(r"<main><h1>Confirm your subscription</h1>", document)
    assert '<form method="post"><button type="submit">Yes, subscribe me</button></form>' in document
    assert "<script" not in document
    assert 'name="viewport"' in document


def test_page_texts_are_escaped() -> None:
    document = render_page(Page(200, "<b>Title</b>", 'Say "hi" & <i>bye</i>', button="<go>"))

    assert "<b>" not in document
    assert "&lt;b&gt;Title&lt;/b&gt;" in document
    assert "Say &quot;hi&quot; &amp; &lt;i&gt;bye&lt;/i&gt;" in document
    assert "&lt;go&gt;" in document
