"""The query of ``GET /v1/stats``: a range of UTC days and a Sequence, parsed from plain strings."""

from __future__ import annotations

import re
from datetime import date, timedelta

from proto.http import FieldError

DEFAULT_RANGE_DAYS = 30
MAX_RANGE_DAYS = 366
DEFAULT_NAMESPACE = "default"
# Days outside these cannot hold stats, and date arithmetic near year 1 or 9999 overflows (a 500 before).
EARLIEST_DAY = date(1970, 1, 1)
LATEST_DAY = date(9999, 12, 30)


class InvalidQuery(Exception):
    """One or more query parameters are invalid (422, naming each)."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.reason}" for e in errors))
        self.errors = errors


def parse_range(from_text: str | None, to_text: str | None, today: date) -> tuple[date, date]:
    """The inclusive day range of the query (default: the last 30 days), or :class:`InvalidQuery`."""
    errors: list[FieldError] = []

    def parse(field: str, text: str | None) -> date | None:
        if text is None:
            return None
        try:
            day = date.fromisoformat(text)
        except ValueError:
            errors.append(FieldError(field=field, reason="must be a date as YYYY-MM-DD"))
            return None
        if not EARLIEST_DAY <= day <= LATEST_DAY:
            errors.append(FieldError(field=field, reason=f"must be between {EARLIEST_DAY} and {LATEST_DAY}"))
            return None
        return day

    to_day = parse("to", to_text)
    from_day = parse("from", from_text)
    if errors:
        raise InvalidQuery(errors)
    to_day = to_day or today
    from_day = from_day or max(EARLIEST_DAY, to_day - timedelta(days=DEFAULT_RANGE_DAYS - 1))
    if from_day > to_day:
        raise InvalidQuery([FieldError(field="from", reason="must not be after 'to'")])
    if (to_day - from_day).days + 1 > MAX_RANGE_DAYS:
        raise InvalidQuery([FieldError(field="from", reason=f"the range may span at most {MAX_RANGE_DAYS} days")])
    return from_day, to_day


# Kubernetes object names (RFC 1123 labels) as the Sequence resource allows them.
SLUG = re.compile(r"[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?")


def parse_sequence(text: str) -> tuple[str, str]:
    """``namespace/name``, or ``name`` in the default namespace."""
    namespace, _, name = text.rpartition("/")
    if not SLUG.fullmatch(name) or (namespace and not SLUG.fullmatch(namespace)):
        raise InvalidQuery(
            [FieldError(field="sequence", reason="must be 'namespace/name' or 'name' (lower-case slugs)")]
        )
    return namespace or DEFAULT_NAMESPACE, name
