"""``HOST:PORT`` addresses, parsed once with clear errors."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


class AddressError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Addr:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, *, default_host: str = "127.0.0.1") -> Addr:
        """Parse ``HOST:PORT``, ``:PORT`` or ``[IPv6]:PORT``; a URL scheme is refused."""
        value = text.strip()
        if "://" in value:
            raise AddressError(f"{text!r}: give HOST:PORT, not a URL")
        host, sep, port_text = value.rpartition(":")
        if not sep:
            raise AddressError(f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
        host = host.strip("[]") or default_host
        try:
            port = int(port_text)
        except ValueError:
            raise AddressError(f"{text!r}: port {port_text!r} is not a number") from None
        if not 0 <= port <= 65535:
            raise AddressError(f"{text!r}: port {port} is out of range 0-65535")
        return cls(host, port)

    def clashes(self, other: Addr) -> bool:
        """Whether a listener on ``other`` could not bind beside one on this address:
        the same fixed port (0 picks a free one) on the same host, or on a wildcard of
        the other's family (``0.0.0.0`` takes the port on every IPv4 address, ``::`` on
        every IPv6 one: asyncio binds IPv6 sockets IPv6-only). A host name may resolve
        to either family."""
        if self.port == 0 or self.port != other.port:
            return False
        if self.host == other.host:
            return True
        for wildcard, host in ((self.host, other.host), (other.host, self.host)):
            if wildcard in ("0.0.0.0", "") and "v4" in _families(host):
                return True
            if wildcard == "::" and "v6" in _families(host):
                return True
        return False

    def url(self, scheme: str = "http") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _families(host: str) -> set[str]:
    """``{"v4"}``, ``{"v6"}``, or both for a name (it may resolve to either)."""
    try:
        return {f"v{ipaddress.ip_address(host).version}"}
    except ValueError:
        return {"v4", "v6"}
