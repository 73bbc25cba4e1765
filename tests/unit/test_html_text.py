"""html_to_text: the text part of an email whose step has only HTML."""

from __future__ import annotations

from services.common.html_text import html_to_text


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
