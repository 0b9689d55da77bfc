"""CORS on the inference listener, with llama-server's settings and answers.

Pure: an ``Origin`` in, header pairs out. The four settings carry llama-server's names
(``--cors-origins``, ``--cors-methods``, ``--cors-headers``, ``--cors-credentials``)
and, but for one, its defaults; llama-server answers (checked on the pinned build):

- a preflight (``OPTIONS``, any path, any key) with 200 and ``Allow-Origin``,
  ``Allow-Credentials`` (``true``/``false``), ``Allow-Methods`` and ``Allow-Headers``,
  the last two the configured text as is (not the requested headers);
- any other response with ``Allow-Origin`` only.

``Allow-Origin`` depends on ``--cors-origins``: ``*`` answers ``*``, or the request's
``Origin`` when credentials are allowed; ``localhost`` reflects an ``Origin`` whose
host is ``localhost``, ``127.0.0.1`` or ``[::1]`` and answers nothing to others.

Where Corral differs, on purpose:

- credentials are off by default (llama-server: on), and refused with ``*``
  (:class:`CorsError`): llama-server then reflects every origin with
  ``Allow-Credentials: true``, so any web page may use a visitor's cookies and HTTP
  authentication against the API. Credentials need a list of origins or
  ``localhost``; Corral never sends ``Allow-Credentials: true`` for every origin.
- a list of origins reflects the request's ``Origin`` when it is in the list and
  answers nothing otherwise; llama-server sends the list itself, which browsers
  refuse whenever it holds more than one origin.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from corral.config import BALANCER, default

_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


class CorsError(ValueError):
    """Settings that would let every origin use a visitor's credentials."""


@dataclass(frozen=True, slots=True)
class Cors:
    """The CORS settings; see the module docstring for the answers they give."""

    origins: str = default(BALANCER, "cors_origins")
    """Comma-separated allowed origins; ``*`` any; ``localhost`` local pages only."""
    methods: str = default(BALANCER, "cors_methods")
    """Sent as ``Access-Control-Allow-Methods`` in preflights."""
    headers: str = default(BALANCER, "cors_headers")
    """Sent as ``Access-Control-Allow-Headers`` in preflights."""
    credentials: bool = default(BALANCER, "cors_credentials")
    """Whether browsers may send cookies and HTTP authentication."""

    def __post_init__(self) -> None:
        """Raises :class:`CorsError` for credentials with any origin (``*``)."""
        if self.credentials and self.origins.strip() == "*":
            raise CorsError(
                "--cors-credentials with --cors-origins '*' would let any web page use a "
                "visitor's credentials; list the allowed origins (or 'localhost')"
            )

    def allow_origin(self, origin: str | None) -> str | None:
        """The ``Access-Control-Allow-Origin`` value for a request from ``origin``
        (``None``: no ``Origin`` header), or ``None`` to send no such header."""
        allowed = self.origins.strip()
        if allowed == "*":
            return "*"  # never with credentials (__post_init__)
        if origin is None:
            return None
        if allowed == "localhost":
            return origin if _is_local(origin) else None
        listed = {part.strip().rstrip("/") for part in allowed.split(",") if part.strip()}
        return origin if origin.rstrip("/") in listed else None

    def response_headers(self, origin: str | None) -> list[tuple[str, str]]:
        """The CORS headers of an ordinary (not preflight) response."""
        value = self.allow_origin(origin)
        return [] if value is None else [("Access-Control-Allow-Origin", value)]

    def preflight_headers(self, origin: str | None) -> list[tuple[str, str]]:
        """The headers of the 200 answer to a preflight (``OPTIONS``)."""
        return [
            *self.response_headers(origin),
            ("Access-Control-Allow-Credentials", "true" if self.credentials else "false"),
            ("Access-Control-Allow-Methods", self.methods),
            ("Access-Control-Allow-Headers", self.headers),
        ]


def _is_local(origin: str) -> bool:
    try:
        host = urlsplit(origin).hostname
    except ValueError:
        return False
    return host in _LOCAL_HOSTS
