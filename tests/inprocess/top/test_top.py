"""``corral top`` on an 80x24 terminal, fed by a fake source and by a real balancer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from support.harness import eventually
from textual.pilot import Pilot
from textual.widgets import DataTable, Static

from corral.addr import Addr
from corral.balancer import Balancer, BalancerConfig
from corral.cli import parser as corral_parser
from corral.llamacpp.process import free_port
from corral.top import TopApp
from corral.top.app import AgentScreen

SIZE = (80, 24)


class FakeBalancer:
    """Snapshots (or exceptions) pushed by the test, as the app's source."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.connections = 0

    def source(self) -> AsyncIterator[Any]:
        self.connections += 1
        return self._stream()

    async def _stream(self) -> AsyncIterator[Any]:
        while True:
            item = await self.queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item

    def send(self, *agents: dict[str, Any], buffered: int = 0) -> None:
        self.queue.put_nowait(
            {
                "agents": list(agents),
                "slots_idle": sum(a.get("slots_free", 0) for a in agents),
                "slots_processing": sum(a.get("slots_busy", 0) for a in agents),
                "buffered_requests": buffered,
            }
        )


class FakeMetrics:
    """Each scrape: 10 more requests and 200 more tokens, 2 s later."""

    def __init__(self) -> None:
        self.scrapes = 0
        self.now = 100.0

    async def read(self) -> str:
        self.scrapes += 1
        return (
            "# TYPE corral_requests_total counter\n"
            f'corral_requests_total{{endpoint="chat",model="m",status="200"}} {10 * self.scrapes}\n'
            "# TYPE corral_generated_tokens_total counter\n"
            f'corral_generated_tokens_total{{model="m"}} {200 * self.scrapes}\n'
        )

    def clock(self) -> float:
        self.now += 2.0
        return self.now


async def no_metrics() -> str:
    raise OSError("no metrics here")


def agent(
    name: str,
    state: str = "ready",
    busy: int = 0,
    total: int = 4,
    issues: list[dict[str, str]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "id": f"id-{name}",
        "name": name,
        "address": f"http://{name}:8080",
        "model": "gemma-3-270m",
        "state": state,
        "condition": state,
        "slots_total": total,
        "slots_busy": busy,
        "slots_free": total - busy,
        "slots_processing_reported": busy,
        "reserved": busy,
        "set_aside": False,
        "issues": issues or [],
        "last_seen_ago_s": 0.3,
        "registered_ago_s": 42.0,
        "supervisor": None,
        "applied_generation": None,
        **extra,
    }


def make_app(fake: FakeBalancer, **kw: Any) -> TopApp:
    kw.setdefault("metrics", no_metrics)
    return TopApp("http://127.0.0.1:8060", None, source=fake.source, **kw)


def table(app: TopApp) -> DataTable[Any]:
    return app.query_one("#agents", DataTable)


def rows(app: TopApp) -> list[list[str]]:
    """The table as the user reads it: one list of cell texts per row."""
    t = table(app)
    return [[str(cell) for cell in t.get_row_at(i)] for i in range(t.row_count)]


def names(app: TopApp) -> list[str]:
    return [row[0] for row in rows(app)]


def text(app: TopApp, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).content)


async def updated(pilot: Pilot[Any], app: TopApp, count: int) -> None:
    await eventually(lambda: app.updates >= count, what=f"{count} snapshots shown")
    await pilot.pause()


async def test_agents_join_and_leave_and_the_totals_follow() -> None:
    fake = FakeBalancer()
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        assert "Connecting to http://127.0.0.1:8060" in text(app, "#status")
        fake.send(agent("gpu-1", busy=1))
        await updated(pilot, app, 1)
        assert rows(app) == [["gpu-1", "gemma-3-270m", "ready", "█░░░░ 1/4", "", "0.3s"]]
        assert "Agents 1 (1 ready)" in text(app, "#summary")
        assert "Connected" in text(app, "#status")

        fake.send(agent("gpu-1", busy=4), agent("cpu-2", state="loading", total=2), buffered=3)
        await updated(pilot, app, 2)
        assert names(app) == ["cpu-2", "gpu-1"]
        assert rows(app)[0][2:4] == ["loading", "░░░░░ 0/2"]
        assert rows(app)[1][3] == "█████ 4/4"
        summary = text(app, "#summary")
        assert "Agents 2 (1 ready)" in summary
        assert "Slots 4 busy / 2 idle" in summary and "Buffered 3" in summary

        fake.send(agent("cpu-2", state="loading", total=2))
        await updated(pilot, app, 3)
        assert names(app) == ["cpu-2"]
        # the whole table fits 80 columns: nothing to scroll sideways
        assert table(app).virtual_size.width <= table(app).size.width


