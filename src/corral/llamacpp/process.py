"""Starting llama-server processes that never outlive their parent."""

from __future__ import annotations

import ctypes
import errno
import os
import random
import signal
import socket
import subprocess
import sys
import threading
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


EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
EPHEMERAL_FALLBACK = (32768, 60999)  # Linux's default ip_local_port_range
LISTEN_FLOOR = 20000  # free_port's lowest port: above most well-known services
PICK_TRIES = 64

_given: set[int] = set()  # every port free_port has handed out in this process
_given_lock = threading.Lock()


def ephemeral_range(path: Path = EPHEMERAL_RANGE_FILE) -> tuple[int, int]:
    """The kernel's ephemeral port range ``(low, high)``, inclusive, as ``path`` (Linux's
    ``ip_local_port_range``: two integers) says; ``EPHEMERAL_FALLBACK`` when the file is
    missing, unreadable or malformed (not Linux, a sandbox). Raises nothing."""
    try:
        low, high = (int(word) for word in path.read_text().split())
    except (OSError, ValueError):
        return EPHEMERAL_FALLBACK
    if not 0 < low <= high <= 65535:
        return EPHEMERAL_FALLBACK
    return low, high


def listen_ports(ephemeral: tuple[int, int], floor: int = LISTEN_FLOOR) -> range:
    """The ports free_port picks from: ``floor`` up to just below the ephemeral range.
    Empty when the ephemeral range starts at or below ``floor`` (no room below it)."""
    return range(floor, max(floor, ephemeral[0]))


def pick_port(
    host: str,
    ports: range,
    *,
    given: set[int],
    tries: int = PICK_TRIES,
    rng: random.Random | None = None,
) -> int:
    """A port on ``host`` that binds now and is not in ``given`` (which it joins): up to
    ``tries`` random ones from ``ports``; when ``ports`` is empty, the kernel's pick
    (bind 0: inside the ephemeral range, so racy, see free_port). The caller holds any
    lock ``given`` needs. Raises OSError (EADDRINUSE) when no try binds, and OSError
    when ``host`` cannot be bound at all (no such address)."""
    choose = (rng or random).choice
    for _ in range(tries):
        port = choose(ports) if ports else 0
        if port in given:
            continue
        with socket.socket() as sock:  # SO_REUSEADDR off: a TIME_WAIT port counts as taken
            try:
                sock.bind((host, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    continue
                raise
            port = int(sock.getsockname()[1])
        if port not in given:
            given.add(port)
            return port
    where = f"{ports.start}..{ports.stop - 1}" if ports else "the ephemeral range"
    raise OSError(errno.EADDRINUSE, f"no free port on {host} in {where} after {tries} tries")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port (int) on ``host`` (an IPv4 address) that nothing listens on now, for a
    process started next to bind (the balancer, llama-server, nginx).

    The port is free when picked, not held: something else may take it before the
    process binds it. ``bind(0)`` would pick from the kernel's ephemeral range
    (``/proc/sys/net/ipv4/ip_local_port_range``, 32768-60999 by default), the range every
    outgoing connection's local port also comes from, so a test or benchmark making many
    connections could take the port first ("address already in use"; it happened once in
    CI). So the port comes from below that range (``LISTEN_FLOOR`` up to its low end),
    where only explicit binds land, at random, checked by binding it, and never the same
    port twice in one process. When the range leaves no room below it, the kernel picks
    (bind 0), still never twice. Two processes may still pick the same port; the chance
    is small (one in some ten thousand) and the bind check narrows it further.

    Raises OSError: EADDRINUSE when ``PICK_TRIES`` random ports were all taken, or the
    bind's own error when ``host`` is not an address here."""
    ports = listen_ports(ephemeral_range())
    with _given_lock:
        return pick_port(host, ports, given=_given)


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


__all__ = [
    "EPHEMERAL_FALLBACK",
    "EPHEMERAL_RANGE_FILE",
    "LISTEN_FLOOR",
    "PICK_TRIES",
    "ephemeral_range",
    "free_port",
    "listen_ports",
    "llama_server_command",
    "pick_port",
    "spawn",
    "terminate",
]
_ = os
