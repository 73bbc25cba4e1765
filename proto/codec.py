"""One way to turn messages into bytes and back."""

from __future__ import annotations

from typing import TypeVar

import msgspec

from proto.messages import AnyMessage, Message

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[AnyMessage] = msgspec.json.Decoder(AnyMessage)

M = TypeVar("M", bound=Message)


def encode_message(message: Message) -> bytes:
    """Encode any message as compact JSON (readable with any Kafka tool)."""
    return _encoder.encode(message)


def decode_message(data: bytes) -> AnyMessage:
    """Decode a message of any known type; raises :class:`msgspec.ValidationError` or
    :class:`msgspec.DecodeError` for bytes that are not one."""
    return _decoder.decode(data)


def decode_as(data: bytes, kind: type[M]) -> M:
    """Decode and require one message type."""
    message = decode_message(data)
    if not isinstance(message, kind):
        raise msgspec.ValidationError(f"expected a {kind.__name__} message, got {type(message).__name__}")
    return message
