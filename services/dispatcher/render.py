"""Rendering a step for one lead: sandboxed Jinja2, lead fields are data and never template code.

HTML is autoescaped; the subject is rendered as text and stripped of line breaks so nothing a lead
typed can reach another header.
"""

from __future__ import annotations

import functools
import html
import re
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

_html_env = ImmutableSandboxedEnvironment(autoescape=True, undefined=StrictUndefined)
_text_env = ImmutableSandboxedEnvironment(autoescape=False, undefined=StrictUndefined)
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


def render_step(
    subject: str, html_template: str | None, text_template: str | None, context: dict[str, Any]
) -> RenderedEmail:
    """Render a step; the text part is always present (from ``text`` or derived from the HTML)."""
    try:
        rendered_subject = _LINE_BREAKS.sub(" ", _text_template(subject).render(context)).strip()
        rendered_html = _html_template(html_template).render(context) if html_template else None
        rendered_text = (
            _text_template(text_template).render(context) if text_template else html_to_text(rendered_html or "")
        )
    except TemplateError as error:
        raise RenderError(f"template error: {error}") from error
    return RenderedEmail(subject=rendered_subject, html=rendered_html, text=rendered_text)


# One pass over the markup: comments, script and style elements (skipped), tags, and text. A regular
# expression instead of html.parser: the text part is derived for every email, and this is about five
# times cheaper.
_HTML_TOKENS = re.compile(
    r"""<!--.*?(?:-->|$)"""  # a comment (unterminated: to the end)
    r"""|<(script|style)\b[^>]*>.*?(?:</\1\s*>|$)"""  # skipped with its content
    r"""|<(/?)([a-zA-Z][a-zA-Z0-9]*)((?:[^>"']|"[^"]*"|'[^']*')*)>"""  # a start or end tag
    r"""|<![^>]*>|<\?[^>]*>"""  # a doctype or processing instruction
    r"""|([^<]+|<)""",  # text
    re.DOTALL | re.IGNORECASE,
)
_HREF = re.compile(r"""\bhref\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""", re.IGNORECASE)
_TEXT_BLOCKS = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table"})
_BLANK_LINES = re.compile(r"\n{3,}")


def html_to_text(markup: str) -> str:
    """A readable plain-text version of an HTML body (links kept in parentheses)."""
    parts: list[str] = []
    href: str | None = None
    for match in _HTML_TOKENS.finditer(markup):
        text = match.group(5)
        if text is not None:
            parts.append(html.unescape(text))
            continue
        tag = match.group(3)
        if tag is None:
            continue  # a comment, a skipped element, a doctype
        tag = tag.lower()
        if tag in _TEXT_BLOCKS:
            parts.append("\n")
        elif tag == "a":
            if not match.group(2):
                found = _HREF.search(match.group(4))
                href = html.unescape(next(filter(None, found.groups()), "")) if found else None
            elif href:
                parts.append(f" ({href})")
                href = None
    lines = [" ".join(line.split()) for line in "".join(parts).splitlines()]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip() + "\n"
