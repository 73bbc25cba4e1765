"""Keeping email addresses out of stored texts: SMTP replies, provider diagnostics, click URLs.

A mail server's refusal quotes the recipient (``550 5.1.1 <jane@example.com>: Recipient address
rejected``), a provider's bounce diagnostic does too, and some servers quote only the local part
(``jane.doe... User unknown``). These texts land in ``messages``, ``events``, dead letters,
``suppressions.detail``, outbox payloads and Kafka topics, several of which outlive an erasure. So they
are redacted when written: every address-shaped token becomes ``redacted``, and the recipient's own
address, its local part and any other known value of the lead are removed whatever their shape.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

REDACTED = "redacted"

# Deliberately loose (an RFC 5321 path, quoted local parts, IDN domains): a false positive costs a
# word of diagnostics, a false negative leaks an address.
_ADDRESS = re.compile(r"""(?:"[^"\s]{1,64}"|[^\s<>()\[\]\\,;:"@]{1,64})@[^\s<>()\[\]\\,;:"@']{1,255}""")
# Shorter known values are not removed: a two-letter first name would shred unrelated words.
_MIN_KNOWN = 3


def redact_addresses(text: str, known: Iterable[str | None] = ()) -> str:
    """``text`` without email addresses (each becomes ``redacted``) nor any of the ``known`` values
    (the recipient's address, its local part, names), matched case-insensitively."""
    if not text:
        return text
    redacted = _ADDRESS.sub(REDACTED, text)
    values = sorted({v for v in known if v and len(v) >= _MIN_KNOWN}, key=len, reverse=True)
    for value in values:
        if _cannot_contain(redacted, value):
            continue
        redacted = re.sub(re.escape(value), REDACTED, redacted, flags=re.IGNORECASE)
    return redacted


def _cannot_contain(text: str, value: str) -> bool:
    """Whether ``text`` certainly has no case-insensitive match of ``value``, decided without compiling
    a pattern (one per recipient: compiling them was a tenth of a dispatcher's CPU, since every SMTP
    reply is redacted). Exact for ASCII text and value, where ``lower`` is what IGNORECASE compares;
    anything else goes to the regular expression."""
    return text.isascii() and value.isascii() and value.lower() not in text.lower()


def known_values_of(address: str | None, *fields: str | None) -> list[str]:
    """The values to redact for one recipient: the address, its local part, and the given fields."""
    values: list[str | None] = [address, *fields]
    if address and "@" in address:
        values.append(address.rsplit("@", 1)[0])
    return [v for v in values if v]


def click_target_for_storage(url: str, known: Iterable[str | None] = ()) -> str:
    """What is stored of a clicked URL: scheme, host and path, without the query, fragment and user
    info (where templates put personalised parameters such as ``?email=...``), and with addresses and
    the lead's known values removed from the path. The redirect itself still goes to the full URL."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    path = redact_addresses(parts.path, known)
    return urlunsplit((parts.scheme, host, path, "", ""))
