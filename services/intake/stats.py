"""``GET /v1/stats``: the daily rollups of one Sequence (or all) over a range of UTC days.

Thin edge: parse the query (:mod:`services.intake.stats_query`), call
:func:`services.common.daily_stats.read_stats`, answer. Bad query values are a 422 problem naming the
parameter; an unknown Sequence is a 404.

Access: the API's read scope (``leads:read``), like every other ``/v1`` read.
"""

from __future__ import annotations

from typing import Annotated

from litestar import get
from litestar.openapi import ResponseSpec
from litestar.params import QueryParameter

from proto.http import Problem
from proto.stats import StatsReport
from services.common.clock import utcnow
from services.common.daily_stats import find_sequence, read_stats
from services.common.db import transaction
from services.intake.auth import requires_scope
from services.intake.injection import Ctx
from services.intake.problems import PROBLEM_JSON, ProblemError
from services.intake.stats_query import parse_range, parse_sequence


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
    responses={
        401: ResponseSpec(Problem, description="No or bad credentials", media_type=PROBLEM_JSON),
        403: ResponseSpec(Problem, description="The client lacks the leads:read scope", media_type=PROBLEM_JSON),
        404: ResponseSpec(Problem, description="No such Sequence", media_type=PROBLEM_JSON),
        422: ResponseSpec(Problem, description="A query parameter is invalid", media_type=PROBLEM_JSON),
    },
)
async def get_stats(
    ctx: Ctx,
    sequence: Annotated[str | None, QueryParameter(description="'namespace/name' or 'name'")] = None,
    from_text: Annotated[str | None, QueryParameter(name="from", description="first UTC day, YYYY-MM-DD")] = None,
    to_text: Annotated[str | None, QueryParameter(name="to", description="last UTC day, YYYY-MM-DD")] = None,
) -> StatsReport:
    from_day, to_day = parse_range(from_text, to_text, utcnow().date())
    wanted = parse_sequence(sequence) if sequence is not None else None
    async with transaction(ctx.pool) as conn:
        sequence_id = None
        if wanted is not None:
            sequence_id = await find_sequence(conn, *wanted)
            if sequence_id is None:
                raise ProblemError(404, f"No Sequence {wanted[0]}/{wanted[1]}.")
        return await read_stats(conn, from_day=from_day, to_day=to_day, sequence_id=sequence_id)
