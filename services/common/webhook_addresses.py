"""Where outgoing webhooks may go: an http(s) URL whose host is a public address.

Loopback, private (RFC 1918, unique-local), link-local (which holds the cloud metadata services at
169.254.169.254 and fd00:ec2::254), shared (100.64/10, Alibaba's metadata at 100.100.100.200),
multicast, reserved and unspecified addresses are refused, and so are IPv4 addresses wrapped in IPv6.
The registration checks the URL's own host (:func:`check_webhook_url`); the delivery checks every
address the name resolves to, at connect time (``services.outgoing_webhooks.safe_http``), because a
name checked once can resolve elsewhere later (DNS rebinding). ``WEBHOOK_ALLOW_PRIVATE_NETWORKS=true``
(``healingwork dev``, tests) lifts the address rule, never the others.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

MAX_URL_LENGTH = 2048
# Names that are private whatever DNS says about them (RFC 6761, RFC 6762, common cluster-internal suffixes).
_PRIVATE_NAME_SUFFIXES = (".localhost", ".local", ".internal", ".cluster.local")


class RefusedWebhookUrl(ValueError):
    """The URL is not one outgoing webhooks may be sent to; the message says why."""


def address_refusal(address: str) -> str | None:
    """Why ``address`` (an IP address as text) may not receive webhooks, or None when it is public."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None:
            return address_refusal(str(embedded))
    if ip.is_loopback:
        return f"{ip} is a loopback address"
    if ip.is_link_local:
        return f"{ip} is a link-local address (cloud metadata services live there)"
    if ip.is_private or not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_unspecified:
        return f"{ip} is not a public address"
    return None


def check_webhook_url(url: str, *, allow_private_networks: bool) -> str:
    """``url`` if outgoing webhooks may be registered for it; raises :class:`RefusedWebhookUrl`.

    A host given as an IP address (or a name that is private by definition, such as ``localhost``) is
    checked here; a name's addresses are checked at every delivery, when it is resolved."""
    if len(url) > MAX_URL_LENGTH:
        raise RefusedWebhookUrl(f"must be at most {MAX_URL_LENGTH} characters")
    if any(ord(character) <= 0x20 or ord(character) == 0x7F for character in url):
        raise RefusedWebhookUrl("must not contain spaces or control characters (percent-encode them)")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as error:
        raise RefusedWebhookUrl(f"is not a valid URL ({error})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RefusedWebhookUrl("must be an absolute http(s) URL such as https://hooks.example.com/healingwork")
    if parts.username is not None or parts.password is not None:
        raise RefusedWebhookUrl("must not carry credentials (user:password@); the signature authenticates")
    if parts.fragment:
        raise RefusedWebhookUrl("must not have a #fragment")
    if allow_private_networks:
        return url
    host = parts.hostname.rstrip(".").lower()
    if host == "localhost" or host.endswith(_PRIVATE_NAME_SUFFIXES):
        raise RefusedWebhookUrl(f"points to {host}, a private name")
    try:
        refusal = address_refusal(host)
    except ValueError:
        return url  # a name: checked when it is resolved, at every delivery
    if refusal is not None:
        raise RefusedWebhookUrl(f"points to {refusal}")
    return url
