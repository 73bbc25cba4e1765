"""render_step: sandboxed Jinja2 where lead fields are data, never template code, and the output is bounded."""

from __future__ import annotations

import tracemalloc
from dataclasses import dataclass
from typing import Any

import pytest

from services.common.templates import (
    MAX_BODY_CHARS,
    MAX_SUBJECT_CHARS,
    RenderedEmail,
    RenderError,
    TemplateLead,
    render_step,
    template_context,
)


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


# --- failures of any kind are render errors ---------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "error"),
    [
        ("{{ 10 // 0 }}", "ZeroDivisionError"),
        ("{{ 10 % 0 }}", "ZeroDivisionError"),
        ("{{ [1, 'a'] | sort }}", "TypeError"),
        ("{{ '%d' | format('x') }}", "TypeError"),
        ("{{ 'x' | wordwrap(0) }}", "ValueError"),
        ("{{ (2.0 ** 5000) }}", "OverflowError"),
        ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "RecursionError"),
    ],
)
def test_any_exception_a_template_raises_is_a_render_error_naming_it_and_the_part(template: str, error: str) -> None:
    for subject, html, text, part in [(template, None, "x", "subject"), ("Hi", template, None, "html")]:
        with pytest.raises(RenderError, match=f"^template error: {error}.*\\(in the {part}\\)$"):
            render_step(subject, html, text, context())


def test_a_template_error_names_the_part_it_is_in() -> None:
    with pytest.raises(RenderError, match=r"'missing' is undefined \(in the text\)$"):
        render_step("Hi", "<p>ok</p>", "{{ missing }}", context())


# --- the context ------------------------------------------------------------------------------------


def test_the_context_offers_the_lead_the_sequence_and_the_unsubscribe_url() -> None:
    lead = TemplateLead(email="ada@example.com", first_name="Ada", last_name=None, source="website")

    built = template_context(lead, "welcome", "hello", "https://go.example.com/u/t")

    assert built == {
        "lead": {"email": "ada@example.com", "first_name": "Ada", "last_name": None, "source": "website"},
        "sequence": {"name": "welcome", "step": "hello"},
        "unsubscribe_url": "https://go.example.com/u/t",
    }


# --- limits ---------------------------------------------------------------------------------------


def refused_without_building(subject: str, html: str | None, text: str | None, match: str) -> None:
    """The render fails with ``match`` and never holds more than a few MiB: nothing huge was built."""
    tracemalloc.start()
    try:
        with pytest.raises(RenderError, match=match):
            render_step(subject, html, text, context())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024


@pytest.mark.parametrize(
    "template",
    [
        '{{ "a" * 50000000 }}',
        '{{ 50000000 * "a" }}',
        "{{ [0] * 50000000 }}",
        '{{ "%50000000s" % "a" }}',
        '{{ "%.50000000f" % 1.5 }}',
        '{{ "{:>50000000}".format("a") }}',
        '{{ "{:>{}}".format("a", 50000000) }}',
        '{{ "a" | center(50000000) }}',
        '{{ "a".ljust(50000000) }}',
        '{{ "a".zfill(50000000) }}',
        '{{ ("\t" * 1000).expandtabs(100000) }}',
        '{{ ("x" * 100000) | replace("x", "y" * 1000) }}',
        '{{ ("x" * 100000).replace("", "yyyyyyyyyyyyyyyyyyyy") }}',
        '{{ ("\n" * 100000) | indent(1000) }}',
        '{{ ("x" * 1000000) | wordwrap(1, wrapstring="-----") }}',
        '{{ (["x" * 100000] * 100) | join }}',
        '{{ ("x" * 100000).join(["y"] * 100) }}',
        '{{ (["x" * 100000] * 100) | join(",") }}',
        '{% set ns = namespace(x="ab") %}{% for i in range(40) %}{% set ns.x = ns.x ~ ns.x %}{% endfor %}',
        '{% set ns = namespace(x="ab") %}{% for i in range(40) %}{% set ns.x = ns.x + ns.x %}{% endfor %}',
        "{{ lipsum(100000) }}",
    ],
)
def test_a_template_that_would_build_a_huge_value_is_refused_before_it_is_built(template: str) -> None:
    refused_without_building("Hi", None, template, "over the limit")


