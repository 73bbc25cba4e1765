"""A readable plain-text version of an HTML body: the text part of an email whose step has only HTML."""

from __future__ import annotations

import html
import re

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
    # findall: one tuple of the five groups per token ('' for a group that took no part), no match
    # objects. A text token and a tag name are never empty, so '' means "not this kind".
    for _skipped, closing, tag, attributes, text in _HTML_TOKENS.findall(markup):
        if text:
            parts.append(html.unescape(text))
            continue
        if not tag:
            continue  # a comment, a skipped element, a doctype
        tag = tag.lower()
        if tag in _TEXT_BLOCKS:
            parts.append("\n")
        elif tag == "a":
            if not closing:
                found = _HREF.search(attributes)
                href = html.unescape(next(filter(None, found.groups()), "")) if found else None
            elif href:
                parts.append(f" ({href})")
                href = None
    lines = [" ".join(line.split()) for line in "".join(parts).splitlines()]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip() + "\n"
