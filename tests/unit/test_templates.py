"""render_step: sandboxed Jinja2 where lead fields are data, never template code, and the output is bounded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from services.common.html_text import html_to_text
from services.common.templates import RenderedEmail, RenderError, render_step


@dataclass(frozen=True)
class Lead:
    first_name: str | None
    email: str = "ada@example.com"


def context(first_name: str | None = "Ada") -> dict[str, Any]:
    return {"lead": Lead(first_name=first_name), "unsubscribe_url": "https://mail.example.com/u/abc"}


def test_step_renders_subject_html_and_text_from_the_lead() -> None:
    rendered = render_step(
        "Welcome, {{ lead.first_name }}", "<p>Hi {{ lead.first_name }}</p>", "Hi {{ lead.first_name }}", context()
    )

    assert rendered == RenderedEmail(subject="Welcome, Ada", html="<p>Hi Ada</p>", text="Hi Ada")


def test_missing_optional_field_can_fall_back_in_the_template() -> None:
    rendered = render_step("Hi {{ lead.first_name or 'friend' }}", None, "x", context(first_name=None))

    assert rendered.subject == "Hi friend"


# --- lead fields are data -------------------------------------------------------------------------


@pytest.mark.parametrize("payload", ["{{ 7*7 }}", "{% if true %}yes{% endif %}", "{# comment #}", "${7*7}"])
def test_template_syntax_in_a_lead_field_renders_literally(payload: str) -> None:
    rendered = render_step(
        "Hi {{ lead.first_name }}", "<p>{{ lead.first_name }}</p>", "{{ lead.first_name }}", context(payload)
    )

    assert rendered.subject == f"Hi {payload}"
    assert rendered.html == f"<p>{payload}</p>"
    assert rendered.text == payload


def test_expression_in_a_lead_field_is_never_evaluated() -> None:
    rendered = render_step("{{ lead.first_name }}", "{{ lead.first_name }}", None, context("{{ 7*7 }}"))

    assert "49" not in rendered.subject + (rendered.html or "") + rendered.text


def test_html_is_autoescaped() -> None:
    rendered = render_step("Hi", "<p>Hi {{ lead.first_name }}</p>", None, context('<script>alert("x")</script>'))

    assert rendered.html == "<p>Hi &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;</p>"
    assert "<script>" not in (rendered.html or "")


def test_attribute_values_in_html_are_escaped() -> None:
    rendered = render_step("Hi", '<a title="{{ lead.first_name }}">x</a>', None, context('" onmouseover="steal()'))

    assert 'onmouseover="' not in (rendered.html or "")
    assert "&#34; onmouseover=&#34;steal()" in (rendered.html or "")


def test_text_part_is_not_html_escaped() -> None:
    rendered = render_step("Hi", None, "Hi {{ lead.first_name }}", context("Tom & Jerry <3"))

    assert rendered.text == "Hi Tom & Jerry <3"


# --- subject --------------------------------------------------------------------------------------


def test_subject_never_contains_line_breaks_from_a_lead_field() -> None:
    rendered = render_step("Hi {{ lead.first_name }}", None, "x", context("Ada\r\nBcc: x@example.com"))

    assert "\r" not in rendered.subject
    assert "\n" not in rendered.subject
    assert rendered.subject == "Hi Ada Bcc: x@example.com"


@pytest.mark.parametrize("brk", ["\r", "\n", "\r\n", "\u2028", "\u2029", "\x85", "\n\n\r\n"])
def test_subject_replaces_every_kind_of_line_break_with_one_space(brk: str) -> None:
    rendered = render_step("{{ lead.first_name }}", None, "x", context(f"Ada{brk}Bcc: x@example.com"))

    assert rendered.subject == "Ada Bcc: x@example.com"


def test_subject_line_breaks_in_the_template_itself_are_removed_and_ends_trimmed() -> None:
    rendered = render_step("\n  Hello\nthere  \n", None, "x", {})

    assert rendered.subject == "Hello there"


def test_subject_is_not_html_escaped() -> None:
    rendered = render_step("Hi {{ lead.first_name }}", None, "x", context("O'Brien & <Co>"))

    assert rendered.subject == "Hi O'Brien & <Co>"


# --- text derived from HTML -----------------------------------------------------------------------


def test_text_part_is_derived_from_html_when_there_is_no_text_template() -> None:
    rendered = render_step(
        "Hi",
        "<p>Hi {{ lead.first_name }},</p><p>Read <a href='{{ unsubscribe_url }}'>this</a>.</p>",
        None,
        context(),
    )

    assert rendered.text == "Hi Ada,\n\nRead this (https://mail.example.com/u/abc).\n"


def test_derived_text_unescapes_entities_and_keeps_the_lead_field_as_typed() -> None:
    rendered = render_step("Hi", "<p>Hi {{ lead.first_name }} &amp; co</p>", None, context("<Ada>"))

    assert rendered.html == "<p>Hi &lt;Ada&gt; &amp; co</p>"
    assert rendered.text == "Hi <Ada> & co\n"


def test_explicit_text_template_wins_over_derived_text() -> None:
    rendered = render_step("Hi", "<p>html</p>", "plain", context())

    assert rendered.text == "plain"
    assert rendered.html == "<p>html</p>"


def test_step_without_html_has_no_html_part() -> None:
    assert render_step("Hi", None, "plain", context()).html is None


def test_html_to_text_drops_scripts_and_styles() -> None:
    text = html_to_text("<style>p{color:red}</style><p>Visible</p><script>steal()</script>")

    assert text == "Visible\n"


def test_html_to_text_keeps_links_in_parentheses_and_ignores_anchors_without_href() -> None:
    text = html_to_text('<p><a name="top">Top</a> and <a href="https://x.example/a?b=1&amp;c=2">go</a></p>')

    assert text == "Top and go (https://x.example/a?b=1&c=2)\n"


def test_html_to_text_separates_blocks_and_collapses_blank_lines() -> None:
    text = html_to_text("<h1>Title</h1>\n\n\n<div>One</div><br><ul><li>a</li><li>b</li></ul><p>   spaced    out </p>")

    assert "\n\n\n" not in text
    assert [line for line in text.splitlines() if line] == ["Title", "One", "a", "b", "spaced out"]
    assert text.endswith("\n")


def test_html_to_text_skips_comments_doctypes_and_unterminated_comments() -> None:
    text = html_to_text("<!DOCTYPE html><html><body><!-- secret --><p>Shown</p><p>tail <!-- never closed</body>")

    assert text == "Shown\n\ntail\n"


def test_html_to_text_unescapes_entities_once_and_keeps_a_bare_less_than() -> None:
    text = html_to_text("<p>Tom &amp; Jerry &lt;3 &copy; &#169;</p><p>a < b and c > d</p>")

    assert text == "Tom & Jerry <3 \u00a9 \u00a9\n\na < b and c > d\n"


def test_html_to_text_reads_unquoted_and_single_quoted_hrefs_and_ignores_markup_inside_attributes() -> None:
    text = html_to_text("<a href=https://u.example/x>u</a> <a href='https://s.example/?q=1'>s</a> <img alt='<p>'>end")

    assert text == "u (https://u.example/x) s (https://s.example/?q=1) end\n"


# --- sandbox --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "{{ lead.__class__ }}",
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ lead.__init__.__globals__ }}",
        "{{ lead.__dict__ }}",
        "{{ cycler.__init__.__globals__.os }}",
        "{{ self._TemplateReference__context }}",
    ],
)
def test_sandbox_blocks_access_to_python_internals(template: str) -> None:
    for subject, html, text in [(template, None, "x"), ("Hi", template, None), ("Hi", None, template)]:
        try:
            rendered = render_step(subject, html, text, context())
        except RenderError:
            continue
        leaked = rendered.subject + (rendered.html or "") + rendered.text
        assert "<class" not in leaked
        assert "&lt;class" not in leaked
        assert "function" not in leaked
        assert "module" not in leaked


def test_sandbox_refuses_dunder_access_with_a_render_error() -> None:
    with pytest.raises(RenderError, match="unsafe"):
        render_step("Hi {{ lead.__class__ }}", None, "x", context())


def test_sandbox_is_immutable_so_templates_cannot_modify_the_context() -> None:
    ctx = {"items": [1, 2]}

    with pytest.raises(RenderError):
        render_step("Hi", None, "{{ items.append(3) }}", ctx)

    assert ctx["items"] == [1, 2]


# --- errors ---------------------------------------------------------------------------------------


def test_undefined_variable_raises_render_error() -> None:
    with pytest.raises(RenderError, match="'missing' is undefined"):
        render_step("Hi {{ missing }}", None, "x", context())


@pytest.mark.parametrize(("html", "text"), [("<p>{{ lead.nickname }}</p>", None), (None, "{{ lead.nickname }}")])
def test_undefined_attribute_in_a_body_raises_render_error(html: str | None, text: str | None) -> None:
    with pytest.raises(RenderError):
        render_step("Hi", html, text, context())


def test_template_syntax_error_raises_render_error() -> None:
    with pytest.raises(RenderError, match="template error"):
        render_step("Hi {{ lead.first_name", None, "x", context())