async def test_s_cycles_the_sort_column() -> None:
    fake = FakeBalancer()
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        fake.send(
            agent("alpha", busy=1, total=2),
            agent("bravo", state="error", busy=0, total=2),
            agent("charlie", busy=3, total=8),
        )
        await updated(pilot, app, 1)
        assert names(app) == ["alpha", "bravo", "charlie"]
        await pilot.press("s")
        assert "sort: state" in text(app, "#summary")
        assert names(app) == ["bravo", "alpha", "charlie"]  # problems first
        await pilot.press("s")
        assert "sort: busy" in text(app, "#summary")
        assert names(app) == ["charlie", "alpha", "bravo"]
        await pilot.press("s")
        assert "sort: free" in text(app, "#summary")
        assert names(app) == ["charlie", "bravo", "alpha"]
        await pilot.press("s")
        assert names(app) == ["alpha", "bravo", "charlie"]


async def test_the_cursor_stays_on_its_agent_when_the_order_changes() -> None:
    fake = FakeBalancer()
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        fake.send(agent("b"), agent("c"))
        await updated(pilot, app, 1)
        await pilot.press("down")
        assert app.selected_key() == "id-c"
        fake.send(agent("a"), agent("b"), agent("c"))
        await updated(pilot, app, 2)
        assert names(app) == ["a", "b", "c"]
        assert app.selected_key() == "id-c"


async def test_enter_shows_the_agents_detail_and_escape_returns() -> None:
    fake = FakeBalancer()
    app = make_app(fake)
    issues = [
        {"code": "model_load_failed", "message": "llama-server could not load the model"},
        {"code": "slow", "message": "answers take 12 s"},
    ]
    async with app.run_test(size=SIZE) as pilot:
        fake.send(agent("gpu-1"), agent("gpu-2", state="error", issues=issues))
        await updated(pilot, app, 1)
        assert rows(app)[1][4] == "llama-server…"  # issues in words, cut to fit
        await pilot.press("down", "enter")
        assert isinstance(app.screen, AgentScreen)
        assert "Agent gpu-2" in text(app, "#agent-title")
        detail = text(app, "#agent-detail")
        assert "Issues (2)" in detail
        assert "model_load_failed: llama-server could not load the model" in detail
        assert "slow: answers take 12 s" in detail
        assert "http://gpu-2:8080" in detail and "error" in detail

        # the detail follows the agent, and says when it has left
        fake.send(agent("gpu-1"), agent("gpu-2", state="ready"))
        await updated(pilot, app, 2)
        assert "No issues." in text(app, "#agent-detail")
        fake.send(agent("gpu-1"))
        await updated(pilot, app, 3)
        assert "left the fleet" in text(app, "#agent-title")

        await pilot.press("escape")
        assert not isinstance(app.screen, AgentScreen)
        assert names(app) == ["gpu-1"]


async def test_an_empty_fleet_says_so() -> None:
    fake = FakeBalancer()
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        fake.send()
        await updated(pilot, app, 1)
        assert rows(app) == []
        assert "No agents registered" in text(app, "#status")
        assert app.query_one("#status").has_class("-empty")
        await pilot.press("enter")  # nothing to open
        assert not isinstance(app.screen, AgentScreen)
        fake.send(agent("gpu-1"))
        await updated(pilot, app, 2)
        assert "No agents" not in text(app, "#status")


