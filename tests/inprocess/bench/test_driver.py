"""The load generator against simulated servers, alone and through a balancer."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from support.harness import Harness

from corral.bench.driver import Load, Runner, Target
from corral.bench.stats import Outcome, summarise
from corral.bench.workload import Workload, WorkloadError, WorkloadSpec, poisson_arrivals
from corral.llamacpp.process import free_port

FAST = {"tokens_per_second": 2000.0, "prompt_tokens_per_second": 1e6}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def within(seconds: float, port: int, spec: WorkloadSpec, load: Load) -> list[Outcome]:
    """A run against ``port`` that fails, rather than hangs, if a turn never goes."""
    runner = Runner(Target(f"http://127.0.0.1:{port}"), Workload(spec), load)
    return await asyncio.wait_for(runner.run(), seconds)


@contextlib.asynccontextmanager
async def chat_endpoint(answer: Handler) -> AsyncIterator[int]:
    """A stand-in chat endpoint on a free port (yielded) that answers with ``answer``."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield port
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("api", ["chat", "completions", "llamacpp"])
async def test_closed_loop_counts_add_up(harness: Harness, api: str) -> None:
    _, port = await harness.sim(name="s1", slots=4, **FAST)
    spec = WorkloadSpec(output_tokens=5, stream_share=0.5, seed=3)
    runner = Runner(
        Target(f"http://127.0.0.1:{port}", api=api),  # type: ignore[arg-type]
        Workload(spec),
        Load(users=3, requests=20),
    )
    outcomes = await runner.run()
    assert [o.index for o in outcomes] == list(range(20))
    s = summarise(outcomes)
    assert (s.requests, s.succeeded, s.failed) == (20, 20, 0)
    assert all(o.output_tokens == 5 for o in outcomes)
    assert s.output_tokens == 100
    streamed = [o for o in outcomes if o.stream]
    expected = [c.stream for c in Workload(spec).take(20)]
    assert [o.stream for o in outcomes] == expected
    assert streamed and all(o.ttft is not None and len(o.token_gaps) == 4 for o in streamed)
    assert all(o.ttft is None for o in outcomes if not o.stream)
    assert s.servers == {"s1": 20}
    assert runner.in_flight == 0


async def test_open_loop_sends_the_trace_and_corral_reports_its_buffer(harness: Harness) -> None:
    balancer = await harness.balancer()
    _, port = await harness.sim(name="only", slots=1, tokens_per_second=200.0)
    await harness.agent(port, balancer, name="only")
    target = Target(f"http://127.0.0.1:{balancer.inference_port}")
    runner = Runner(
        target,
        Workload(WorkloadSpec(output_tokens=10)),
        Load(rate=40.0, requests=8, seed=2),
    )
    outcomes = await runner.run()
    s = summarise(outcomes)
    assert s.succeeded == 8, s.errors
    assert s.servers == {"only": 8}
    # one slot at ~50 ms per answer and 40 arrivals/s: some requests waited in Corral
    waits = [o.buffer_wait for o in outcomes]
    assert all(w is not None for w in waits)
    assert max(w for w in waits if w is not None) > 0.0
    for o in outcomes:  # sent on schedule (never before its arrival time)
        assert o.scheduled is not None and o.start >= o.scheduled - 1e-3


async def test_errors_are_counted_by_kind(harness: Harness) -> None:
    balancer = await harness.balancer(max_buffered_requests=0)  # no agents: 429 at once
    spec = Workload(WorkloadSpec(output_tokens=2))
    full = await Runner(
        Target(f"http://127.0.0.1:{balancer.inference_port}"), spec, Load(users=2, requests=4)
    ).run()
    assert summarise(full).errors == {"http_429": 4}
    closed = await Runner(
        Target(f"http://127.0.0.1:{free_port()}"), spec, Load(users=1, requests=3)
    ).run()
    assert summarise(closed).errors == {"connection": 3}


async def test_a_request_timeout_is_a_timeout(harness: Harness) -> None:
    _, port = await harness.sim(slots=1, tokens_per_second=5.0)
    outcomes = await Runner(
        Target(f"http://127.0.0.1:{port}", timeout=0.3),
        Workload(WorkloadSpec(output_tokens=50)),
        Load(users=1, requests=1),
    ).run()
    assert summarise(outcomes).errors == {"timeout": 1}


async def test_duration_stops_issuing(harness: Harness) -> None:
    _, port = await harness.sim(slots=4, **FAST)
    runner = Runner(
        Target(f"http://127.0.0.1:{port}"),
        Workload(WorkloadSpec(output_tokens=3)),
        Load(users=2, duration=0.5),
    )
    outcomes = await runner.run()
    assert outcomes and all(o.ok for o in outcomes)
    assert max(o.start for o in outcomes) < 0.5


async def test_an_open_loop_that_runs_late_still_sends_the_whole_trace(harness: Harness) -> None:
    """The duration cuts the trace by scheduled time: a slow loop sends the same requests."""
    _, port = await harness.sim(slots=8, **FAST)
    ticks = itertools.count()
    late = Runner(
        Target(f"http://127.0.0.1:{port}"),
        Workload(WorkloadSpec(output_tokens=2)),
        Load(rate=50.0, duration=0.4, seed=5),
        clock=lambda: next(ticks) * 0.05,  # every look at the clock is 50 ms later
    )
    outcomes = await late.run()
    expected = list(itertools.takewhile(lambda at: at < 0.4, poisson_arrivals(50.0, 5)))
    assert len(outcomes) == len(expected) > 3
    assert summarise(outcomes).succeeded == len(expected)


