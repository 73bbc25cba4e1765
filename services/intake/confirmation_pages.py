"""The pages of a double opt-in confirmation link, as HTML strings (no web framework, no JavaScript).

Every page is a complete document: ``lang``, a viewport, one ``<h1>`` inside ``<main>``, a real
``<button>`` in a form that posts to the page's own URL, readable contrast and a visible focus ring.
Nothing from the request or the database is written into a page, and the fixed texts are escaped all
the same. The one inline style is allowed by its hash in :data:`CONTENT_SECURITY_POLICY`, which
otherwise allows nothing: no script, no frame, no other origin for the form.
"""

from __future__ import annotations

import base64
import hashlib
import html
from dataclasses import dataclass

from services.intake.double_opt_in import Confirmation

STYLE = (
    "body{font-family:system-ui,sans-serif;line-height:1.5;color:#1a1a1a;background:#fff;margin:0}"
    "main{max-width:32em;margin:3em auto;padding:0 1em}"
    "button{font:inherit;font-size:1.1em;padding:.6em 1.4em;color:#fff;background:#0b57d0;border:0;"
    "border-radius:.3em;cursor:pointer}"
    "button:focus-visible{outline:3px solid #1a1a1a;outline-offset:3px}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
# Sent with every page: strict CSP, not cached, not framed, no referrer (the URL holds the token).
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Cache-Control": "no-store, private",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


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
