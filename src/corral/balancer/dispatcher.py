"""The async layer over :class:`~corral.core.scheduler.Scheduler`.

It turns the scheduler's decisions into awaited results: a request that must wait
gets a future, and the future is resolved when the scheduler says so (a slot freed,
a server joined, the deadline passed). It also tells watchers (the SSE stream, the
dashboards) that the fleet changed. All the deciding happens in ``corral.core``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from corral.balancer.errors import HTTPError
from corral.core.buffer import BufferFull, Waiter
from corral.core.clock import Clock
from corral.core.demand import ColdStarts
from corral.core.events import Timings
from corral.core.fleet import Backend, Fleet, FleetError
from corral.core.policy import Dispatch, Reject, RequestInfo
from corral.core.queueing import Priority
from corral.core.scheduler import RECHECK, Assigned, Scheduler

log = logging.getLogger("corral.balancer")


@dataclass(frozen=True, slots=True)
class Reservation:
    """A reserved slot: where to send the request, and proof to give it back."""

    backend_id: str
    address: str
    api_key: str | None
    name: str
    waited: float  # seconds spent in the buffer
    model: str | None = None  # what the server runs (for metrics: bounded, unlike requests')


class Dispatcher:
    def __init__(
        self,
        scheduler: Scheduler,
        clock: Clock,
        *,
        on_set_aside: Callable[[Backend], None] | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.fleet: Fleet = scheduler.fleet
        self.clock = clock
        self._on_set_aside = on_set_aside
        self._expiry: asyncio.TimerHandle | None = None
        self._recheck: asyncio.TimerHandle | None = None  # see Scheduler.held_back
        self._wait_end: asyncio.TimerHandle | None = None  # see _arm_wait_end
        self._wait_end_at = 0.0
        self._changed = asyncio.Event()
        self._watchers = 0
        self._closed = False
        self.on_change: Callable[[], bool] | None = None
        """Runs after each change (the rollout); ``True`` if it added capacity."""
        self.on_pick: Callable[[float], None] | None = None
        """Told how many seconds each new request's routing decision took (metrics)."""
        self.on_lost: Callable[[Backend, str], int] | None = None
        """Breaks off the requests in flight to a server that stopped answering (the
        upstream pool's ``abort``); returns how many."""
        self.cold_starts = ColdStarts()
        """Scale-up to first ready slot, per model (see :class:`ColdStarts`)."""
        self.on_cold_start: Callable[[str, float], None] | None = None
        """Told each ended cold start: the model, and its seconds (metrics)."""

    # ------------------------------------------------------------ requests
    async def acquire(self, request: RequestInfo) -> Reservation:
        """Reserve a slot for this request, waiting in the buffer if need be.

        Raises :class:`HTTPError`: 404 unknown model, 429 buffer full, 503 waited
        too long. If the caller is cancelled while waiting, nothing is left behind.
        """
        if self._closed:
            raise HTTPError(503, "Corral: the balancer is shutting down", retry_after=1)
        now = self.clock.now()
        started = time.perf_counter()
        try:
            result = self.scheduler.submit(request, now)
        except BufferFull as exc:
            raise HTTPError(
                429,
                f"Corral: no slot for this request now, and it cannot wait: {exc}",
                retry_after=1,
                buffer="full",
            ) from None
        if self.on_pick is not None:
            self.on_pick(time.perf_counter() - started)
        if isinstance(result, Dispatch):
            self._notify()
            return self._reservation(result.backend_id, 0.0, request.model)
        if isinstance(result, Reject):
            raise _reject_error(result)
        return await self._wait(result, request)

    async def _wait(self, waiter: Waiter, request: RequestInfo) -> Reservation:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()
        self.cold_starts.buffered(self.fleet, request.model, self.clock.now())
        waiter.token = future
        self._arm_expiry()
        if self.scheduler.held_back:  # beside a free slot it may not take yet
            self._arm_recheck()
        self._arm_wait_end()
        self._notify()
        try:
            backend_id = await future
        except asyncio.CancelledError:
            if self.scheduler.buffer.cancel(waiter):
                # the request behind it may now head its queue beside a free slot this
                # one refused (waiting for the holder of its prompt), with a bound of
                # its own: look again now, and arm the timer for its bound
                self.changed()
            elif future.done() and not future.cancelled() and future.exception() is None:
                # got a slot as the client left: nothing was sent
                self.release(future.result(), request=request, sent=False)
            raise
        if backend_id not in self.fleet:  # it left between the assignment and now
            self.scheduler.finished(request, self.clock.now())
            waited = waiter.waited(self.clock.now())
            again = await self.acquire(request)
            return replace(again, waited=waited + again.waited)  # both waits
        return self._reservation(backend_id, waiter.waited(self.clock.now()), request.model)

    def _reservation(self, backend_id: str, waited: float, model: str | None = None) -> Reservation:
        backend = self.fleet.get(backend_id)
        return Reservation(
            backend_id,
            backend.address,
            backend.api_key,
            backend.name,
            waited,
            backend.model_for(model),
        )

    def release(
        self,
        backend_id: str,
        *,
        ok: bool = True,
        request: RequestInfo | None = None,
        timings: Timings | None = None,
        sent: bool = True,
    ) -> None:
        """Free this slot: its request finished, failed, or was never sent
        (``sent=False``: its client left first, or the server refused it unread:
        :class:`~corral.core.events.Finished`). ``request`` and its answer's
        ``timings`` go to the fleet's subscribers (the prefix index)."""
        if request is not None:
            self.scheduler.finished(request, self.clock.now())  # its tenant's count in flight
        try:
            adapter = request.adapter if request is not None else None
            self.fleet.release(backend_id, self.clock.now(), request, timings, adapter, sent=sent)
        except FleetError:
            log.exception("release of a slot that was not reserved")
        if ok:
            self.fleet.succeeded(backend_id)
        self.changed()

    def failed(
        self,
        backend_id: str,
        reason: str,
        request: RequestInfo | None = None,
        sent: bool = True,
    ) -> None:
        """A request on this slot failed (the server broke, hung or refused it): set the
        server aside, free the slot. ``sent=False``: the server never read it (see
        :meth:`release`)."""
        self.set_aside(backend_id, reason)
        self.release(backend_id, ok=False, request=request, sent=sent)

    def set_aside(self, backend_id: str, reason: str) -> None:
        """Send nothing more to this server until its agent reports it ready."""
        backend = self.fleet.set_aside(backend_id)
        if backend is not None:
            log.warning("set aside %r: %s", backend, reason)
            if self._on_set_aside is not None:
                self._on_set_aside(backend)
            self._notify()

    def lost(self, backend_id: str, reason: str) -> None:
        """Its agent says this server stopped answering (a hang, ``kill -STOP``): break
        off the requests it holds, so those that sent nothing to their client yet go
        to another server (the proxy's retry rule) and started streams end with an
        error event, rather than waiting for a server that may never answer."""
        backend = self.fleet.get(backend_id)
        broken = self.on_lost(backend, reason) if self.on_lost is not None else 0
        if broken:
            log.warning(
                "%r stopped answering (%s): %d request(s) broken off", backend, reason, broken
            )

    # -------------------------------------------------------------- events
    def changed(self) -> None:
        """The fleet may have free capacity: hand it to waiting requests."""
        again = True
        while again:
            again = False
            for outcome in self.scheduler.assign(self.clock.now()):
                future = outcome.waiter.token
                assert isinstance(future, asyncio.Future)
                if isinstance(outcome, Assigned):
                    if future.done():  # its client left: the slot goes to the next one
                        adapter = outcome.waiter.request.adapter
                        self.fleet.release(
                            outcome.backend_id,
                            self.clock.now(),
                            outcome.waiter.request,  # the policy's events see it end
                            adapter=adapter,
                            sent=False,
                        )
                        self.scheduler.finished(outcome.waiter.request, self.clock.now())
                        again = True
                        continue
                    future.set_result(outcome.backend_id)
                elif not future.done():
                    future.set_exception(_reject_error(outcome.reject))
            if self.on_change is not None and self.on_change():
                again = True
        if self.scheduler.held_back:
            self._arm_recheck()
        self._arm_wait_end()
        for model, seconds in self.cold_starts.changed(self.fleet, self.clock.now()):
            log.info("model %s: first ready slot %.2fs after scale-up", model, seconds)
            if self.on_cold_start is not None:
                self.on_cold_start(model, seconds)
        self._notify()

    def _arm_recheck(self) -> None:
        """Requests wait beside free slots they may not take yet (batch on idle
        capacity, a tenant yielding): look again once the demand may have faded."""
        if self._recheck is not None or self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a test driving the dispatcher by hand)
            return
        self._recheck = loop.call_later(RECHECK, self._rechecked)

    def _rechecked(self) -> None:
        self._recheck = None
        self.changed()

    def _arm_wait_end(self) -> None:
        """A request waiting for the busy server that holds its prompt (prefix
        routing's ``wait-prefix``) waits until its ``note.wait_until`` at most: look
        again then, whether or not a slot frees or an agent reports before. The
        policy sets that bound when it first decides to wait, which may be in
        :meth:`changed` for a request already in the buffer (a slot freed elsewhere),
        not only on arrival. One timer, for the earliest bound among the waiting
        requests the scheduler looks at (the heads of the buffer's queues)."""
        if self._closed or not len(self.scheduler.buffer):
            return
        if self.scheduler.policy.affinity is None:  # slot routing never waits for a holder
            return
        now = self.clock.now()
        ends = [
            until
            for waiter in self.scheduler.buffer.heads(now)
            if (until := waiter.request.note.wait_until) is not None and until > now
        ]
        if not ends:
            return
        end = min(ends)
        if self._wait_end is not None:
            if self._wait_end_at <= end:
                return  # an earlier look is due already; it arms the next one
            self._wait_end.cancel()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a test driving the dispatcher by hand)
            return
        self._wait_end_at = end
        self._wait_end = loop.call_later(end - now + 0.001, self._wait_ended)

    def _wait_ended(self) -> None:
        self._wait_end = None
        self.changed()

    def _arm_expiry(self) -> None:
        if self._expiry is not None:
            return
        deadline = self.scheduler.buffer.next_deadline()
        if deadline is None:
            return
        delay = max(0.0, deadline - self.clock.now())
        self._expiry = asyncio.get_running_loop().call_later(delay, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        now = self.clock.now()
        expired = self.scheduler.expire(now)
        if not expired:
            self._arm_expiry()
            return
        # with no server ready, no slot could have come: say that, not that none freed
        ready = any(b.routable for b in self.fleet)
        what = "no slot became free" if ready else "no server was ready"
        buffer = self.scheduler.buffer
        for waiter in expired:
            future = waiter.token
            assert isinstance(future, asyncio.Future)
            if not future.done():
                batch = waiter.request.priority is Priority.BATCH  # its own limit
                flag = "--batch-request-timeout" if batch else "--buffered-request-timeout"
                future.set_exception(
                    HTTPError(
                        503,
                        f"Corral: {what} within {waiter.waited(now):.1f}s ({flag})",
                        retry_after=buffer.batch_timeout if batch else buffer.timeout,
                        buffer="timeout",
                    )
                )
        log.warning("%d buffered request(s) timed out", len(expired))
        self.changed()  # new heads of their queues: look again (as for a cancel)
        self._arm_expiry()

    def close(self) -> None:
        """Fail every waiting request, and refuse new ones (shutdown)."""
        self._closed = True
        if self._recheck is not None:
            self._recheck.cancel()
            self._recheck = None
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self._wait_end is not None:
            self._wait_end.cancel()
            self._wait_end = None
        for waiter in list(self.scheduler.buffer):
            self.scheduler.buffer.cancel(waiter)
            future = waiter.token
            if isinstance(future, asyncio.Future) and not future.done():
                future.set_exception(
                    HTTPError(503, "Corral: the balancer is shutting down", retry_after=1)
                )

    # ------------------------------------------------------------ watchers
    def _notify(self) -> None:
        if self._watchers:
            event, self._changed = self._changed, asyncio.Event()
            event.set()

    async def wait_changed(self) -> None:
        """Return at the next change of the fleet or the buffer."""
        self._watchers += 1
        try:
            await self._changed.wait()
        finally:
            self._watchers -= 1

    def __repr__(self) -> str:
        return f"<Dispatcher {self.scheduler!r}>"


def _reject_error(reject: Reject) -> HTTPError:
    return HTTPError(
        reject.status,
        reject.message,
        extra={"param": "model", "available_models": list(reject.models)},
    )
