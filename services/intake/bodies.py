"""Request bodies: the one JSON decoding of the intake, and the error for a body that is not JSON."""

from __future__ import annotations

from typing import Any, TypeVar, overload

import msgspec

from services.common.errors import CallerError

T = TypeVar("T")


class MalformedBody(CallerError):
    """The body is not what the route reads at all (400); the message says why, for the caller."""


@overload
def decode_json(body: bytes) -> Any: ...  # Any: whatever JSON the body holds, checked by the caller


@overload
def decode_json(body: bytes, kind: type[T]) -> T: ...


def decode_json(body: bytes, kind: Any = Any) -> Any:
    """``body`` decoded as JSON (into ``kind``); :class:`MalformedBody` when it is not JSON.

    A body that is JSON but not a ``kind`` raises ``msgspec.ValidationError`` for the caller to report.
    """
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as error:
        if kind is not Any:
            raise
        # Without a type, only JSON msgspec cannot represent fails here (a number out of range).
        raise MalformedBody(f"The body is not valid JSON: {error}") from error
    # Invalid UTF-8 is not a DecodeError, and deep nesting exhausts the decoder's recursion limit.
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as error:
        raise MalformedBody(f"The body is not valid JSON: {error}") from error
