"""The base of the domain errors a caller can cause: each failure is its own subclass, and its message
is written for the caller (an edge maps the type to a status, a condition or an exit code)."""

from __future__ import annotations


class CallerError(Exception):
    """A failure the caller caused; ``str(error)`` says what, for them. A subclass sets ``message``, its
    usual wording; a raise site may word it more precisely."""

    message = "The request was refused."

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.message)
