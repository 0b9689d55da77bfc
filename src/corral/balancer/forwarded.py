"""Who the client was: the ``X-Forwarded-*`` and ``Forwarded`` headers sent upstream.

A proxy tells the server behind it the client's address (``X-Forwarded-For``, RFC
7239's ``for=``), the scheme the client used (``X-Forwarded-Proto``, ``proto=``)
and the ``Host`` it asked for (``X-Forwarded-Host``, ``host=``), since the server
itself sees only the proxy's connection and the ``Host`` the proxy sends.

Anyone can write these headers, so the ones a request arrives with count only when
the peer that sent it is a trusted proxy (``forwarded_allow_ips``; uvicorn's
``--forwarded-allow-ips``, whose default, ``127.0.0.1``, is borrowed here). From a
trusted peer the balancer appends its own hop to the chain; from any other peer it
replaces them, so a client cannot make the server believe it came from elsewhere.

Pure functions over header pairs; the proxy calls :func:`forwarded_lines` once per
request.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable

Header = tuple[bytes, bytes]

FORWARDED_HEADERS = frozenset(
    {b"forwarded", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-real-ip"}
)
"""Incoming headers about earlier hops: never passed through as they are; see
:func:`forwarded_lines`."""

DEFAULT_ALLOW = ("127.0.0.1",)
"""uvicorn's default for ``--forwarded-allow-ips``."""

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
"""A token (RFC 9110 §5.6.2): a ``Forwarded`` value that needs no quotes."""


class ProxyTrust:
    """Which peers' forwarded headers are believed.

    Args:
        allow: IP addresses (``127.0.0.1``, ``::1``), networks (``10.0.0.0/8``) or
            ``*`` (every peer; only behind a proxy that always replaces them).

    Raises:
        ValueError: an entry that is none of these.
    """

    __slots__ = ("_addresses", "_all", "_networks")

    def __init__(self, allow: Iterable[str] = DEFAULT_ALLOW) -> None:
        self._all = False
        addresses: set[str] = set()
        networks = []
        for entry in (e.strip() for e in allow):
            if not entry:
                continue
            if entry == "*":
                self._all = True
            elif "/" in entry:
                networks.append(ipaddress.ip_network(entry, strict=False))
            else:
                addresses.add(str(ipaddress.ip_address(entry)))
        self._addresses = frozenset(addresses)
        self._networks = tuple(networks)

    def trusts(self, peer: str) -> bool:
        """Whether ``peer`` (an IP address as the socket reports it) is trusted."""
        if self._all or peer in self._addresses:
            return True
        if not self._networks:
            return False
        try:
            ip = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(ip in net for net in self._networks)

    def __repr__(self) -> str:
        allowed = ["*"] if self._all else [*sorted(self._addresses), *map(str, self._networks)]
        return f"<ProxyTrust {', '.join(allowed) or 'nobody'}>"


def _node(value: str) -> str:
    """A ``Forwarded`` parameter value: a token as it is, anything else quoted (RFC
    7239 §4; IPv6 addresses in brackets, §6). Values here never hold ``"`` or ``\\``
    (the HTTP server rejects such a ``Host``)."""
    if value.count(":") > 1 and not value.startswith("["):
        value = f"[{value}]"  # an IPv6 address
    return value if _TOKEN.fullmatch(value) else f'"{value}"'


@functools.lru_cache(maxsize=256)
def _element(peer: str, host: bytes | None, proto: str) -> bytes:
    """This hop's ``Forwarded`` element; clients and hosts are few, so it is kept."""
    element = "for=" + _node(peer)
    if host is not None:
        element += ";host=" + _node(host.decode("latin-1"))
    return (element + ";proto=" + proto).encode("latin-1", "replace")


def forwarded_lines(
    incoming: dict[bytes, list[bytes]],
    peer: str,
    host: bytes | None,
    trusted: bool,
    proto: str = "http",
) -> bytes:
    """The forwarded header lines to send upstream for one request.

    Args:
        incoming: the request's :data:`FORWARDED_HEADERS`, by lower-case name, each
            with its values in order.
        peer: the address of the client's connection.
        host: the request's ``Host`` value (``None`` for an HTTP/1.0 request without).
        trusted: whether ``peer`` is a trusted proxy (:meth:`ProxyTrust.trusts`).
        proto: the scheme of the client's connection (``https`` over TLS).

    Returns:
        ``Name: value\\r\\n`` lines: ``X-Forwarded-For``, ``X-Forwarded-Proto``,
        ``X-Forwarded-Host`` (when there is a host) and ``Forwarded``; from a trusted
        peer, its ``X-Forwarded-For`` and ``Forwarded`` chains with this hop appended
        and its proto, host and ``X-Real-IP`` kept.
    """
    addr = peer.encode("latin-1", "replace")
    element = _element(peer, host, proto)
    xff, scheme, xhost, fwd, real = addr, proto.encode(), host, element, None
    if trusted and incoming:
        if chain := incoming.get(b"x-forwarded-for"):
            xff = b", ".join([*chain, addr])
        if chain := incoming.get(b"forwarded"):
            fwd = b", ".join([*chain, element])
        if values := incoming.get(b"x-forwarded-proto"):
            scheme = values[0]
        if values := incoming.get(b"x-forwarded-host"):
            xhost = values[0]
        if values := incoming.get(b"x-real-ip"):
            real = values[0]
    out = b"X-Forwarded-For: " + xff + b"\r\nX-Forwarded-Proto: " + scheme + b"\r\n"
    if xhost is not None:
        out += b"X-Forwarded-Host: " + xhost + b"\r\n"
    out += b"Forwarded: " + fwd + b"\r\n"
    if real is not None:
        out += b"X-Real-IP: " + real + b"\r\n"
    return out
