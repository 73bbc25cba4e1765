"""The links a sent email carries: the open pixel, click-tracking redirects and unsubscribe URLs,
each a signed token (``services.common.tokens``) under ``PUBLIC_BASE_URL``."""

from __future__ import annotations

import html
import re
import uuid
from urllib.parse import quote

from services.common.tokens import MAX_CLICK_URL_BYTES, Purpose, sign_token

_ANCHOR_HREF = re.compile(r"""(<a\b[^>]*?\bhref\s*=\s*)(["'])(.*?)\2""", re.IGNORECASE | re.DOTALL)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
# The mailto subject's fixed part, percent-encoded once: the token after it is base64url and dots,
# characters quote() leaves as they are (tests/unit/test_message_links.py checks it on real tokens).
_MAILTO_SUBJECT_PREFIX = quote("unsubscribe ")


class MessageLinks:
    """The signed URLs of one message. The unsubscribe token is signed at construction: every message
    carries it (the footer, List-Unsubscribe, the template's ``unsubscribe_url``), and computing it
    eagerly is cheaper than a ``cached_property``, which takes a lock on each first access (3.11)."""

    __slots__ = ("_base", "_unsubscribe_token", "base_url", "message_id", "secret", "unsubscribe_url")

    def __init__(self, base_url: str, secret: str, message_id: uuid.UUID) -> None:
        self.base_url = base_url
        self.secret = secret
        self.message_id = message_id
        self._base = base_url.rstrip("/")
        self._unsubscribe_token = sign_token(secret, Purpose.UNSUBSCRIBE, message_id)
        self.unsubscribe_url = f"{self._base}/u/{self._unsubscribe_token}"

    def _url(self, prefix: str, purpose: Purpose, url: str | None = None) -> str:
        return f"{self._base}/{prefix}/{sign_token(self.secret, purpose, self.message_id, url)}"

    @property
    def open_url(self) -> str:
        return self._url("t/o", Purpose.OPEN)

    def click_url(self, target: str) -> str:
        return self._url("t/c", Purpose.CLICK, target)

    def unsubscribe_mailto(self, address: str) -> str:
        return f"mailto:{address}?subject={_MAILTO_SUBJECT_PREFIX}{self._unsubscribe_token}"


def track_clicks(markup: str, links: MessageLinks) -> str:
    """Point every http(s) anchor at its click-tracking redirect; the unsubscribe link stays direct."""

    def rewrite(match: re.Match[str]) -> str:
        target = html.unescape(match.group(3)).strip()
        lowered = target.lower()
        if not lowered.startswith(("http://", "https://")) or len(target.encode()) > MAX_CLICK_URL_BYTES:
            return match.group(0)
        if target == links.unsubscribe_url:
            return match.group(0)
        return f"{match.group(1)}{match.group(2)}{html.escape(links.click_url(target))}{match.group(2)}"

    return _ANCHOR_HREF.sub(rewrite, markup)


def add_open_pixel(markup: str, links: MessageLinks) -> str:
    """A 1x1 image that records the open, before ``</body>`` or at the end."""
    pixel = f'<img src="{html.escape(links.open_url)}" width="1" height="1" alt="" style="display:none">'
    return _before_body_end(markup, pixel)


def add_unsubscribe_footer(text: str, markup: str | None, links: MessageLinks) -> tuple[str, str | None]:
    """A visible unsubscribe link in both parts, unless the template already placed one."""
    url = links.unsubscribe_url
    if url not in text:
        text = f"{text.rstrip()}\n\n--\nUnsubscribe: {url}\n"
    if markup is not None and html.escape(url) not in markup and url not in markup:
        footer = f'<p style="font-size:12px;color:#666"><a href="{html.escape(url)}">Unsubscribe</a></p>'
        markup = _before_body_end(markup, footer)
    return text, markup


def _before_body_end(markup: str, addition: str) -> str:
    """``addition`` inserted before the first ``</body>``, or appended when there is none (one search)."""
    end = _BODY_END.search(markup)
    if end is None:
        return markup + addition
    return f"{markup[: end.start()]}{addition}{markup[end.start() :]}"