@pytest.mark.parametrize(
    "template",
    [
        "{{ 10 ** 100000 }}",
        "{% set ns = namespace(x=2 ** 4000) %}{% for i in range(20) %}{% set ns.x = ns.x * ns.x %}{% endfor %}",
    ],
)
def test_integers_are_bounded_in_bits(template: str) -> None:
    refused_without_building("Hi", None, template, "over the limit of 4096 bits")


@pytest.mark.parametrize("count", ["200000", "10 ** 30", "0, 10 ** 30, 7"])
def test_a_huge_range_is_refused(count: str) -> None:
    refused_without_building("Hi", None, f"{{% for i in range({count}) %}}{{% endfor %}}", "a range is over the limit")


def test_nested_loops_share_one_budget_of_iterations() -> None:
    nested = "{% for i in range(1000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}"

    refused_without_building("Hi", None, nested, "loops and macro calls ran over the limit of 100,000 iterations")


def test_recursive_macros_share_the_budget_at_ten_iterations_a_call() -> None:
    doubling = "{% macro m(n) %}{% if n %}{{ m(n - 1) }}{{ m(n - 1) }}{% else %}x{% endif %}{% endmacro %}{{ m(N) }}"

    assert render_step("Hi", None, doubling.replace("N", "12"), {}).text == "x" * 4096  # 8,191 calls
    with pytest.raises(RenderError, match="loops and macro calls ran over the limit"):
        render_step("Hi", None, doubling.replace("N", "30"), {})


@pytest.mark.parametrize(
    "template",
    [
        # Small in memory (one string, referenced many times), huge as text.
        '{{ ["x" * 1000000] * 1000 }}',
        '{% set big = ["x" * 1000000] %}{{ (big + big) | string }}',
        '{% set ns = namespace(x=["x" * 100000]) %}{% for i in range(30) %}{% set ns.x = [ns.x, ns.x] %}{% endfor %}'
        "{{ ns.x }}",
        '{% set ns = namespace(x=["x" * 100000]) %}{% for i in range(30) %}{% set ns.x = [ns.x, ns.x] %}{% endfor %}'
        '{{ ns.x ~ "" }}',
        '{% set ns = namespace(x=["x" * 100000]) %}{% for i in range(30) %}{% set ns.x = [ns.x, ns.x] %}{% endfor %}'
        '{{ "{}".format(ns.x) }}',
        '{% set ns = namespace(x=["x" * 100000]) %}{% for i in range(30) %}{% set ns.x = [ns.x, ns.x] %}{% endfor %}'
        "{{ ns.x | tojson }}",
        '{% set ns = namespace(x=["x" * 100000]) %}{% for i in range(30) %}{% set ns.x = {"a": ns.x, "b": ns.x} %}'
        "{% endfor %}{{ ns }}",
    ],
)
def test_nested_values_are_weighed_as_the_text_they_would_become(template: str) -> None:
    refused_without_building("Hi", None, template, "over the limit")


def test_loops_within_the_budget_render_and_know_their_length() -> None:
    rendered = render_step("Hi", None, "{% for i in range(3) %}{{ loop.index }}/{{ loop.length }} {% endfor %}", {})

    assert rendered.text == "1/3 2/3 3/3 "


def test_output_streamed_past_the_body_limit_stops_the_render() -> None:
    big_loop = '{% for i in range(100000) %}{{ "x" * 100 }}{% endfor %}'  # 10 MB of output, 100 B at a time

    refused_without_building("Hi", None, big_loop, r"the text is over the limit of 1,048,576 characters")


def test_a_body_at_the_limit_renders() -> None:
    rendered = render_step("Hi", None, f'{{{{ "x" * {MAX_BODY_CHARS} }}}}', {})

    assert len(rendered.text) == MAX_BODY_CHARS


def test_a_subject_over_998_characters_is_refused() -> None:
    assert len(render_step(f'{{{{ "s" * {MAX_SUBJECT_CHARS} }}}}', None, "x", {}).subject) == MAX_SUBJECT_CHARS
    with pytest.raises(RenderError, match="the subject is 999 characters, over the limit of 998"):
        render_step(f'{{{{ "s" * {MAX_SUBJECT_CHARS + 1} }}}}', None, "x", {})