async def test_an_unreachable_balancer_is_retried_until_it_answers() -> None:
    fake = FakeBalancer()
    for _ in range(3):
        fake.queue.put_nowait(OSError("Connect call failed ('127.0.0.1', 8060)"))
    delays: list[int] = []

    def retry_delay(attempt: int) -> float:
        delays.append(attempt)
        return 0.01

    app = make_app(fake, retry_delay=retry_delay)
    async with app.run_test(size=SIZE) as pilot:
        await eventually(lambda: fake.connections >= 3, what="three attempts")
        await pilot.pause()
        status = text(app, "#status")
        assert "Cannot reach the balancer at http://127.0.0.1:8060" in status
        assert "Connect call failed" in status
        assert app.query_one("#status").has_class("-error")
        fake.send(agent("gpu-1"))
        await updated(pilot, app, 1)
        assert delays == [1, 2, 3]
        assert "Connected" in text(app, "#status")
        assert names(app) == ["gpu-1"]

        # a lost connection keeps the last table and counts attempts from 1 again
        fake.queue.put_nowait(ConnectionResetError("reset by peer"))
        await eventually(lambda: app.status == "unreachable", what="disconnected")
        await pilot.pause()
        assert "last known state" in text(app, "#status")
        assert names(app) == ["gpu-1"]
        assert delays[-1] == 1


async def test_rates_come_from_successive_scrapes() -> None:
    fake = FakeBalancer()
    metrics = FakeMetrics()
    app = make_app(fake, metrics=metrics.read, clock=metrics.clock, metrics_interval=0.01)
    async with app.run_test(size=SIZE) as pilot:
        await eventually(lambda: metrics.scrapes >= 2, what="two scrapes")
        await pilot.pause()
        assert "5.00 req/s  100.0 tok/s" in text(app, "#summary")


class AgentMetrics(FakeMetrics):
    """Each scrape: gpu-1 generated 60 more tokens, gpu-2 none."""

    async def read(self) -> str:
        text = await super().read()
        return text + (
            "# TYPE corral_agent_generated_tokens_total counter\n"
            f'corral_agent_generated_tokens_total{{agent="gpu-1",model="m"}} {60 * self.scrapes}\n'
            'corral_agent_generated_tokens_total{agent="gpu-2",model="m"} 0\n'
        )


async def test_the_detail_shows_history_tokens_per_s_and_why_not_routable() -> None:
    fake = FakeBalancer()
    metrics = AgentMetrics()
    app = make_app(fake, metrics=metrics.read, clock=metrics.clock, metrics_interval=0.01)
    why = ["set aside after a failed request, until its agent reports it ready again"]
    async with app.run_test(size=SIZE) as pilot:
        fake.send(agent("gpu-1", busy=3), agent("gpu-2", not_routable=why))
        await updated(pilot, app, 1)
        await eventually(lambda: metrics.scrapes >= 4, what="four scrapes")
        await pilot.press("enter")
        assert isinstance(app.screen, AgentScreen)
        await pilot.pause(0.05)
        detail = text(app, "#agent-detail")
        assert "Tokens/s" in detail and "30.0 now" in detail, detail  # 60 tokens per 2 s
        assert "Busy history  ▆▆▆" in detail and "peak 3/4" in detail, detail
        assert "Routable      yes" in detail
        await pilot.press("escape", "down", "enter")
        await pilot.pause(0.05)
        detail = text(app, "#agent-detail")
        assert "Routable      no: set aside after a failed request" in detail, detail
        assert "0.00 now" in detail


async def test_odd_data_never_breaks_the_screen() -> None:
    fake = FakeBalancer()
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        fake.send(
            agent("[bold]x[/]"),
            agent("サーバー" * 50, total=0, busy=0),
            {"id": "raw"},
            {"name": None, "slots_total": "many", "issues": [None, 3]},
        )
        fake.queue.put_nowait("not a snapshot")
        await updated(pilot, app, 2)  # the odd one is an empty fleet, not a crash
        assert rows(app) == []
        fake.send(agent("[bold]x[/]"), agent("サーバー" * 50, total=0))
        await updated(pilot, app, 3)
        assert names(app)[0] == "[bold]x[/]"
        assert names(app)[1] == "サーバー" * 3 + "サ…"
        await pilot.press("enter")
        assert "[bold]x[/]" in text(app, "#agent-title")


async def test_q_quits() -> None:
    app = make_app(FakeBalancer())
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0


def test_cli_arguments() -> None:
    args = corral_parser().parse_args(
        ["top", "--management-addr", "10.0.0.5:9000", "--management-token", "t"]
    )
    assert args.management_addr == Addr("10.0.0.5", 9000)
    assert args.management_token == "t"


# --------------------------------------------------------------- a real balancer

