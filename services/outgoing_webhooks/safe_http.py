"""Sending one webhook request without being turned against the platform's own network.

* The host is resolved **once per attempt**, every address checked
  (:func:`services.common.webhook_addresses.address_refusal`), and the connection made **to that
  checked address** with the name kept as the ``Host`` header and the TLS server name (SNI, and the
  name the certificate is verified against). A name that resolves elsewhere between a check and the
  connection (DNS rebinding) therefore cannot reach a private address. ``allow_private_networks``
  lifts the address check only.
* Redirects are never followed (a 3xx is a failed attempt), proxies from the environment are ignored
  (a proxy would connect on the platform's behalf, unchecked), connections are not kept alive (two
  names served from one address must not share a TLS session made for one of them).
* The whole attempt, from resolving to the last byte read, is bounded by ``timeout_s``; at most
  ``MAX_BODY_BYTES`` of the response body are read (raw, not decompressed), the rest is dropped.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx

from services.common.webhook_addresses import address_refusal

MAX_BODY_BYTES = 1024
USER_AGENT = "healingwork-webhooks/1"

# (host, port) -> the host's addresses as text. The default asks the system's resolver; tests inject
# one they control, to play a rebinding name.
Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses the system's resolver gives for ``host`` (TCP), in its order, without repeats."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class AttemptFailed(Exception):
    """No HTTP answer: refused address, unresolvable name, connection error or timeout. ``kind`` is
    ``refused`` for a refused address, ``error`` otherwise; the message says what happened."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Answer:
    """What the endpoint answered: the status and at most ``MAX_BODY_BYTES`` of the body."""

    status: int
    body: bytes

    @property
    def succeeded(self) -> bool:
        return 200 <= self.status < 300


class SafeHttpClient:
    """POSTs webhook bodies by the rules of the module docstring. Use as ``async with``."""

    def __init__(
        self,
        *,
        allow_private_networks: bool,
        timeout_s: float = 10.0,
        resolver: Resolver = system_resolver,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``tls``: how certificates are verified (default: the system's trusted CAs; tests pass a
        context trusting their own CA). The name is always checked against the certificate."""
        self.allow_private_networks = allow_private_networks
        self.timeout_s = timeout_s
        self.resolver = resolver
        self._client = httpx.AsyncClient(
            follow_redirects=False,
            timeout=httpx.Timeout(timeout_s),
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
            verify=tls if tls is not None else True,
        )

    async def __aenter__(self) -> SafeHttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Answer:
        """POST ``body`` to ``url``; the answer, or :class:`AttemptFailed` when there was none."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._post(url, body, headers)
        except TimeoutError:
            raise AttemptFailed("error", f"no answer within {self.timeout_s:g} s") from None
        except httpx.HTTPError as error:
            raise AttemptFailed("error", f"{type(error).__name__}: {error}"[:300]) from None

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> Answer:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        address = await self._checked_address(host, port)
        literal = f"[{address}]" if ":" in address else address
        netloc = literal if parts.port is None else f"{literal}:{parts.port}"
        target = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        request = self._client.build_request(
            "POST",
            target,
            content=body,
            headers={
                **headers,
                "Host": parts.netloc,
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
            },
            extensions={"sni_hostname": host} if parts.scheme == "https" else {},
        )
        response = await self._client.send(request, stream=True, follow_redirects=False)
        try:
            kept = bytearray()
            async for chunk in response.aiter_raw():
                kept += chunk[: MAX_BODY_BYTES - len(kept)]
                if len(kept) >= MAX_BODY_BYTES:
                    break
        finally:
            await response.aclose()
        return Answer(status=response.status_code, body=bytes(kept))

    async def _checked_address(self, host: str, port: int) -> str:
        """The address to connect to: ``host`` itself when it is an IP address, else its first
        resolved address; every address is checked (one private answer refuses the name)."""
        try:
            addresses = [str(ipaddress.ip_address(host))]
        except ValueError:
            try:
                addresses = await self.resolver(host, port)
            except OSError as error:
                raise AttemptFailed("error", f"cannot resolve {host}: {error}") from None
        if not addresses:
            raise AttemptFailed("error", f"{host} has no address")
        if not self.allow_private_networks:
            for address in addresses:
                refusal = address_refusal(address)
                if refusal is not None:
                    raise AttemptFailed("refused", f"refused: {host} resolves to {refusal}")
        return addresses[0]
