"""Starting llama-server processes that never outlive their parent."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child, between fork and exec
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def llama_server_command(
    binary: Path,
    model: Path,
    *,
    host: str = "127.0.0.1",
    port: int,
    slots: int,
    ctx_size: int,
    threads: int | None = None,
    api_key: str | None = None,
    alias: str | None = None,
    cache_ram_mib: int | None = None,
    extra: Sequence[str] = (),
    lora: Sequence[Path] = (),
) -> list[str]:
    """A llama-server command line. ``ctx_size`` is per slot (llama-server splits
    ``--ctx-size`` between its ``--parallel`` slots, so we pass the product).
    ``cache_ram_mib``: ``--cache-ram`` (host prompt cache, MiB; None: the server's own).
    ``lora``: LoRA adapter files, loaded at scale 0 (``--lora-scaled``): a request
    applies one by its ``lora`` field, and a request that names none gets the base
    model. Raises ValueError for a path with ``,`` or ``:`` (llama-server's separators)."""
    command = [
        str(binary),
        "--model", str(model),
        "--alias", alias or model.name.removesuffix(".gguf"),
        "--host", host,
        "--port", str(port),
        "--parallel", str(slots),
        "--ctx-size", str(ctx_size * slots),
        "--slots",
        "--no-webui",
    ]  # fmt: skip
    if threads is not None:
        command += ["--threads", str(threads)]
    if api_key:
        command += ["--api-key", api_key]
    if cache_ram_mib is not None:
        command += ["--cache-ram", str(cache_ram_mib)]
    if lora:
        for path in lora:
            if "," in str(path) or ":" in str(path):
                raise ValueError(
                    f"LoRA adapter path {path} has ',' or ':' (llama-server's separators)"
                )
        command += ["--lora-scaled", ",".join(f"{path}:0" for path in lora)]
    return command + list(extra)


def spawn(command: Sequence[str], **kw: Any) -> subprocess.Popen[bytes]:
    """Start a process that gets SIGTERM if this process dies (Linux)."""
    return subprocess.Popen(list(command), preexec_fn=_die_with_parent, **kw)


def free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def terminate(process: subprocess.Popen[bytes], timeout: float = 10.0) -> int | None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


__all__ = ["free_port", "llama_server_command", "spawn", "terminate"]
_ = os