REGISTER = {
    "type": "register",
    "version": 1,
    "name": "gpu-1",
    "address": "http://127.0.0.1:1",
    "status": {"condition": "ready", "model": "m", "slots_total": 4},
}


async def test_a_real_balancer_streams_its_fleet() -> None:
    config = BalancerConfig(
        inference_addr=Addr("127.0.0.1", 0), management_addr=Addr("127.0.0.1", 0)
    )
    balancer = Balancer(config)
    await balancer.start()
    url = f"http://127.0.0.1:{balancer.management_port}"
    try:
        async with aiohttp.ClientSession() as http:
            app = TopApp(url, None)
            async with app.run_test(size=SIZE) as pilot:
                await eventually(lambda: app.updates >= 1, what="first snapshot")
                await pilot.pause()
                assert "No agents registered" in text(app, "#status")
                async with http.ws_connect(f"{url}/api/v1/agent-socket") as ws:
                    await ws.send_str(json.dumps(REGISTER))
                    await eventually(lambda: names(app) == ["gpu-1"], what="gpu-1 shown")
                    await pilot.pause()
                    name, model, state, slots, _, _ = rows(app)[0]
                    assert (name, model, state) == ("gpu-1", "m", "ready")
                    assert slots == "░░░░░ 0/4"
                    assert "Slots 0 busy / 4 idle" in text(app, "#summary")
                await eventually(lambda: names(app) == [], what="gpu-1 gone")
    finally:
        await balancer.stop()


async def test_a_real_balancer_with_a_management_token() -> None:
    config = BalancerConfig(
        inference_addr=Addr("127.0.0.1", 0),
        management_addr=Addr("127.0.0.1", 0),
        management_token="s3cret",
    )
    balancer = Balancer(config)
    await balancer.start()
    url = f"http://127.0.0.1:{balancer.management_port}"
    try:
        wrong = TopApp(url, "nope", retry_delay=lambda _: 0.05)
        async with wrong.run_test(size=SIZE) as pilot:
            await eventually(lambda: wrong.status == "unreachable", what="refused")
            await pilot.pause()
            assert "refused the management token" in text(wrong, "#status")
        right = TopApp(url, "s3cret", metrics_interval=0.05)
        async with right.run_test(size=SIZE) as pilot:
            await eventually(lambda: right.updates >= 1, what="first snapshot")
            await eventually(lambda: right.rates is not None, what="rates")
            await pilot.pause()
            assert "0.00 req/s" in text(right, "#summary")
    finally:
        await balancer.stop()


async def test_nothing_listening_is_a_clear_message_not_a_crash() -> None:
    port = free_port()
    app = TopApp(f"http://127.0.0.1:{port}", None, retry_delay=lambda _: 0.02)
    async with app.run_test(size=SIZE) as pilot:
        await eventually(lambda: app.attempts >= 2, what="two failed attempts")
        await pilot.pause()
        status = text(app, "#status")
        assert f"Cannot reach the balancer at http://127.0.0.1:{port}" in status
        assert "Retrying in" in status
        assert rows(app) == []
        assert "- req/s  - tok/s" in text(app, "#summary")


class SignalMetrics(FakeMetrics):
    """Prompt-cache hits, demand per model and a cold start, as the balancer exports them."""

    async def read(self) -> str:
        return await super().read() + (
            "# TYPE corral_cached_prompt_tokens_total counter\n"
            "corral_cached_prompt_tokens_total 820\n"
            "# TYPE corral_cached_prompt_tokens_predicted_total counter\n"
            "corral_cached_prompt_tokens_predicted_total 800\n"
            "# TYPE corral_timed_prompt_tokens_total counter\n"
            "corral_timed_prompt_tokens_total 1000\n"
            "# TYPE corral_agent_cached_prompt_tokens_total counter\n"
            'corral_agent_cached_prompt_tokens_total{agent="gpu-1"} 450\n'
            "# TYPE corral_agent_cached_prompt_tokens_predicted_total counter\n"
            'corral_agent_cached_prompt_tokens_predicted_total{agent="gpu-1"} 400\n'
            "# TYPE corral_agent_timed_prompt_tokens_total counter\n"
            'corral_agent_timed_prompt_tokens_total{agent="gpu-1"} 500\n'
            "# TYPE corral_model_demand gauge\n"
            'corral_model_demand{model="gemma"} 3\n'
            'corral_model_demand{model="qwen"} 1\n'
            "# TYPE corral_cold_start_seconds histogram\n"
            'corral_cold_start_seconds_bucket{model="qwen",le="+Inf"} 2\n'
            'corral_cold_start_seconds_count{model="qwen"} 2\n'
            'corral_cold_start_seconds_sum{model="qwen"} 23\n'
        )


