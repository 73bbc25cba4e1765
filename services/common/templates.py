"""Step templates: what a template sees (:func:`template_context`, the one place it is built), and
rendering a step for one lead in the bounded sandbox (``services.common.template_sandbox``): lead fields
are data and never template code, and the output has a size limit.

HTML is autoescaped; the subject is rendered as text and stripped of line breaks so nothing a lead
typed can reach another header. Every failure of a render (a template error, a limit, or any exception
an expression raises, such as ``{{ 10 // 0 }}``) is a :class:`RenderError`: refused when a Sequence is
applied, dead-lettered when a message is sent.

Limits, per rendered part:

- the subject, :data:`MAX_SUBJECT_CHARS` = 998 characters after line breaks are collapsed: RFC 5322's
  limit for one header line (a longer subject is folded on the wire, but no mail client shows one that
  long; longer is a template bug, not a subject);
- the HTML and the text part, :data:`MAX_BODY_CHARS` = 1 Mi characters each: Gmail already clips an HTML
  body at about 100 KB, and two parts of 1 Mi characters (base64-encoded, so about 1.4 MB each for ASCII)
  stay far below the smallest message size providers accept (10 MB), tracking links included.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError

from services.common.html_text import html_to_text
from services.common.template_sandbox import MAX_VALUE_CHARS, BoundedSandbox, with_loop_budget

MAX_SUBJECT_CHARS = 998
MAX_BODY_CHARS = MAX_VALUE_CHARS

_html_env = BoundedSandbox(autoescape=True, undefined=StrictUndefined)
_text_env = BoundedSandbox(autoescape=False, undefined=StrictUndefined)
_LINE_BREAKS = re.compile(r"[\r\n\u2028\u2029\x85]+")


# Compiling a template costs far more than rendering it; steps are few and immutable, so cache them.
@functools.lru_cache(maxsize=512)
def _html_template(source: str) -> Template:
    return _html_env.from_string(source)


@functools.lru_cache(maxsize=512)
def _text_template(source: str) -> Template:
    return _text_env.from_string(source)


class RenderError(Exception):
    """A step's template cannot be rendered for this lead (a permanent failure of the message)."""


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    html: str | None
    text: str


@dataclass(frozen=True)
class TemplateLead:
    """The lead fields a template may use."""

    email: str
    first_name: str | None
    last_name: str | None
    source: str


def template_context(lead: TemplateLead, sequence_name: str, step_name: str, unsubscribe_url: str) -> dict[str, Any]:
    """What a step template sees: ``lead`` (email, first_name, last_name, source), ``sequence`` (name,
    step) and ``unsubscribe_url``. The one place the context is built, for sending, for the check when a
    Sequence is applied and for previews, so a template valid in one is valid in all."""
    return {
        "lead": {
            "email": lead.email,
            "first_name": lead.first_name,
            "last_name": lead.last_name,
            "source": lead.source,
        },
        "sequence": {"name": sequence_name, "step": step_name},
        "unsubscribe_url": unsubscribe_url,
    }


def render_step(
    subject: str, html_template: str | None, text_template: str | None, context: dict[str, Any]
) -> RenderedEmail:
    """Render a step; the text part is always present (from ``text`` or derived from the HTML). Raises
    RenderError for any failure, naming the part."""
    rendered_subject = _LINE_BREAKS.sub(" ", _render("subject", _text_template, subject, context)).strip()
    if len(rendered_subject) > MAX_SUBJECT_CHARS:
        raise RenderError(f"the subject is {len(rendered_subject):,} characters, over the limit of {MAX_SUBJECT_CHARS}")
    rendered_html = _render("html", _html_template, html_template, context) if html_template else None
    if text_template:
        rendered_text = _render("text", _text_template, text_template, context)
    else:
        rendered_text = html_to_text(rendered_html or "")  # never longer than the HTML
    return RenderedEmail(subject=rendered_subject, html=rendered_html, text=rendered_text)


def check_body_size(part: str, body: str) -> str:
    """``body``, or a RenderError when it is over :data:`MAX_BODY_CHARS`."""
    if len(body) > MAX_BODY_CHARS:
        raise RenderError(f"the {part} is {len(body):,} characters, over the limit of {MAX_BODY_CHARS:,}")
    return body


def _render(part: str, compile_template: Any, source: str, context: dict[str, Any]) -> str:
    """One part, streamed so that rendering stops as soon as the output passes the body limit."""

    def render() -> str:
        chunks: list[str] = []
        size = 0
        for chunk in compile_template(source).generate(context):
            size += len(chunk)
            if size > MAX_BODY_CHARS:
                raise RenderError(f"the {part} is over the limit of {MAX_BODY_CHARS:,} characters")
            chunks.append(chunk)
        return "".join(chunks)

    try:
        return with_loop_budget(render)
    except RenderError:
        raise
    except TemplateError as error:
        raise RenderError(f"template error: {error} (in the {part})") from error
    except Exception as error:  # any exception an expression raises is the template's failure
        raise RenderError(f"template error: {type(error).__name__}: {error} (in the {part})") from error
