"""How an email address is identified where the address itself must not be kept.

Suppressions, ``leads.email_hash`` and the ``leads.suppressed`` topic carry a *keyed* hash of the
normalized address: HMAC-SHA256 under ``SUPPRESSION_HASH_KEY``. An unkeyed SHA-256 would let anyone
holding a database dump or a topic confirm a guessed address in one hash; the keyed one cannot be
computed without the key, which lives only in intake's environment (never in the database).

The key is *rotation-stable*: every stored hash depends on it and the addresses behind erased ones are
gone, so it cannot be rotated by rehashing. It is a separate secret from ``HMAC_SECRET`` (which
rotates, and which the dispatcher also holds).
"""

from __future__ import annotations

import hashlib
import hmac


def email_hash(email_key: str, hash_key: str) -> str:
    """HMAC-SHA256 (hex) of a normalized address (the lower-cased key of ``normalize_email``) under
    ``hash_key`` (``SUPPRESSION_HASH_KEY``)."""
    return hmac.new(hash_key.encode(), b"healingwork-email:" + email_key.encode(), hashlib.sha256).hexdigest()


def legacy_email_hash(email_key: str) -> str:
    """The unkeyed SHA-256 (hex) that releases before migration 0010 stored.

    Used only to find and replace those old rows (``services.intake.hash_upgrade``) and, during the
    transition, to match an old suppression against a lead's address; never written by new code. The same
    function exists in SQL as ``encode(sha256(convert_to(key, 'UTF8')), 'hex')``
    (``services.common.suppressions.LEAD_IS_SUPPRESSED_SQL``).
    """
    return hashlib.sha256(email_key.encode()).hexdigest()
