"""Rendering a step for one lead: sandboxed Jinja2, lead fields are data and never template code.

HTML is autoescaped; the subject is rendered as text and stripped of line breaks so nothing a lead
typed can reach another header.
"""

from __future__ import annotations

import functools
import html
import re
from dataclasses import dataclass
from html.parser import HTMLParser
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


class _TextExtractor(HTMLParser):
    _BLOCKS = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in self._BLOCKS:
            self.parts.append("\n")
        elif tag == "a":
            self._href = dict(attrs).get("href")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip = max(0, self._skip - 1)
        elif tag in self._BLOCKS:
            self.parts.append("\n")
        elif tag == "a" and getattr(self, "_href", None):
            self.parts.append(f" ({self._href})")
            self._href = None

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    """A readable plain-text version of an HTML body (links kept in parentheses)."""
    extractor = _TextExtractor()
    extractor.feed(markup)
    text = html.unescape("".join(extractor.parts))
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"