async def test_cache_hits_demand_cold_starts_and_a_start_in_progress_at_80x24() -> None:
    fake = FakeBalancer()
    metrics = SignalMetrics()
    app = make_app(fake, metrics=metrics.read, clock=metrics.clock, metrics_interval=0.01)
    copying = {
        "state": "starting",
        "step": "copying",
        "copied_bytes": 16_800_000,
        "copy_bytes": 100_700_000,
        "restarts": 0,
    }
    async with app.run_test(size=SIZE) as pilot:
        fake.send(
            agent("gpu-1", runner="llamacpp", apis=["llamacpp", "openai"]),
            agent("gpu-2", state="loading", supervisor=copying),
        )
        await updated(pilot, app, 1)
        await eventually(lambda: metrics.scrapes >= 2, what="two scrapes")
        await pilot.pause()
        summary = text(app, "#summary").splitlines()
        assert summary[2] == (
            "Cache 82% (predicted 80%)  Demand gemma 3 qwen 1  Cold starts 2, mean 11.5s"
        )
        assert len(summary[2]) <= 78  # fits the screen
        await pilot.press("enter")
        assert isinstance(app.screen, AgentScreen)
        await pilot.pause(0.05)
        detail = text(app, "#agent-detail")
        assert "Runner        llamacpp (llamacpp, openai)" in detail, detail
        assert "Cache hits    90% (predicted 80%)" in detail, detail
        await pilot.press("escape", "down", "enter")
        await pilot.pause(0.05)
        detail = text(app, "#agent-detail")
        assert "  start       copying 16.8/100.7 MB (17%)" in detail, detail
        assert "  copy time   -" in detail and "Cache hits    -" in detail, detail


async def test_once_prints_a_real_balancers_fleet_as_plain_text(capsys: Any) -> None:
    """``corral top --once`` (and ``corral top`` into a pipe): one read, plain text."""
    from corral.cli import _top_once

    config = BalancerConfig(
        inference_addr=Addr("127.0.0.1", 0),
        management_addr=Addr("127.0.0.1", 0),
        management_token="s3cret",
    )
    balancer = Balancer(config)
    await balancer.start()
    url = f"http://127.0.0.1:{balancer.management_port}"
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(f"{url}/api/v1/agent-socket") as ws,
        ):
            await ws.send_str(json.dumps(REGISTER))
            await eventually(lambda: len(balancer.fleet) == 1, what="gpu-1 registered")
            await _top_once(url, "s3cret")
            lines = capsys.readouterr().out.splitlines()
            assert lines[0] == "Agents 1 (1 ready)  Slots 0 busy / 4 idle  Buffered 0"
            assert lines[-1].split()[:4] == ["gpu-1", "m", "ready", "0/4"]
        try:
            await _top_once(url, "nope")
        except SystemExit as exc:
            assert "refused the management token" in str(exc.code)
        else:
            raise AssertionError("a wrong token printed a fleet")
    finally:
        await balancer.stop()
    try:
        await _top_once(url, None)
    except SystemExit as exc:
        assert f"corral top: cannot read the fleet at {url}:" in str(exc.code)
    else:
        raise AssertionError("nothing listening printed a fleet")


async def test_once_refuses_an_answer_that_is_not_a_fleet(capsys: Any) -> None:
    """Another service's JSON on the port printed "No agents registered" and exit 0."""
    from aiohttp import web

    from corral.cli import _top_once

    app = web.Application()
    app.router.add_get("/api/v1/agents", lambda _: web.json_response({"status": "ok"}))
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        try:
            await _top_once(f"http://127.0.0.1:{port}", None)
        except SystemExit as exc:
            assert "did not answer a fleet (is it Corral?)" in str(exc.code)
        else:
            raise AssertionError("printed: " + capsys.readouterr().out)
    finally:
        await runner.cleanup()
