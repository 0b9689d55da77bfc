"""Whether a file can be written somewhere, asked before the work that writes it.

A command that writes its results at the end (``corral bench --json``), or a server
that saves state on request (the balancer's ``--state-file``), says at its start that
it could not, naming the setting, rather than failing after the work. Nothing these
checks make stays: no folder is made, and the test file is removed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def cannot_write_into(folder: Path) -> str | None:
    """Why a file could not be written into ``folder`` (made first if missing, as the
    writers here do), or None when one can: a file is made and removed in the nearest
    folder that exists (``folder`` or one above it). Never raises: a folder that
    cannot be looked into (``EACCES``) is a reason too."""
    try:
        existing = folder
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent
        if not existing.is_dir():
            return f"cannot write into {folder}: {existing} is not a folder"
        fd, name = tempfile.mkstemp(dir=existing, prefix=".corral-write-check-")
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        return f"cannot write into {folder}: {exc.strerror or exc}"
    return None


def cannot_write_file(path: Path) -> str | None:
    """Why a file could not be written at ``path``, or None when one can (see
    :func:`cannot_write_into`; a folder there is no place for a file)."""
    try:
        if path.is_dir():
            return f"{path} is a folder, not a file"
    except OSError as exc:  # a folder above it cannot be looked into
        return f"cannot write {path}: {exc.strerror or exc}"
    return cannot_write_into(path.parent)
