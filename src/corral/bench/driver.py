"""The load generator: sends a workload to an endpoint and times every answer.

Two ways to load a server, as in the serving literature:

- closed loop: ``users`` clients, each sending its next request as soon as the last
  one is answered. The load adapts to the server; good for "how fast with N users".
- open loop: requests arrive on a seeded Poisson trace at ``rate`` per second,
  whether or not earlier ones are answered. The load does not adapt; good for
  "what happens at 90% or 150% of capacity", and the same trace can be replayed
  against every contender.

A run stops issuing requests after ``duration`` seconds or ``requests`` requests
(whichever is given, or first), then waits for those in flight (each bounded by the
request timeout). Every request becomes an :class:`~corral.bench.stats.Outcome`.

With a ``multi-turn`` workload whose history is ``served``, a conversation's turn is
sent only once the answer to its previous turn has ended (a user reads before
replying), with that answer's words in its history (:func:`~corral.bench.workload.
with_answers`); its ``scheduled`` time stays the trace's, its ``start`` is when it
was sent. The loops are then not quite what they were: an open loop's turn that
arrives before the answer before it has ended goes when that answer ends (so a slow
endpoint delays some of its own arrivals, and a turn can go after ``duration``, to
which its arrival belonged), and a closed-loop user who takes such a turn waits for
it, so fewer than ``users`` requests may be in flight (``users`` at most ``sessions``
keeps them all busy).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import aiohttp

from corral.bench.api import (
    PATHS,
    Api,
    Cache,
    SSEParser,
    answer_text,
    read_answer,
    read_event,
    request_body,
)
from corral.bench.stats import Outcome
from corral.bench.workload import Call, Workload, WorkloadError, poisson_arrivals, with_answers


@dataclass(frozen=True, slots=True)
class Target:
    """Where to send requests, and how."""

    url: str
    """Base URL of the endpoint, e.g. ``http://127.0.0.1:8061``."""
    api: Api = "chat"
    model: str | None = None
    """Sent as ``model`` (None: not sent; llama-server and a one-model Corral accept that)."""
    api_key: str | None = None
    ignore_eos: bool = True
    """Ask for exactly ``max_tokens`` tokens (llama.cpp's ``ignore_eos``)."""
    timeout: float = 600.0
    """Seconds a request may take in all before it counts as a ``timeout`` error."""

    @property
    def endpoint(self) -> str:
        return self.url.rstrip("/") + PATHS[self.api]


@dataclass(frozen=True, slots=True)
class Load:
    """How hard and how long. Give ``users`` or ``rate``; ``duration``, ``requests`` or both."""

    users: int | None = None
    """Closed loop: concurrent users."""
    rate: float | None = None
    """Open loop: requests per second, Poisson arrivals."""
    duration: float | None = None
    """Stop issuing after this many seconds."""
    requests: int | None = None
    """Stop issuing after this many requests."""
    seed: int = 1
    """Seeds the arrival trace (the workload has its own seed)."""

    def __post_init__(self) -> None:
        if (self.users is None) == (self.rate is None):
            raise WorkloadError("give either a number of users (closed loop) or a rate (open)")
        if self.users is not None and self.users < 1:
            raise WorkloadError(f"users must be >= 1, got {self.users}")
        if self.rate is not None and not self.rate > 0:
            raise WorkloadError(f"rate must be > 0, got {self.rate}")
        if self.duration is None and self.requests is None:
            raise WorkloadError("give a duration, a number of requests, or both")
        if self.duration is not None and not self.duration > 0:
            raise WorkloadError(f"duration must be > 0, got {self.duration}")
        if self.requests is not None and self.requests < 1:
            raise WorkloadError(f"requests must be >= 1, got {self.requests}")

    def describe(self) -> str:
        how = f"{self.users} users (closed loop)" if self.users else f"{self.rate:g} req/s (open)"
        limits = []
        if self.requests is not None:
            limits.append(f"{self.requests:,} requests")
        if self.duration is not None:
            limits.append(f"{self.duration:g} s")
        return f"{how}, {' or '.join(limits)}"


Progress = Callable[[Outcome], None]


