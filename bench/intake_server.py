"""The intake app as the benchmark serves it: ``healingwork intake`` plus one route that only
validates the same body (the in-run baseline). Run by ``bench.intake``; not part of the product."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
import uvicorn
from litestar import Request, Response, post

from proto.http import LeadReceipt
from services.common.config import IntakeSettings, load_settings
from services.common.logs import configure_logging
from services.intake.app import create_app
from services.intake.problems import ProblemError
from services.intake.validation import parse_lead


@post("/bench/validate", status_code=202, include_in_schema=False)
async def validate_only(request: Request[Any, Any, Any]) -> Response[LeadReceipt]:
    """Everything ``POST /v1/leads`` does before touching PostgreSQL: content type, JSON, validation."""
    if request.content_type[0] != "application/json":
        raise ProblemError(415, "JSON only")
    try:
        raw = msgspec.json.decode(await request.body())
    except msgspec.DecodeError as error:
        raise ProblemError(400, str(error)) from error
    parse_lead(raw)
    return Response(LeadReceipt(id=uuid.UUID(int=0), duplicate=False), status_code=202)


def main() -> None:
    settings = load_settings(IntakeSettings)
    configure_logging("intake", settings.log_level)
    app = create_app(settings)
    app.register(validate_only)
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False, proxy_headers=False)


if __name__ == "__main__":
    main()
