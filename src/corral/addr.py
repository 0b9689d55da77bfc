"""``HOST:PORT`` addresses, parsed once with clear errors."""

from __future__ import annotations

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
        the same fixed port (0 picks a free one) on the same host, or either host a
        wildcard (``0.0.0.0``, ``::``, which take the port on every address)."""
        if self.port == 0 or self.port != other.port:
            return False
        wildcards = {"0.0.0.0", "::", ""}
        return self.host == other.host or self.host in wildcards or other.host in wildcards

    def url(self, scheme: str = "http") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"
