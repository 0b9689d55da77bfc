"""free_port: listening ports from below the kernel's ephemeral range, never twice."""

from __future__ import annotations

import errno
import random
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from corral.llamacpp.process import (
    EPHEMERAL_FALLBACK,
    LISTEN_FLOOR,
    ephemeral_range,
    free_port,
    listen_ports,
    pick_port,
)


@contextmanager
def held(port: int) -> Iterator[socket.socket]:
    """A socket listening on ``port`` (no SO_REUSEADDR), as a process that took it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield sock


def binds(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_ephemeral_range_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ip_local_port_range"
    path.write_text("40000\t50000\n")
    assert ephemeral_range(path) == (40000, 50000)


@pytest.mark.parametrize("text", [None, "", "banana", "1 2 3", "50000 40000", "0 70000"])
def test_ephemeral_range_falls_back_on_a_missing_or_bad_file(
    tmp_path: Path, text: str | None
) -> None:
    path = tmp_path / "ip_local_port_range"
    if text is not None:
        path.write_text(text)
    assert ephemeral_range(path) == EPHEMERAL_FALLBACK == (32768, 60999)


def test_listen_ports_lie_below_the_ephemeral_range() -> None:
    assert listen_ports((32768, 60999)) == range(LISTEN_FLOOR, 32768)
    assert listen_ports((40000, 50000), floor=30000) == range(30000, 40000)
    assert not listen_ports((1024, 65535))  # no room below: empty
    assert not listen_ports((LISTEN_FLOOR, 65535))


def test_free_port_is_outside_the_ephemeral_range_bindable_and_never_twice() -> None:
    low, high = ephemeral_range()  # this machine's (the fallback where there is none)
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert all(not low <= port <= high for port in ports), ports
    assert all(binds(port) for port in ports[-20:])


def test_a_picked_port_comes_from_the_given_range_and_is_remembered() -> None:
    given: set[int] = set()
    ports = range(40000, 40010)
    picked = {pick_port("127.0.0.1", ports, given=given) for _ in range(3)}
    assert len(picked) == 3
    assert picked <= set(ports)
    assert given == picked


class Scripted(random.Random):
    """Chooses the given ports in order, whatever the range."""

    def __init__(self, *ports: int) -> None:
        super().__init__(0)
        self.ports = list(ports)

    def choice(self, seq: object) -> int:  # type: ignore[override]
        return self.ports.pop(0)


def kernel_free_port(*but: int) -> int:
    """A port bind(0) gives, other than ``but``."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port not in but:
            return port


def test_a_taken_port_or_one_handed_out_already_is_skipped() -> None:
    with held(0) as sock:
        taken = sock.getsockname()[1]
        handed_out = kernel_free_port(taken)
        free = kernel_free_port(taken, handed_out)
        rng = Scripted(taken, handed_out, free)
        port = pick_port("127.0.0.1", range(1, 65536), given={handed_out}, rng=rng)
    assert port == free
    assert rng.ports == []  # each tried once, in order


def test_no_free_port_is_a_clear_error() -> None:
    with held(0) as sock:
        taken = sock.getsockname()[1]
        with pytest.raises(OSError, match=f"no free port on 127.0.0.1 in {taken}..{taken}"):
            pick_port("127.0.0.1", range(taken, taken + 1), given=set(), tries=5)
    with pytest.raises(OSError) as caught:  # all handed out already
        pick_port("127.0.0.1", range(taken, taken + 1), given={taken}, tries=5)
    assert caught.value.errno == errno.EADDRINUSE


def test_no_room_below_the_range_falls_back_to_the_kernels_pick() -> None:
    given: set[int] = set()
    ports = [pick_port("127.0.0.1", listen_ports((1024, 65535)), given=given) for _ in range(50)]
    assert len(set(ports)) == 50
    assert given == set(ports)
    assert all(binds(port) for port in ports[-5:])
