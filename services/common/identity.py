"""How an email address is identified where the address itself must not be kept."""

from __future__ import annotations

import hashlib


def email_hash(email_key: str) -> str:
    """SHA-256 (hex) of a normalized address (the lower-cased key of ``normalize_email``).

    The same function exists in SQL as ``encode(sha256(convert_to(key, 'UTF8')), 'hex')``; suppressions
    and the ``leads.suppressed`` topic are keyed by it.
    """
    return hashlib.sha256(email_key.encode()).hexdigest()