def test_load_needs_one_loop_and_a_limit() -> None:
    with pytest.raises(WorkloadError, match="either"):
        Load(users=2, rate=1.0, requests=1)
    with pytest.raises(WorkloadError, match="duration, a number of requests"):
        Load(users=2)
    with pytest.raises(WorkloadError, match="users must be"):
        Load(users=0, requests=1)


async def test_the_command_writes_json_and_charts(harness: Harness, tmp_path: Path) -> None:
    from corral.bench.command import run
    from corral.cli import parser

    _, port = await harness.sim(name="s", slots=2, **FAST)
    args = parser().parse_args(
        [
            "bench", f"http://127.0.0.1:{port}", "--requests", "6", "--users", "2",
            "--workload", "heavy-tail", "--output-tokens", "4", "--json",
            str(tmp_path / "run.json"), "--charts", str(tmp_path / "charts"),
        ]
    )  # fmt: skip
    assert await run(args) == 0
    document = json.loads((tmp_path / "run.json").read_text())
    assert document["summary"]["succeeded"] == 6
    assert len(document["requests"]) == 6
    assert document["workload"]["shape"] == "heavy-tail"
    for name in ("latency.png", "timeline.png"):
        assert (tmp_path / "charts" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_a_shared_prefix_run_reports_the_servers_cache_hit_rate(harness: Harness) -> None:
    _, port = await harness.sim(name="s1", slots=2, **FAST)
    target = Target(f"http://127.0.0.1:{port}")
    shared = WorkloadSpec(shape="shared-prefix", groups=1, prefix_tokens=300, output_tokens=2)
    s = summarise(await Runner(target, Workload(shared), Load(users=1, requests=6)).run())
    # after the first request, every one reuses the group's document (about 300 of 340)
    assert s.cache_hit_rate is not None and 0.7 < s.cache_hit_rate < 0.9, s
    control = WorkloadSpec(shape="no-sharing", prefix_tokens=300, output_tokens=2)
    s = summarise(await Runner(target, Workload(control), Load(users=1, requests=6)).run())
    assert s.cache_hit_rate is not None and s.cache_hit_rate < 0.05, s


async def test_each_request_names_its_session() -> None:
    seen: list[str | None] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.headers.get("X-Session-Id"))
        return web.json_response({"usage": {"completion_tokens": 1}})

    spec = WorkloadSpec(shape="multi-turn", sessions=2, stream_share=0.0)
    async with chat_endpoint(answer) as port:
        await Runner(
            Target(f"http://127.0.0.1:{port}"), Workload(spec), Load(users=1, requests=6)
        ).run()
    assert seen == [str(c.session) for c in Workload(spec).take(6)]


@pytest.mark.parametrize("stream_share", [0.0, 1.0])
async def test_a_served_history_resends_the_servers_answers(stream_share: float) -> None:
    """``history="served"``: each later turn carries the server's words for the turns
    before it, and so is sent only after the answer to the one before has ended."""
    got: list[tuple[str, list[dict[str, str]]]] = []
    said: dict[tuple[str, int], str] = {}  # (session, turn) -> the answer's text

    async def answer(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        session = request.headers["X-Session-Id"]
        turn = sum(m["role"] == "user" for m in body["messages"]) - 1
        got.append((session, body["messages"]))
        text = f"words of answer {len(got)}"
        said[(session, turn)] = text
        if not body.get("stream"):
            return web.json_response(
                {"choices": [{"message": {"content": text}}], "usage": {"completion_tokens": 4}}
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for word in text.split(" "):
            chunk = {"choices": [{"delta": {"content": word + " "}}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    spec = WorkloadSpec(
        shape="multi-turn", sessions=2, turns=3, stream_share=stream_share, history="served"
    )
    # arrivals far faster than answers: turns would overlap if they did not wait
    async with chat_endpoint(answer) as port:
        outcomes = await within(30, port, spec, Load(rate=500.0, requests=12))
    assert summarise(outcomes).succeeded == 12
    later = 0
    for session, messages in got:
        answers = [m["content"] for m in messages if m["role"] == "assistant"]
        sent = [said[(session, turn)] for turn in range(len(answers))]
        if stream_share:  # the streamed words, joined as they came
            sent = [" ".join(text.split(" ")) + " " for text in sent]
        assert answers == sent
        later += bool(answers)
    assert later == 8  # with this seed, 12 calls begin 4 conversations


async def test_a_failed_turn_lets_the_next_go_with_its_planned_answer() -> None:
    """A turn whose answer failed still releases the conversation's next turn, which
    resends the planned answer in its place; a closed loop of two users ends."""
    got: dict[tuple[str, int], list[str]] = {}  # (session, turn) -> answers resent

    async def answer(request: web.Request) -> web.Response:
        body = await request.json()
        turn = sum(m["role"] == "user" for m in body["messages"]) - 1
        key = (request.headers["X-Session-Id"], turn)
        got[key] = [m["content"] for m in body["messages"] if m["role"] == "assistant"]
        if len(got) == 1:  # the first turn of the first conversation fails
            return web.Response(status=500)
        return web.json_response(
            {"choices": [{"message": {"content": f"answer to {key}"}}], "usage": {}}
        )

    spec = WorkloadSpec(shape="multi-turn", sessions=1, turns=3, stream_share=0.0, history="served")
    async with chat_endpoint(answer) as port:
        outcomes = await within(30, port, spec, Load(users=2, requests=6))
    assert summarise(outcomes).errors == {"http_500": 1}
    plan = [m.content for m in Workload(spec).take(3)[2].messages if m.role == "assistant"]
    assert got[("0", 1)] == plan[:1]  # the failed turn's plan
    assert got[("0", 2)] == [plan[0], "answer to ('0', 1)"]
    assert got[("1", 1)] == ["answer to ('1', 0)"]
    assert got[("1", 2)] == ["answer to ('1', 0)", "answer to ('1', 1)"]