class Runner:
    """One run of a workload against a target. ``outcomes = await Runner(...).run()``."""

    def __init__(
        self,
        target: Target,
        workload: Workload,
        load: Load,
        *,
        on_outcome: Progress | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.target = target
        self.workload = workload
        self.load = load
        self.on_outcome = on_outcome
        self.clock = clock
        self.outcomes: list[Outcome] = []
        self.in_flight = 0
        spec = workload.spec
        self._serve = spec.shape == "multi-turn" and spec.history == "served"
        self._answers: dict[int, list[str | None]] = {}  # session -> its answers so far
        self._answered: dict[tuple[int, int], asyncio.Event] = {}  # (session, turn) ended
        self._t0 = clock()
        self._headers = {"Content-Type": "application/json"}
        if target.api_key:
            self._headers["Authorization"] = f"Bearer {target.api_key}"

    def elapsed(self) -> float:
        return self.clock() - self._t0

    async def run(self) -> list[Outcome]:
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        timeout = aiohttp.ClientTimeout(total=self.target.timeout)
        self._answers.clear()
        self._answered.clear()
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            self._t0 = self.clock()
            calls: Iterator[Call] = iter(self.workload)
            if self.load.requests is not None:
                calls = itertools.islice(calls, self.load.requests)
            if self.load.users is not None:
                timed = self._until_duration(calls)
                await asyncio.gather(*(self._user(session, timed) for _ in range(self.load.users)))
            else:
                await self._open_loop(session, calls)
        return sorted(self.outcomes, key=lambda o: o.index)

    # ---------------------------------------------------------------- loops
    def _until_duration(self, calls: Iterator[Call]) -> Iterator[Call]:
        """Closed loop: users stop taking calls once the duration has passed."""
        for call in calls:
            if self.load.duration is not None and self.elapsed() >= self.load.duration:
                return
            yield call

    async def _user(self, session: aiohttp.ClientSession, calls: Iterator[Call]) -> None:
        for call in calls:
            await self._send(session, call, None)

    async def _open_loop(self, session: aiohttp.ClientSession, calls: Iterator[Call]) -> None:
        assert self.load.rate is not None
        tasks: set[asyncio.Task[None]] = set()
        # The duration cuts the arrival trace by scheduled time, never by the clock, so
        # a loop that runs late still sends exactly the same requests.
        arrivals = poisson_arrivals(self.load.rate, self.load.seed)
        for at in arrivals:
            if self.load.duration is not None and at >= self.load.duration:
                break
            delay = at - self.elapsed()
            if delay > 0:
                await asyncio.sleep(delay)
            call = next(calls, None)
            if call is None:
                break
            task = asyncio.create_task(self._send(session, call, at))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)

    # -------------------------------------------------------------- request
    def _ended(self, key: tuple[int, int]) -> asyncio.Event:
        event = self._answered.get(key)
        if event is None:
            event = self._answered[key] = asyncio.Event()
        return event

    async def _send(
        self, session: aiohttp.ClientSession, call: Call, scheduled: float | None
    ) -> None:
        text: str | None = None
        if self._serve and call.turn > 0:  # after the previous answer, with its words
            await self._ended((call.session, call.turn - 1)).wait()
            del self._answered[(call.session, call.turn - 1)]
            call = with_answers(call, self._answers.get(call.session, []))
        self.in_flight += 1
        try:
            outcome, text = await self._exchange(session, call, scheduled)
        finally:
            self.in_flight -= 1
            if self._serve:
                answers = self._answers.setdefault(call.session, [])
                if call.turn == 0:
                    answers.clear()
                answers.append(text)
                if call.turn + 1 >= self.workload.spec.turns:  # the conversation ends
                    del self._answers[call.session]
                else:
                    self._ended((call.session, call.turn)).set()
        self.outcomes.append(outcome)
        if self.on_outcome is not None:
            self.on_outcome(outcome)

    async def _exchange(
        self, session: aiohttp.ClientSession, call: Call, scheduled: float | None
    ) -> tuple[Outcome, str | None]:
        """The request's outcome, and the answer's text (None when it failed)."""
        t = self.target
        body = request_body(call, t.api, model=t.model, ignore_eos=t.ignore_eos)
        start = self.elapsed()
        first: float | None = None
        gaps: list[float] = []
        tokens = 0
        usage: int | None = None
        wait: float | None = None
        server: str | None = None
        error: str | None = None
        cache: Cache | None = None
        pieces: list[str] = []
        # the session lets a sticky balancer keep a conversation (or a user) on one server
        headers = {**self._headers, "X-Session-Id": str(call.session)}
        try:
            async with session.post(t.endpoint, data=body, headers=headers) as response:
                wait = _float(response.headers.get("X-Corral-Buffer-Wait"))
                server = response.headers.get("X-Corral-Server") or response.headers.get(
                    "X-Sim-Server"
                )
                if response.status != 200:
                    await response.read()
                    error = f"http_{response.status}"
                elif "event-stream" in response.headers.get("Content-Type", ""):
                    parser = SSEParser()
                    last = 0.0
                    async for chunk in response.content.iter_any():
                        now = self.elapsed()
                        for data in parser.feed(chunk):
                            event = read_event(data)
                            if event.error is not None:
                                error = event.error
                            if event.usage_tokens is not None:
                                usage = event.usage_tokens
                            if event.cache is not None:
                                cache = event.cache
                            if event.text:
                                pieces.append(event.text)
                            if event.tokens:
                                if first is None:
                                    first = now
                                else:
                                    gaps.append(now - last)
                                last = now
                                tokens += event.tokens
                    if error is None and parser.pending.strip():
                        error = "truncated_stream"
                else:
                    answer = await response.read()
                    usage, cache = read_answer(answer)
                    pieces.append(answer_text(answer) or "")
        except TimeoutError:
            error = "timeout"
        except aiohttp.ClientPayloadError:
            error = "truncated_stream"
        except (aiohttp.ClientError, OSError):
            error = "connection"
        outcome = Outcome(
            index=call.index,
            start=start,
            end=self.elapsed(),
            stream=call.stream,
            first_token=first,
            token_gaps=tuple(gaps),
            output_tokens=usage if usage is not None else tokens,
            error=error,
            buffer_wait=wait,
            server=server,
            scheduled=scheduled,
            prompt_tokens=cache.prompt if cache is not None else None,
            cached_tokens=cache.cached if cache is not None else None,
        )
        return outcome, ("".join(pieces) or None) if error is None else None


def _float(text: str | None) -> float | None:
    try:
        return None if text is None else float(text)
    except ValueError:
        return None
