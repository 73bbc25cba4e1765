"""How a route is given the intake's :class:`~services.intake.context.IntakeContext`.

A handler declares ``ctx: Ctx``; the application registers :data:`CONTEXT_DEPENDENCIES`. The name and
the provider live together here, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Any, TypeAlias

from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import SkipValidation

from services.intake.context import IntakeContext, context_of

# The context is built by the lifespan, not from the request: nothing in it to validate per request.
Ctx: TypeAlias = NamedDependency[SkipValidation[IntakeContext]]


def _provide_context(state: State) -> IntakeContext:
    return context_of(state)


CONTEXT_DEPENDENCIES: dict[str, Any] = {"ctx": Provide(_provide_context, sync_to_thread=False)}
