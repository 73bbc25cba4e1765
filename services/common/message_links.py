"""The links a sent email carries: the open pixel, click-tracking redirects and unsubscribe URLs,
each a signed token (``services.common.tokens``) under ``PUBLIC_BASE_URL``."""

from __future__ import annotations

import html
import re
import uuid
from dataclasses import dataclass
from functools import cached_property
from urllib.parse import quote

from services.common.tokens import MAX_CLICK_URL_BYTES, Purpose, sign_token

_ANCHOR_HREF = re.compile(r"""(<a\b[^>]*?\bhref\s*=\s*)(["'])(.*?)\2""", re.IGNORECASE | re.DOTALL)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)


@dataclass(frozen=True)
class MessageLinks:
    """The signed URLs of one message."""

    base_url: str
    secret: str
    message_id: uuid.UUID

    def _url(self, prefix: str, purpose: Purpose, url: str | None = None) -> str:
        return f"{self.base_url.rstrip('/')}/{prefix}/{sign_token(self.secret, purpose, self.message_id, url)}"

    @cached_property
    def _unsubscribe_token(self) -> str:
        return sign_token(self.secret, Purpose.UNSUBSCRIBE, self.message_id)

    @cached_property
    def unsubscribe_url(self) -> str:
        return f"{self.base_url.rstrip('/')}/u/{self._unsubscribe_token}"

    @property
    def open_url(self) -> str:
        return self._url("t/o", Purpose.OPEN)

    def click_url(self, target: str) -> str:
        return self._url("t/c", Purpose.CLICK, target)

    def unsubscribe_mailto(self, address: str) -> str:
        return f"mailto:{address}?subject={quote('unsubscribe ' + self._unsubscribe_token)}"


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
    if _BODY_END.search(markup):
        return _BODY_END.sub(lambda m: pixel + m.group(0), markup, count=1)
    return markup + pixel


def add_unsubscribe_footer(text: str, markup: str | None, links: MessageLinks) -> tuple[str, str | None]:
    """A visible unsubscribe link in both parts, unless the template already placed one."""
    url = links.unsubscribe_url
    if url not in text:
        text = f"{text.rstrip()}\n\n--\nUnsubscribe: {url}\n"
    if markup is not None and html.escape(url) not in markup and url not in markup:
        footer = f'<p style="font-size:12px;color:#666"><a href="{html.escape(url)}">Unsubscribe</a></p>'
        markup = (
            _BODY_END.sub(lambda m: footer + m.group(0), markup, count=1)
            if _BODY_END.search(markup)
            else markup + footer
        )
    return text, markup
