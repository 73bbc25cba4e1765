"""Ids derived from names: :func:`uuid.uuid5`, without the standard library's per-call overhead.

The scheduler derives two ids per due step (the message and its ``email.dispatch`` command) and the
dispatcher one per event, so the derivation is on their hot paths: the standard ``uuid.uuid5`` spends
more than half of its time outside the hash (building the UUID through its validating constructor).
:func:`name_uuid` returns exactly the same value (a unit test compares them over random names).
"""

from __future__ import annotations

import hashlib
import uuid

# RFC 9562, 5.5: the hash's first 128 bits with the version (5) and the variant (0b10) set.
_KEEP = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_VERSION_5_VARIANT_RFC = (5 << 76) | (0x8000 << 48)

_new = object.__new__
_set = object.__setattr__  # uuid.UUID is immutable: its own __setattr__ refuses every write
_sha1 = hashlib.sha1
_UUID = uuid.UUID
_UNKNOWN = uuid.SafeUUID.unknown


def name_uuid(namespace: uuid.UUID, name: str) -> uuid.UUID:
    """``uuid.uuid5(namespace, name)``: the same id, about twice as fast."""
    digest = _sha1(namespace.bytes + name.encode(), usedforsecurity=False).digest()
    value = int.from_bytes(digest[:16], "big") & _KEEP | _VERSION_5_VARIANT_RFC
    result = _new(_UUID)
    _set(result, "int", value)
    _set(result, "is_safe", _UNKNOWN)
    return result
