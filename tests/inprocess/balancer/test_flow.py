"""Flow control alone: a fake transport that records what it was told, then a real
socket whose reader stops reading."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import cast

import pytest

from corral.balancer._flow import FlowControl


class FakeTransport:
    """Records pause and resume calls (the only transport methods flow control uses)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")


def connected() -> tuple[FlowControl, FakeTransport]:
    flow = FlowControl(asyncio.get_running_loop())
    transport = FakeTransport()
    flow.transport = transport  # type: ignore[assignment]
    return flow, transport


async def test_reading_pauses_and_resumes_once_however_often_asked() -> None:
    flow, transport = connected()
    flow.resume_reading()  # not paused: nothing to do
    flow.pause_reading()
    flow.pause_reading()
    assert flow.reading_paused
    flow.resume_reading()
    flow.resume_reading()
    assert transport.calls == ["pause", "resume"] and not flow.reading_paused


async def test_reading_is_left_alone_before_connecting_and_after_closing() -> None:
    flow = FlowControl(asyncio.get_running_loop())
    flow.pause_reading()  # no transport yet
    assert not flow.reading_paused
    flow, transport = connected()
    flow.pause_reading()
    flow.connection_closed()
    flow.resume_reading()  # a closed transport is not told to read again
    flow.pause_reading()
    assert transport.calls == ["pause"]


async def test_drain_returns_at_once_unless_writing_is_paused() -> None:
    flow, _ = connected()
    async with asyncio.timeout(1):
        await flow.wait_writable()


async def test_drain_waits_for_resume_writing_and_wakes_every_writer() -> None:
    flow, _ = connected()
    flow.pause_writing()
    writers = [asyncio.create_task(flow.wait_writable()) for _ in range(2)]
    await asyncio.sleep(0.01)
    assert not any(writer.done() for writer in writers)
    flow.resume_writing()
    async with asyncio.timeout(1):
        await asyncio.gather(*writers)
    assert not flow.writing_paused


async def test_a_lost_connection_fails_the_writers_waiting_to_drain() -> None:
    flow, _ = connected()
    flow.pause_writing()
    writer = asyncio.create_task(flow.wait_writable())
    await asyncio.sleep(0.01)
    flow.connection_closed()
    with pytest.raises(ConnectionResetError):
        async with asyncio.timeout(1):
            await writer
    async with asyncio.timeout(1):
        await flow.wait_writable()  # closed: nothing to wait for (a write would be dropped)


async def test_the_drained_callback_runs_once_then_is_forgotten() -> None:
    flow, _ = connected()
    calls: list[int] = []
    flow.pause_writing()
    flow.on_writable = lambda: calls.append(1)
    flow.resume_writing()
    flow.pause_writing()
    flow.resume_writing()
    assert calls == [1] and flow.on_writable is None
    flow.on_writable = lambda: calls.append(2)
    flow.connection_closed()  # a lost connection calls it too: nothing waits forever
    assert calls == [1, 2]


class Writer(FlowControl):
    """A protocol that only writes, flow control from the base class."""

    __slots__ = ()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connection_closed()


async def test_a_peer_that_reads_nothing_pauses_the_writer_until_it_reads() -> None:
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    protocol = Writer(loop)
    transport, _ = await loop.create_connection(lambda: protocol, sock=ours)
    try:
        transport.set_write_buffer_limits(high=64 * 1024)
        chunk = b"x" * 64 * 1024
        for _ in range(64):  # far more than the socket buffers hold
            transport.write(chunk)
            if protocol.writing_paused:
                break
        assert protocol.writing_paused, "the transport never said its buffer was full"
        writable = asyncio.create_task(protocol.wait_writable())
        await asyncio.sleep(0.05)
        assert not writable.done()
        async with asyncio.timeout(5):
            while not writable.done():  # the peer reads: the buffer empties
                with contextlib.suppress(BlockingIOError):
                    while theirs.recv(1 << 20):
                        pass
                await asyncio.sleep(0.001)
        await writable
        assert not protocol.writing_paused
    finally:
        transport.close()
        theirs.close()
