"""TLS contexts for the balancer's listeners and the agent's links, built once with
clear errors.

The balancer serves both listeners (inference and management) with one certificate
(``--tls-cert``, ``--tls-key``); agents connect over ``wss://`` and verify it against
the system's CAs or a CA file (``--tls-ca``), host name included. Both sides speak
TLS 1.2 or later, with Python's default (OpenSSL's secure) ciphers. See
``docs/security.md``.
"""

from __future__ import annotations

import ssl
from pathlib import Path


class TLSError(ValueError):
    """A certificate, key or CA file that cannot be used (the message says which)."""


def server_context(cert: Path, key: Path | None) -> ssl.SSLContext:
    """A server-side context for ``cert`` (PEM, leaf first, then its chain).

    Args:
        cert: the certificate chain file.
        key: its private key (PEM, unencrypted); ``None``: the key is in ``cert``.

    Raises:
        TLSError: a file is missing, unreadable, or the key does not match.
    """
    for what, path in (("certificate", cert), ("key", key)):
        if path is not None and not path.is_file():  # ssl's error names no file
            raise TLSError(f"TLS: no such {what} file: {path}")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        with_key = f"key {key}" if key is not None else "its key in the same file"
        raise TLSError(f"TLS: cannot use certificate {cert} with {with_key}: {exc}") from None
    return context


def client_context(ca: Path | None) -> ssl.SSLContext:
    """A client-side context that verifies the server's certificate and host name.

    Args:
        ca: a PEM file of trusted CAs; ``None``: the system's.

    Raises:
        TLSError: ``ca`` is missing or holds no usable certificate.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca is not None:
        try:
            context.load_verify_locations(cafile=ca)
        except FileNotFoundError:
            raise TLSError(f"TLS: no such CA file: {ca}") from None
        except (ssl.SSLError, OSError) as exc:
            raise TLSError(f"TLS: cannot use CA file {ca}: {exc}") from None
    return context
