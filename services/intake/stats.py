"""``GET /v1/stats``: the daily rollups of one Sequence (or all) over a range of UTC days.

Thin edge: parse the query, call :func:`services.common.daily_stats.read_stats`, answer. Bad query
values are a 422 problem naming the parameter; an unknown Sequence is a 404.

Access: the API's read scope (``leads:read``), like every other ``/v1`` read.
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, get
from litestar.datastructures import State
from litestar.openapi import ResponseSpec
from litestar.params import QueryParameter

from proto.http import FieldError, Problem
from proto.stats import StatsReport
from services.common.clock import utcnow
from services.common.daily_stats import find_sequence, read_stats
from services.common.db import transaction
from services.intake.auth import requires_scope
from services.intake.problems import PROBLEM_JSON, ProblemError

DEFAULT_RANGE_DAYS = 30
MAX_RANGE_DAYS = 366
DEFAULT_NAMESPACE = "default"


class InvalidQuery(Exception):
    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.reason}" for e in errors))
        self.errors = errors


def _on_invalid_query(_: Request[Any, Any, Any], exc: InvalidQuery) -> Response[bytes]:
    body = Problem(
        title="Invalid query",
        status=422,
        detail="One or more query parameters are invalid; see errors.",
        errors=exc.errors,
    )
    return Response(content=msgspec.json.encode(body), status_code=422, media_type=PROBLEM_JSON)


def parse_range(from_text: str | None, to_text: str | None, today: date) -> tuple[date, date]:
    """The inclusive day range of the query (default: the last 30 days), or :class:`InvalidQuery`."""
    errors: list[FieldError] = []

    def parse(field: str, text: str | None) -> date | None:
        if text is None:
            return None
        try:
            return date.fromisoformat(text)
        except ValueError:
            errors.append(FieldError(field=field, reason="must be a date as YYYY-MM-DD"))
            return None

    to_day = parse("to", to_text)
    from_day = parse("from", from_text)
    if errors:
        raise InvalidQuery(errors)
    to_day = to_day or today
    from_day = from_day or to_day - timedelta(days=DEFAULT_RANGE_DAYS - 1)
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


@get(
    "/v1/stats",
    summary="Daily rollups with derived rates",
    description=(
        "Rollups per Sequence, revision, step and UTC day in [from, to] (default: the last 30 days), "
        "computed by the aggregate-stats job, with totals and derived rates (delivery, open, click, "
        "unsubscribe, bounce; null when there is nothing to divide by). sequence is 'namespace/name' "
        "or 'name' (namespace default); without it every Sequence is returned."
    ),
    guards=[requires_scope("leads:read")],
    exception_handlers={InvalidQuery: _on_invalid_query},
    responses={
        401: ResponseSpec(Problem, description="No or bad credentials", media_type=PROBLEM_JSON),
        403: ResponseSpec(Problem, description="The client lacks the leads:read scope", media_type=PROBLEM_JSON),
        404: ResponseSpec(Problem, description="No such Sequence", media_type=PROBLEM_JSON),
        422: ResponseSpec(Problem, description="A query parameter is invalid", media_type=PROBLEM_JSON),
    },
)
async def get_stats(
    state: State,
    sequence: Annotated[str | None, QueryParameter(description="'namespace/name' or 'name'")] = None,
    from_text: Annotated[str | None, QueryParameter(name="from", description="first UTC day, YYYY-MM-DD")] = None,
    to_text: Annotated[str | None, QueryParameter(name="to", description="last UTC day, YYYY-MM-DD")] = None,
) -> StatsReport:
    from_day, to_day = parse_range(from_text, to_text, utcnow().date())
    wanted = parse_sequence(sequence) if sequence is not None else None
    async with transaction(state.runtime.pool) as conn:
        sequence_id = None
        if wanted is not None:
            sequence_id = await find_sequence(conn, *wanted)
            if sequence_id is None:
                raise ProblemError(404, f"No Sequence {wanted[0]}/{wanted[1]}.")
        return await read_stats(conn, from_day=from_day, to_day=to_day, sequence_id=sequence_id)
