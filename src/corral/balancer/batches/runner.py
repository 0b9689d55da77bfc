"""The batch runner: runs the lines of running batches through the balancer's own routing.

Each line becomes an internal request, handed to the inference listener's handler
(:meth:`corral.balancer.proxy.InferenceProxy.handle`) exactly as a client's would be,
with ``X-Corral-Priority: batch``: it takes a slot through the dispatcher, is retried
on another server by the proxy's rule, and counts in the metrics and access log like
any request. At most ``concurrency`` lines run at once, oldest batch first.

A line's answer is recorded in the store at once (:meth:`BatchStore.record`). What the
runner does not record:

- 429 (the buffer, or the tenant's share of it, is full) and 503 (no server ready, or
  no slot freed in time): the fleet is busy or away; the line runs again later. Its
  tenant's batches start no line for a pause that doubles, each time a line is turned
  away after the last pause, up to ``max_backoff`` seconds (each tenant its own: a
  tenant turned away pauses no other's batches);
- an answer cut short (the server failed mid-response): run again, after the same
  pause.

Every other answer, 2xx or not, is the line's result (OpenAI's error file holds
answers such as 400 with their body).

Once a second (or when woken) it also ends batches: ``completed`` when every line has
a result, ``cancelled`` once a cancelling batch has no line running (it starts no
line; those a server runs finish and are recorded, as OpenAI's ``cancelling`` lets
requests in flight complete: a line cut off mid-answer would be reported as not run
though a server ran it; those still waiting in the buffer for a slot are dropped, and
reported as not run, rather than wait up to the batch timeout and then run),
``expired`` past the completion window (lines in flight broken off: the window is the
bound).

On :meth:`stop`, it starts no line and gives those in flight up to ``grace``
seconds to finish and be recorded; the rest are broken off, unrecorded, and run again
after a restart. A balancer that dies (``kill -9``, power) may have sent a line that it
had not recorded: that line runs again (at least once; its result is recorded once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from corral.balancer.batches.store import BatchStore, Pending, line_id
from corral.balancer.batches.wire import output_line
from corral.balancer.http_server import Request, Responder
from corral.core.queueing import DEFAULT_TENANT

log = logging.getLogger("corral.batches")

Handler = Callable[[Request, Responder], Awaitable[None]]
PRIORITY = b"batch"
"""The ``X-Corral-Priority`` class of batch lines (issue #12's priority classes)."""


class Collected(Responder):
    """A :class:`Responder` that keeps the response in memory: how a batch line is
    answered by the same handler that answers clients."""

    __slots__ = ("aborted", "body", "headers", "on_server")

    def __init__(self) -> None:  # no connection: nothing of Responder's is used
        self.started = False
        self.finished = False
        self.aborted = False
        self.on_server = False  # it holds a slot: a server runs it
        self.status = 0
        self.headers = b""
        self.body = bytearray()

    @property
    def client_gone(self) -> bool:
        return False

    def placed(self, on_server: bool) -> None:
        self.on_server = on_server

    @property
    def closes(self) -> bool:
        return False

    def send(self, status: int, headers: bytes, body: bytes) -> None:
        self.status, self.headers, self.started, self.finished = status, headers, True, True
        self.body += body

    def start(self, status: int, headers: bytes, *, hold: bool = False) -> None:
        self.status, self.headers, self.started = status, headers, True

    def flush(self) -> None:
        pass

    async def write(self, chunk: bytes, *, last: bool = False) -> None:
        self.write_nowait(chunk, last=last)

    def write_nowait(self, chunk: bytes, *, last: bool = False) -> bool:
        self.body += chunk
        self.finished = self.finished or last
        return True

    def when_writable(self, callback: Callable[[], None] | None) -> None:
        pass

    def finish(self) -> None:
        self.finished = True

    def abort(self) -> None:
        self.aborted = True


class BatchRunner:
    """Runs batches' lines; ``start()``, then ``await stop(timeout)``."""

    def __init__(
        self,
        store: BatchStore,
        *,
        concurrency: int = 8,
        tick: float = 1.0,
        max_backoff: float = 10.0,
    ) -> None:
        self.store = store
        self.handle: Handler | None = None
        """The inference listener's handler; set before :meth:`start`."""
        self.concurrency = concurrency
        self.tick = tick
        self.max_backoff = max_backoff
        self._inflight: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._outs: dict[tuple[str, int], Collected] = {}  # what each line in flight got
        self._cursor: dict[str, int] = {}
        self._backoff: dict[str, float] = {}  # by tenant: the pause after a refusal
        self._paused_until: dict[str, float] = {}  # by tenant: loop time its lines wait for
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def wake(self) -> None:
        """Look at the batches now (one was created or cancelled)."""
        self._wake.set()

    async def stop(self, grace: float) -> None:
        """Start nothing more; let lines in flight finish for up to ``grace`` seconds,
        then break the rest off (they run again after a restart)."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        tasks = list(self._inflight.values())
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace)
            for task in late:
                task.cancel()
            for task in late:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    # ------------------------------------------------------------------ loop
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                self._end_batches()
                self._fill(loop.time())
            except Exception:  # a bad database must not stop the loop for good
                log.exception("batch runner: a pass over the batches failed")
            self._wake.clear()
            now = loop.time()
            self._paused_until = {t: u for t, u in self._paused_until.items() if u > now}
            wait = min((self.tick, *(u - now for u in self._paused_until.values())))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wait, 0.01)):  # not wait_for (3.11)
                    await self._wake.wait()

    def _busy(self, batch_id: str) -> list[asyncio.Task[None]]:
        return [t for (b, _), t in self._inflight.items() if b == batch_id]

    def _waiting(self, batch_id: str) -> list[asyncio.Task[None]]:
        """A batch's lines in flight that no server runs yet (waiting in the buffer)."""
        return [
            task
            for key, task in self._inflight.items()
            if key[0] == batch_id and not (key in self._outs and self._outs[key].on_server)
        ]

    def _end_batches(self) -> None:
        due = set(self.store.expire_due())
        for batch_id, status in self.store.unfinished():
            if status == "cancelling" or batch_id in due:
                busy = self._busy(batch_id)
                # an expired batch's lines are broken off; a cancelled one's that a
                # server runs finish, and those still waiting for a slot go (they
                # could wait the whole batch timeout, then run after the cancel)
                for task in busy if batch_id in due else self._waiting(batch_id):
                    task.cancel()
                if not busy:
                    self.store.finish(
                        batch_id, "cancelled" if status == "cancelling" else "expired"
                    )
                    self._cursor.pop(batch_id, None)
                    log.info("batch %s %s", batch_id, self.store.status(batch_id))
            elif (
                status == "in_progress"
                and not self._busy(batch_id)
                and self.store.left(batch_id) == 0
            ):
                batch = self.store.finish(batch_id, "completed")
                self._cursor.pop(batch_id, None)
                log.info("batch %s completed: %s", batch_id, batch["request_counts"])

    def _fill(self, now: float) -> None:
        if self._stopping:
            return
        for batch_id, tenant in self.store.running():
            room = self.concurrency - len(self._inflight)
            if room <= 0:
                return
            if self._paused_until.get(tenant or DEFAULT_TENANT, 0.0) > now:
                continue  # its tenant was turned away lately: the others' batches go on
            cursor = self._cursor.get(batch_id, 0)
            for line in self.store.pending(batch_id, cursor, room + len(self._inflight)):
                if len(self._inflight) >= self.concurrency:
                    break
                cursor = line.index + 1
                key = (batch_id, line.index)
                if key not in self._inflight:
                    self._inflight[key] = asyncio.create_task(self._line(line))
            self._cursor[batch_id] = cursor

    # ------------------------------------------------------------------ a line
    async def _line(self, line: Pending) -> None:
        key = (line.batch_id, line.index)
        try:
            await self._run_line(line)
        finally:
            self._inflight.pop(key, None)
            self._outs.pop(key, None)
            self._wake.set()

    async def _run_line(self, line: Pending) -> None:
        assert self.handle is not None, "BatchRunner.handle is set before start()"
        request_id = line_id(line.batch_id, line.index)
        headers = [
            (b"Host", b"corral"),
            (b"Content-Type", b"application/json"),
            (b"X-Corral-Priority", PRIORITY),
            (b"X-Request-Id", request_id.encode()),
        ]
        request = Request(
            "POST", line.endpoint.encode(), headers, line.body, "1.1", True, "127.0.0.1"
        )
        request.tenant = line.tenant or DEFAULT_TENANT  # as its batch's creator, keyless
        out = self._outs[(line.batch_id, line.index)] = Collected()
        try:
            await self.handle(request, out)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a fault of the balancer's: the line's result says so
            log.exception("batch line %s failed in the balancer", request_id)
            out = Collected()
            body = b'{"error":{"code":500,"message":"%s","type":"server_error"}}' % (
                repr(exc).replace('"', "'").encode()
            )
            out.send(500, b"", body)
        if out.aborted or not out.finished or out.status in (429, 503):
            self._retry_later(line, out)
            return
        self._backoff.pop(line.tenant or DEFAULT_TENANT, None)
        ok, result = output_line(
            request_id, line.custom_id, out.status, request_id, bytes(out.body)
        )
        self.store.record(line.batch_id, line.index, ok, result)

    def _retry_later(self, line: Pending, out: Collected) -> None:
        """Run the line again after a pause of its tenant's batches (the fleet, or the
        tenant's share of it, is busy or away)."""
        self._cursor[line.batch_id] = min(self._cursor.get(line.batch_id, 0), line.index)
        tenant = line.tenant or DEFAULT_TENANT
        now = asyncio.get_running_loop().time()
        # lines sent together and turned away together pause once: the pause doubles
        # when a line is turned away again after it, not once for each line
        if self._paused_until.get(tenant, 0.0) <= now:
            backoff = min(self.max_backoff, max(0.25, self._backoff.get(tenant, 0.0) * 2))
            self._backoff[tenant] = backoff
            self._paused_until[tenant] = now + backoff
        log.info(
            "batch line %s: %s; %s's batches run again in %.2fs",
            line_id(line.batch_id, line.index),
            "cut short" if out.aborted or not out.finished else f"status {out.status}",
            tenant,
            self._paused_until[tenant] - now,
        )

    def __repr__(self) -> str:
        return f"<BatchRunner {len(self._inflight)}/{self.concurrency} lines in flight>"
