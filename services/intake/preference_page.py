"""The preference page as HTML: a plain form that works without JavaScript, in the subscriber's language.

Pure functions (no web framework): the route in ``services.intake.tracking`` picks the language and
serves what these return with :data:`CONTENT_SECURITY_POLICY`. Every value that comes from data — the
masked address, the first name, a Sequence's display name — is escaped where it is written; the only
style is :data:`STYLE`, allowed by its hash, and there is no script at all.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from collections.abc import Mapping
from dataclasses import dataclass

from services.intake.preferences import Preferences

# Contrast (WCAG 2.1 AA: 4.5:1 for text, 3:1 for controls and focus rings): #1f2328 on white 15.8:1,
# #57606a on white 6.4:1, white on #0b57d0 6.4:1 (9.1:1 on hover), the #0b57d0 focus ring on white 6.4:1,
# borders #8c959f 3.0:1. A visible focus ring for keyboard users; 44 px targets; one column on a phone.
STYLE = (
    "body{font:1rem/1.5 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1f2328;background:#fff;"
    "margin:0;padding:1rem}"
    "main{max-width:34rem;margin:2rem auto}"
    "h1{font-size:1.5rem;line-height:1.25}"
    ".muted{color:#57606a}"
    "fieldset{border:1px solid #8c959f;border-radius:.5rem;padding:.75rem 1rem;margin:1rem 0}"
    "legend{font-weight:600;padding:0 .25rem}"
    ".choice{display:flex;gap:.75rem;align-items:flex-start;padding:.5rem 0}"
    ".choice input{width:1.25rem;height:1.25rem;margin:.15rem 0 0;flex:none}"
    "button{font:inherit;font-weight:600;color:#fff;background:#0b57d0;border:0;border-radius:.5rem;"
    "padding:.75rem 1.25rem;min-height:2.75rem;cursor:pointer}"
    "button:hover{background:#0842a0}"
    ":focus-visible{outline:3px solid #0b57d0;outline-offset:2px}"
    "[role=status]{border-left:4px solid #1a7f37;padding:.5rem 1rem;background:#f0fff4}"
    "@media (max-width:30rem){main{margin:0}button{width:100%}}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
"""No script, no image, no frame; the one inline stylesheet by its hash; the form posts back to this origin."""

PAGE_HEADERS = {
    "Cache-Control": "no-store, private",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}

# The form's field names (also what the route parses).
FORM_MARKER = "form"
FORM_MARKER_VALUE = "preferences"
KEEP_FIELD = "keep"
EVERYTHING_FIELD = "everything"

_ENGLISH = {
    "title": "Email preferences",
    "greeting": "Hello {name},",
    "for_address": "These settings are for {address}.",
    "intro": "Untick what you no longer want to receive, then save.",
    "legend": "Your subscriptions",
    "none": "You are not receiving any email series from us right now.",
    "everything": "Unsubscribe from everything",
    "everything_hint": "You will receive no more emails from us at all.",
    "save": "Save preferences",
    "saved": "Your preferences are saved.",
    "suppressed": "You are unsubscribed from all our emails.",
    "unsubscribed_title": "You are unsubscribed",
    "unsubscribed_global": "You will not receive these emails again.",
    "unsubscribed_sequence": (
        "You will receive no more emails of this series. Your other subscriptions stay as they are."
    ),
    "gone": "There is nothing left to change: we hold no data for this address any more.",
}
_GERMAN = {
    "title": "E-Mail-Einstellungen",
    "greeting": "Hallo {name},",
    "for_address": "Diese Einstellungen gelten für {address}.",
    "intro": "Entfernen Sie das Häkchen bei allem, was Sie nicht mehr erhalten möchten, und speichern Sie.",
    "legend": "Ihre Abonnements",
    "none": "Sie erhalten derzeit keine E-Mail-Serie von uns.",
    "everything": "Von allem abmelden",
    "everything_hint": "Sie erhalten dann überhaupt keine E-Mails mehr von uns.",
    "save": "Einstellungen speichern",
    "saved": "Ihre Einstellungen sind gespeichert.",
    "suppressed": "Sie sind von allen unseren E-Mails abgemeldet.",
    "unsubscribed_title": "Sie sind abgemeldet",
    "unsubscribed_global": "Sie erhalten diese E-Mails nicht mehr.",
    "unsubscribed_sequence": "Sie erhalten keine E-Mails dieser Serie mehr. Ihre anderen Abonnements bleiben bestehen.",
    "gone": "Hier gibt es nichts mehr zu ändern: Wir speichern keine Daten zu dieser Adresse mehr.",
}
TRANSLATIONS: Mapping[str, Mapping[str, str]] = {"en": _ENGLISH, "de": _GERMAN}
DEFAULT_LANGUAGE = "en"

_LANGUAGE_RANGE = re.compile(r"^\s*([A-Za-z]{1,8})(?:-[A-Za-z0-9]{1,8})*\s*(?:;\s*q\s*=\s*([01](?:\.\d{0,3})?))?\s*$")


def _primary(tag: str | None) -> str | None:
    if not tag:
        return None
    language = tag.split("-", 1)[0].strip().lower()
    return language if language in TRANSLATIONS else None


def choose_language(lead_locale: str | None, accept_language: str | None) -> str:
    """The page's language: the lead's own locale where a translation exists, else the browser's most
    preferred language that has one (Accept-Language), else English."""
    chosen = _primary(lead_locale)
    if chosen:
        return chosen
    ranked: list[tuple[float, int, str]] = []
    for index, item in enumerate((accept_language or "").split(",")[:20]):
        match = _LANGUAGE_RANGE.match(item)
        if match and (language := _primary(match.group(1))):
            quality = float(match.group(2)) if match.group(2) else 1.0
            if quality > 0:
                ranked.append((-quality, index, language))
    return min(ranked)[2] if ranked else DEFAULT_LANGUAGE


@dataclass(frozen=True)
class Notice:
    """A line announced above the form (``role=status``) after a change."""

    key: str


def _document(language: str, title: str, body: str) -> str:
    return (
        f'<!doctype html><html lang="{language}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<meta name="robots" content="noindex,nofollow">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
        f"<body><main>{body}</main></body></html>"
    )


def render_preferences(preferences: Preferences, language: str, notice: Notice | None = None) -> str:
    """The page: who it is for, one checkbox per Sequence still running (ticked), "unsubscribe from
    everything", and a save button; a form posting back to the same URL."""
    text = TRANSLATIONS.get(language, _ENGLISH)
    esc = html.escape
    parts = [f"<h1>{esc(text['title'])}</h1>"]
    if notice is not None:
        parts.append(f'<p role="status">{esc(text[notice.key])}</p>')
    if preferences.first_name:
        parts.append(f"<p>{esc(text['greeting'].format(name=preferences.first_name))}</p>")
    parts.append(f'<p class="muted">{esc(text["for_address"].format(address=preferences.masked_address))}</p>')
    if preferences.suppressed:
        parts.append(f"<p>{esc(text['suppressed'])}</p>")
        return _document(language, text["title"], "".join(parts))
    parts.append(f"<p>{esc(text['intro'])}</p>")
    parts.append(f'<form method="post"><input type="hidden" name="{FORM_MARKER}" value="{FORM_MARKER_VALUE}">')
    parts.append(f"<fieldset><legend>{esc(text['legend'])}</legend>")
    if not preferences.subscriptions:
        parts.append(f'<p class="muted">{esc(text["none"])}</p>')
    for index, subscription in enumerate(preferences.subscriptions):
        parts.append(
            f'<div class="choice"><input type="checkbox" id="keep-{index}" name="{KEEP_FIELD}" '
            f'value="{esc(str(subscription.sequence_id))}" checked>'
            f'<label for="keep-{index}">{esc(subscription.display_name)}</label></div>'
        )
    parts.append("</fieldset>")
    parts.append(
        f'<div class="choice"><input type="checkbox" id="everything" name="{EVERYTHING_FIELD}" value="yes" '
        f'aria-describedby="everything-hint"><label for="everything">{esc(text["everything"])}'
        f'<br><span id="everything-hint" class="muted">{esc(text["everything_hint"])}</span></label></div>'
    )
    parts.append(f'<p><button type="submit">{esc(text["save"])}</button></p></form>')
    return _document(language, text["title"], "".join(parts))


def render_unsubscribed(language: str, scope: str) -> str:
    """The answer to a one-click unsubscribe: everything, or this Sequence only."""
    text = TRANSLATIONS.get(language, _ENGLISH)
    detail = text["unsubscribed_sequence"] if scope == "Sequence" else text["unsubscribed_global"]
    body = f"<h1>{html.escape(text['unsubscribed_title'])}</h1><p>{html.escape(detail)}</p>"
    return _document(language, text["unsubscribed_title"], body)


def render_gone(language: str) -> str:
    """The page for a link whose message no longer exists (its lead was erased)."""
    text = TRANSLATIONS.get(language, _ENGLISH)
    return _document(
        language, text["title"], f"<h1>{html.escape(text['title'])}</h1><p>{html.escape(text['gone'])}</p>"
    )
