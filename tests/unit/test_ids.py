"""The fast name-derived id is exactly uuid.uuid5: same value, same text, same version, usable as a key."""

from __future__ import annotations

import pickle
import random
import uuid

from services.common.ids import name_uuid


def test_name_uuid_equals_uuid5_for_random_namespaces_and_names() -> None:
    chooser = random.Random(12)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789/-.é漢😀"
    for _ in range(5_000):
        namespace = uuid.UUID(int=chooser.getrandbits(128))
        name = "".join(chooser.choice(alphabet) for _ in range(chooser.randrange(0, 80)))
        expected = uuid.uuid5(namespace, name)
        derived = name_uuid(namespace, name)
        assert derived == expected
        assert str(derived) == str(expected)
        assert derived.bytes == expected.bytes
        assert hash(derived) == hash(expected)
        assert derived.version == 5
        assert derived.variant == uuid.RFC_4122


def test_name_uuid_behaves_as_a_uuid_value() -> None:
    namespace = uuid.UUID("c7e1b0f4-2a5e-4b8f-9d63-1e4a7c2b9f58")
    derived = name_uuid(namespace, "enrollment/1/0")
    assert isinstance(derived, uuid.UUID)
    assert derived.is_safe is uuid.SafeUUID.unknown
    assert pickle.loads(pickle.dumps(derived)) == derived  # noqa: S301 - our own bytes, just made
    assert {derived: 1}[uuid.uuid5(namespace, "enrollment/1/0")] == 1
    assert repr(derived) == repr(uuid.uuid5(namespace, "enrollment/1/0"))
