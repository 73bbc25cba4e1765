"""The pages of a double opt-in confirmation link, as HTML strings (no web framework, no JavaScript).

Every page is a complete document: ``lang``, a viewport, one ``<h1>`` inside ``<main>``, a real
``<button>`` in a form that posts to the page's own URL, readable contrast and a visible focus ring.
Nothing from the request or the database is written into a page, and the fixed texts are escaped all
the same. The stylesheet, the Content-Security-Policy (the one inline style by its hash, nothing
else: no script, no frame, no other origin for the form) and the headers are the preference page's.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from services.intake.double_opt_in import Confirmation

# One look and one policy for the public pages: the preference page's stylesheet (its contrast ratios
# are documented there), allowed by its hash, and its headers (strict CSP, no cache, no framing, no
# referrer: the URL holds the token).
from services.intake.preference_page import CONTENT_SECURITY_POLICY, PAGE_HEADERS, STYLE

__all__ = ["CONTENT_SECURITY_POLICY", "PAGES", "PAGE_HEADERS", "STYLE", "Page", "render_page"]


@dataclass(frozen=True)
class Page:
    """One page: its HTTP status, title, paragraph and whether it carries the confirm button."""

    status: int
    title: str
    text: str
    button: str | None = None


PAGES = {
    Confirmation.PENDING: Page(
        200,
        "Confirm your subscription",
        "Please confirm that you want to receive our emails at this address. "
        "Nothing happens until you press the button.",
        button="Yes, subscribe me",
    ),
    Confirmation.CONFIRMED_NOW: Page(
        200, "Subscription confirmed", "Thank you: your address is confirmed. Our first email is on its way."
    ),
    Confirmation.ALREADY_CONFIRMED: Page(
        200, "Already confirmed", "This address was confirmed before; there is nothing more to do."
    ),
    Confirmation.EXPIRED: Page(
        410, "This link has expired", "Confirmation links work for a limited time. Please sign up again."
    ),
    Confirmation.UNKNOWN: Page(
        404, "This link is not valid", "Please check that you opened the whole link from the email, or sign up again."
    ),
}


def render_page(page: Page) -> str:
    """The page as a complete HTML document."""
    title = html.escape(page.title)
    form = (
        f'<form method="post"><button type="submit">{html.escape(page.button)}</button></form>' if page.button else ""
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f'<meta name="robots" content="noindex"><title>{title}</title><style>{STYLE}</style></head>'
        f"<body><main><h1>{title}</h1><p>{html.escape(page.text)}</p>{form}</main></body></html>"
    )
