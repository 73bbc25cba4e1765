"""The links in a sent email: click rewriting, the open pixel, the unsubscribe footer, and which
tracking requests count as automated."""

from __future__ import annotations

import html
import re
import uuid
from urllib.parse import quote

import pytest

from services.common.message_links import MessageLinks, add_open_pixel, add_unsubscribe_footer, track_clicks
from services.common.tokens import Purpose, verify_token
from services.intake.engagement import is_automated

SECRET = "3f1b9c2e7d4a6f8b0c1e2d3a4b5c6d7e8f9a0b1c"
LINKS = MessageLinks("https://go.example.com/", SECRET, uuid.UUID("6f1c2b3a-4d5e-4f60-8a9b-0c1d2e3f4a5b"))


def hrefs(markup: str) -> list[str]:
    return [html.unescape(h) for h in re.findall(r'href="([^"]*)"', markup)]


def test_http_links_point_at_a_click_redirect_bound_to_the_original_url() -> None:
    markup = '<p><a class="x" href="https://example.com/a?b=1&amp;c=2">go</a></p>'

    [href] = hrefs(track_clicks(markup, LINKS))

    assert href.startswith("https://go.example.com/t/c/")
    token = href.rsplit("/", 1)[1]
    assert verify_token(token, Purpose.CLICK, [SECRET]).url == "https://example.com/a?b=1&c=2"


@pytest.mark.parametrize("target", ["mailto:a@example.com", "tel:+123", "#top", "/relative"])
def test_other_links_are_left_alone(target: str) -> None:
    markup = f'<a href="{target}">x</a>'

    assert track_clicks(markup, LINKS) == markup


def test_the_unsubscribe_link_is_not_click_tracked() -> None:
    markup = f'<a href="{html.escape(LINKS.unsubscribe_url)}">unsubscribe</a>'

    assert hrefs(track_clicks(markup, LINKS)) == [LINKS.unsubscribe_url]


def test_the_open_pixel_goes_before_the_end_of_the_body() -> None:
    marked = add_open_pixel("<html><body><p>Hi</p></body></html>", LINKS)

    assert re.search(r'<img src="https://go\.example\.com/t/o/[^"]+" width="1" height="1"[^>]*></body>', marked)


def test_an_unsubscribe_footer_is_added_unless_the_template_has_the_link() -> None:
    text, markup = add_unsubscribe_footer("Hi\n", "<p>Hi</p>", LINKS)
    assert LINKS.unsubscribe_url in text
    assert LINKS.unsubscribe_url in hrefs(markup or "")

    own = f"Bye {LINKS.unsubscribe_url}\n"
    assert add_unsubscribe_footer(own, None, LINKS) == (own, None)


@pytest.mark.parametrize(
    ("agent", "method", "automated"),
    [
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36", "GET", False),
        ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148", "GET", False),
        ("Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)", "GET", True),
        ("Mozilla/5.0", "GET", True),  # Apple Mail Privacy Protection
        ("YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html", "GET", True),
        ("Mozilla/5.0 (compatible; Barracuda Sentinel)", "GET", True),
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/120.0", "HEAD", True),
        (None, "GET", True),
        ("", "GET", True),
    ],
)
def test_privacy_proxies_and_link_scanners_are_flagged(agent: str | None, method: str, automated: bool) -> None:
    assert is_automated(agent, method) is automated


def test_the_mailto_subject_is_the_percent_encoded_unsubscribe_token() -> None:
    for number in range(200):
        links = MessageLinks("https://go.example.com/", SECRET, uuid.UUID(int=number * 0x9E3779B97F4A7C15))
        token = links.unsubscribe_url.rsplit("/", 1)[1]

        assert (
            links.unsubscribe_mailto("u@example.com") == f"mailto:u@example.com?subject={quote('unsubscribe ' + token)}"
        )
