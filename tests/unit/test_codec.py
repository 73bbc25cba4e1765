"""encode_message / decode_message / decode_as: one way to turn Kafka messages into bytes and back."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import msgspec
import pytest

from proto.codec import decode_as, decode_message, encode_message
from proto.messages import (
    SCHEMA_VERSION,
    EmailDeadLettered,
    EmailDispatch,
    EmailEvent,
    LeadAccepted,
    Message,
)

OCCURRED_AT = datetime(2024, 5, 1, 9, 30, 15, 123456, tzinfo=UTC)

MESSAGES: list[Message] = [
    LeadAccepted(id=uuid.uuid4(), occurred_at=OCCURRED_AT, lead_id=uuid.uuid4(), source="website", tags=["vip"]),
    EmailDispatch(
        id=uuid.uuid4(),
        occurred_at=OCCURRED_AT,
        message_id=uuid.uuid4(),
        enrollment_id=uuid.uuid4(),
        lead_id=uuid.uuid4(),
        attempt=3,
    ),
    EmailEvent(id=uuid.uuid4(), occurred_at=OCCURRED_AT, message_id=uuid.uuid4(), event="sent", detail="250 OK"),
    EmailDeadLettered(
        id=uuid.uuid4(),
        occurred_at=OCCURRED_AT,
        message_id=uuid.uuid4(),
        enrollment_id=uuid.uuid4(),
        attempts=8,
        reason="550 mailbox unavailable",
    ),
]
IDS = [type(m).__name__ for m in MESSAGES]

TAGS = {
    LeadAccepted: "lead.accepted",
    EmailDispatch: "email.dispatch",
    EmailEvent: "email.event",
    EmailDeadLettered: "email.dead_lettered",
}


@pytest.mark.parametrize("message", MESSAGES, ids=IDS)
def test_every_message_type_round_trips(message: Message) -> None:
    assert decode_message(encode_message(message)) == message


@pytest.mark.parametrize("message", MESSAGES, ids=IDS)
def test_decode_as_its_own_type_returns_it(message: Message) -> None:
    assert decode_as(encode_message(message), type(message)) == message


@pytest.mark.parametrize("message", MESSAGES, ids=IDS)
def test_encoded_message_is_json_with_the_envelope(message: Message) -> None:
    document = json.loads(encode_message(message))

    assert document["type"] == TAGS[type(message)]
    assert document["id"] == str(message.id)
    assert document["schema_version"] == SCHEMA_VERSION
    assert datetime.fromisoformat(document["occurred_at"].replace("Z", "+00:00")) == OCCURRED_AT


def test_defaults_are_filled_in_when_decoding() -> None:
    data = json.dumps(
        {
            "type": "lead.accepted",
            "id": str(uuid.uuid4()),
            "occurred_at": "2024-05-01T09:30:00Z",
            "lead_id": str(uuid.uuid4()),
            "source": "website",
        }
    ).encode()

    message = decode_as(data, LeadAccepted)

    assert message.tags == []
    assert message.schema_version == SCHEMA_VERSION


@pytest.mark.parametrize(
    ("message", "wrong"),
    [(MESSAGES[0], EmailDispatch), (MESSAGES[1], LeadAccepted), (MESSAGES[2], EmailDeadLettered)],
    ids=IDS[:3],
)
def test_decode_as_the_wrong_type_raises_validation_error(message: Message, wrong: type[Message]) -> None:
    with pytest.raises(msgspec.ValidationError, match=f"expected a {wrong.__name__} message"):
        decode_as(encode_message(message), wrong)


@pytest.mark.parametrize("data", [b"", b"\x00\x01\x02garbage", b"{not json", b'{"type": "lead.accepted"'])
def test_garbage_bytes_raise_decode_error(data: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_message(data)


def test_garbage_bytes_raise_decode_error_from_decode_as() -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_as(b"\xff\xfe", LeadAccepted)


@pytest.mark.parametrize(
    "document",
    [
        {"type": "lead.rejected", "id": str(uuid.uuid4()), "occurred_at": "2024-05-01T09:30:00Z"},
        {"id": str(uuid.uuid4()), "occurred_at": "2024-05-01T09:30:00Z"},
        {"type": "lead.accepted", "id": "not-a-uuid", "occurred_at": "2024-05-01T09:30:00Z"},
        {"type": "email.event", "id": str(uuid.uuid4()), "occurred_at": "2024-05-01T09:30:00Z"},
        [1, 2, 3],
    ],
)
def test_json_that_is_not_a_known_message_raises_validation_error(document: object) -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_message(json.dumps(document).encode())
