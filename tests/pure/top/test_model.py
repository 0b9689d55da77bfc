"""``corral top``'s pure model: parsing odd snapshots, sorting, rates, the bar, SSE."""

from __future__ import annotations

import pytest

from corral.top.model import (
    NAME_WIDTH,
    AgentRow,
    Counters,
    History,
    Issue,
    Rates,
    Snapshot,
    SseDecoder,
    SseError,
    SseEvent,
    backoff,
    clean,
    compute_rates,
    detail_fields,
    format_age,
    format_rate,
    next_sort,
    parse_agent,
    parse_counters,
    parse_snapshot,
    slots_bar,
    slots_cell,
    sort_rows,
    sparkline,
    summary_lines,
    truncate,
)

AGENT = {
    "id": "a1",
    "name": "gpu-1",
    "address": "http://10.0.0.1:8080",
    "model": "gemma",
    "state": "ready",
    "condition": "ready",
    "slots_total": 4,
    "slots_busy": 3,
    "slots_free": 1,
    "slots_processing_reported": 2,
    "reserved": 3,
    "set_aside": False,
    "issues": [{"code": "slow", "message": "server answers slowly"}],
    "last_seen_ago_s": 0.25,
    "registered_ago_s": 125.0,
    "supervisor": {
        "state": "running",
        "restarts": 2,
        "load_time_s": 3.5,
        "pid": 4242,
        "last_crash": "exit 139",
    },
    "applied_generation": 7,
}


def row(name: str, state: str = "ready", busy: int = 0, total: int = 4, **kw: object) -> AgentRow:
    return AgentRow(
        key=name,
        id=name,
        name=name,
        state=state,
        slots_busy=busy,
        slots_total=total,
        slots_free=total - busy,
        **kw,  # type: ignore[arg-type]
    )


# ------------------------------------------------------------------------- parsing


def test_a_full_snapshot_parses_into_typed_rows() -> None:
    snap = parse_snapshot(
        {"agents": [AGENT], "slots_idle": 1, "slots_processing": 3, "buffered_requests": 5}
    )
    assert (snap.slots_idle, snap.slots_processing, snap.buffered_requests) == (1, 3, 5)
    (agent,) = snap.agents
    assert agent.key == "a1" and agent.name == "gpu-1" and agent.model == "gemma"
    assert (agent.slots_busy, agent.slots_total, agent.slots_free) == (3, 4, 1)
    assert agent.issues == (Issue("slow", "server answers slowly"),)
    assert agent.issues_text == "server answers slowly"
    assert agent.supervisor is not None and agent.supervisor.pid == 4242
    assert agent.applied_generation == 7
    assert repr(agent) == "<Agent gpu-1 READY slots 3/4 busy model=gemma>"
    assert "Agents: 1, 1 ready" in repr(snap)
    assert snap.agent("a1") is agent and snap.agent("nope") is None


@pytest.mark.parametrize(
    "data",
    [None, [], "fleet", 42, {}, {"agents": None}, {"agents": "x"}, {"agents": {"a": 1}}],
)
def test_anything_that_is_not_a_snapshot_is_an_empty_fleet(data: object) -> None:
    snap = parse_snapshot(data)
    assert snap.agents == () and snap.buffered_requests == 0


def test_odd_agents_get_defaults_and_never_raise() -> None:
    snap = parse_snapshot(
        {
            "agents": [
                {},
                None,
                "text",
                {"id": 5, "name": None, "slots_total": "four", "slots_busy": -3},
                {"name": "x", "slots_total": 2.9, "slots_busy": float("nan"), "issues": "bad"},
                {"name": "y", "issues": ["plain words", {"code": "c"}, 7], "supervisor": "x"},
                {"name": "z", "last_seen_ago_s": "soon", "supervisor": {"pid": "p"}},
            ],
            "slots_idle": "many",
            "buffered_requests": True,
        }
    )
    assert len(snap.agents) == 7
    assert len({a.key for a in snap.agents}) == 7
    assert snap.agents[0].name == "?" and snap.agents[0].slots_total == 0
    assert snap.agents[3].name == "5" and snap.agents[3].slots_total == 0
    assert snap.agents[3].slots_busy == 0
    assert (snap.agents[4].slots_total, snap.agents[4].slots_busy, snap.agents[4].issues) == (
        2,
        0,
        (),
    )
    assert [i.text for i in snap.agents[5].issues] == ["plain words", "c", "7"]
    assert snap.agents[5].issues_text == "plain words (+2)"
    assert snap.agents[5].supervisor is None
    assert snap.agents[6].last_seen_ago_s is None
    assert snap.agents[6].supervisor is not None and snap.agents[6].supervisor.pid is None
    assert snap.slots_idle == 0 and snap.buffered_requests == 1
    for agent in snap.agents:  # every odd row still renders
        assert detail_fields(agent)
        slots_bar(agent.slots_busy, agent.slots_total)


def test_repeated_or_missing_ids_get_unique_keys() -> None:
    snap = parse_snapshot({"agents": [{"id": "a"}, {"id": "a"}, {"id": ""}, {"id": "a"}]})
    keys = [a.key for a in snap.agents]
    assert len(set(keys)) == 4 and keys[0] == "a"


def test_names_lose_control_characters_and_huge_ones_are_capped() -> None:
    snap = parse_snapshot({"agents": [{"id": "a", "name": "evil\nname\x1b[31m\t" + "é" * 5000}]})
    name = snap.agents[0].name
    assert "\n" not in name and "\x1b" not in name and "\t" not in name
    assert name.startswith("evil name [31m")
    assert len(name) <= 300 and name.endswith("…")
    assert clean("日本語のサーバー") == "日本語のサーバー"


def test_truncate() -> None:
    assert truncate("gpu-1", NAME_WIDTH) == "gpu-1"
    assert truncate("a" * 20, 5) == "aaaa…"
    assert len(truncate("ü" * 100, NAME_WIDTH)) == NAME_WIDTH
    assert truncate("abc", 0) == ""
    assert truncate("abc", 3) == "abc"


# ------------------------------------------------------------------------- display


@pytest.mark.parametrize(
    ("busy", "total", "bar"),
    [
        (3, 5, "███░░ 3/5"),
        (0, 5, "░░░░░ 0/5"),
        (5, 5, "█████ 5/5"),
        (0, 0, "░░░░░ 0/0"),
        (2, 0, "█████ 2/0"),
        (7, 4, "█████ 7/4"),
        (1, 100, "█░░░░ 1/100"),
        (99, 100, "████░ 99/100"),
        (-1, -1, "░░░░░ 0/0"),
    ],
)
def test_slots_bar(busy: int, total: int, bar: str) -> None:
    assert slots_bar(busy, total) == bar


def test_the_table_drops_the_bar_rather_than_cut_the_numbers() -> None:
    assert slots_cell(12, 16) == "████░ 12/16"
    assert slots_cell(100, 128) == "100/128"


def test_ages_and_rates_are_short() -> None:
    assert [format_age(s) for s in (None, -1, 0.25, 12.4, 125, 7300, 200000)] == [
        "-",
        "-",
        "0.2s",
        "12s",
        "2m",
        "2h",
        "2d",
    ]
    assert format_age(float("inf")) == "-"
    assert [format_rate(r) for r in (None, 0, 1.5, 120.04, 25_300, 3_000_000)] == [
        "-",
        "0.00",
        "1.50",
        "120.0",
        "25.3k",
        "3.0M",
    ]


def test_detail_fields_list_everything() -> None:
    (agent,) = parse_snapshot({"agents": [AGENT]}).agents
    fields = dict(detail_fields(agent))
    assert fields["Address"] == "http://10.0.0.1:8080"
    assert fields["Slots"] == "████░ 3/4 busy, 1 free"
    assert fields["Registered"] == "2m ago"
    assert fields["  pid"] == "4242" and fields["  last crash"] == "exit 139"
    bare = dict(detail_fields(row("x")))
    assert bare["Supervisor"].startswith("none")


def test_summary_lines() -> None:
    snap = parse_snapshot(
        {"agents": [AGENT], "slots_idle": 1, "slots_processing": 3, "buffered_requests": 2}
    )
    fleet, rates = summary_lines(snap, Rates(1.5, 120.0), "state")
    assert fleet == "Agents 1 (1 ready)  Slots 3 busy / 1 idle  Buffered 2"
    assert rates == "1.50 req/s  120.0 tok/s  sort: state"
    assert summary_lines(None, None, "name")[1].startswith("- req/s  - tok/s")


# ------------------------------------------------------------------------- sorting


def test_sort_cycles_through_the_columns() -> None:
    assert [next_sort(k) for k in ("name", "state", "busy", "free", "bogus")] == [
        "state",
        "busy",
        "free",
        "name",
        "name",
    ]


def test_sorting_by_each_column() -> None:
    rows = [
        row("b", "ready", busy=1),
        row("A", "error", busy=0),
        row("c", "loading", busy=4),
        row("d", "weird", busy=2),
        row("e", "unhealthy", busy=1),
    ]
    names = lambda key: [r.name for r in sort_rows(rows, key)]  # noqa: E731
    assert names("name") == ["A", "b", "c", "d", "e"]
    assert names("state") == ["A", "e", "c", "b", "d"]
    assert names("busy") == ["c", "d", "b", "e", "A"]
    assert names("free") == ["A", "b", "e", "d", "c"]
    assert names("unknown") == names("name")


# ------------------------------------------------------------------------- metrics

METRICS = """\
# HELP corral_requests_total Requests answered
# TYPE corral_requests_total counter
corral_requests_total{endpoint="chat",model="m",status="200"} 30.0
corral_requests_total{endpoint="chat",model="m",status="503"} 10.0
corral_requests_created{endpoint="chat",model="m",status="200"} 1.7e9
# HELP corral_generated_tokens_total Tokens generated
# TYPE corral_generated_tokens_total counter
corral_generated_tokens_total{model="m"} 1000.0
corral_generated_tokens_total{model="n"} 500.0
# HELP corral_slots Slots
# TYPE corral_slots gauge
corral_slots{kind="total"} 8.0
"""


def test_counters_are_summed_over_labels() -> None:
    assert parse_counters(METRICS, 10.0) == Counters(10.0, 40.0, 1500.0)


def test_missing_counters_are_zero_and_garbage_is_none() -> None:
    assert parse_counters("", 1.0) == Counters(1.0, 0.0, 0.0)
    assert parse_counters("# TYPE corral_slots gauge\ncorral_slots 3\n", 1.0) == Counters(
        1.0, 0.0, 0.0
    )
    assert parse_counters("this is {not prometheus", 1.0) is None


def test_rates_between_two_scrapes() -> None:
    before = Counters(10.0, 40.0, 1500.0)
    after = Counters(12.0, 50.0, 1700.0)
    assert compute_rates(before, after) == Rates(5.0, 100.0)
    assert compute_rates(before, before) is None
    assert compute_rates(after, before) is None
    # a restarted balancer: its counters start again from zero
    assert compute_rates(after, Counters(14.0, 4.0, 20.0)) == Rates(2.0, 10.0)


def test_backoff_doubles_up_to_a_cap() -> None:
    assert [backoff(n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff(10_000) == 10.0 and backoff(0) == 0.5


# ----------------------------------------------------------------------------- SSE


def test_sse_events_split_across_chunks() -> None:
    decoder = SseDecoder()
    stream = (
        b'event: fleet\ndata: {"a":\ndata: 1}\n\n: keep-alive\n\nevent: fleet\r\ndata: 2\r\n\r\n'
    )
    events = [e for i in range(len(stream)) for e in decoder.feed(stream[i : i + 1])]
    assert events == [SseEvent("fleet", '{"a":\n1}'), SseEvent("fleet", "2")]


def test_sse_defaults_and_odd_lines() -> None:
    decoder = SseDecoder()
    # an event without data is not dispatched, and its type does not carry over
    events = decoder.feed(b"data:x\n\nevent: ping\n\nretry: 5\nid: 3\ndata: \xff\n\n")
    assert events == [SseEvent("message", "x"), SseEvent("message", "\ufffd")]


def test_sse_refuses_an_endless_event(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("corral.top.model.MAX_EVENT_BYTES", 100)
    decoder = SseDecoder()
    with pytest.raises(SseError):
        decoder.feed(b"data: " + b"x" * 200)


# ---------------------------------------------------------------- agent history


def test_agent_tokens_are_read_and_rated_per_agent() -> None:
    text = (
        "# TYPE corral_agent_generated_tokens_total counter\n"
        'corral_agent_generated_tokens_total{agent="a",model="m"} 100.0\n'
        'corral_agent_generated_tokens_total{agent="a",model="n"} 20.0\n'
        'corral_agent_generated_tokens_total{agent="b",model="m"} 5.0\n'
    )
    before = parse_counters(text, 1.0)
    assert before is not None and before.agent_tokens == {"a": 120.0, "b": 5.0}
    after = Counters(3.0, 0.0, 0.0, {"a": 180.0, "b": 5.0, "c": 4.0})
    rates = compute_rates(before, after)
    assert rates is not None and rates.agent_tokens_per_s == {"a": 30.0, "b": 0.0, "c": 2.0}


def test_sparkline_scales_to_a_top_or_the_peak() -> None:
    assert sparkline([0, 2, 4], top=4) == "▁▅█"
    assert sparkline([1, 1], top=4) == "▃▃"
    assert sparkline([0, 5, 10]) == "▁▅█"
    assert sparkline([0, 0]) == "▁▁" and sparkline([]) == ""


def test_history_keeps_the_last_samples_of_each_agent_and_forgets_who_left() -> None:
    history = History(keep=3)
    a, b = parse_agent({"name": "a", "slots_total": 4}, "1"), parse_agent({"name": "b"}, "2")
    for busy in range(5):
        a = parse_agent({"name": "a", "slots_total": 4, "slots_busy": busy % 5}, "1")
        history.record(Snapshot(agents=(a, b)), Rates(0, 0, {"a": 10.0 * busy}))
    assert list(history.busy["a"]) == [2, 3, 4]
    assert list(history.tokens["a"]) == [20.0, 30.0, 40.0]
    assert dict(history.lines(a)) == {
        "Busy history": "▅▆█ peak 4/4",
        "Tokens/s": "▅▆█ 40.0 now",
        "Cache hits": "-",  # no answer with timings
    }
    history.record(Snapshot(agents=(a,)), None)
    assert "b" not in history.busy
    assert history.lines(b) == [("Busy history", "-"), ("Tokens/s", "-"), ("Cache hits", "-")]


def test_the_detail_says_why_an_agent_gets_no_requests() -> None:
    why = ["heartbeat missed: last heard from 7 s ago", "cordoned for a rollout 3 s ago"]
    row = parse_agent({"name": "a", "not_routable": [*why, 7]}, "1")
    fields = dict(detail_fields(row))
    assert fields["Routable"] == (
        "no: heartbeat missed: last heard from 7 s ago; cordoned for a rollout 3 s ago; 7"
    )
    assert dict(detail_fields(parse_agent({"name": "a"}, "1")))["Routable"] == "yes"


def test_a_start_in_words() -> None:
    from corral.top.model import Supervisor, signals_line

    assert Supervisor(step="copying", copied_bytes=5_000_000).start_text == "copying 5.0 MB"
    copying = Supervisor(step="copying", copied_bytes=50_000_000, copy_bytes=200_000_000)
    assert copying.start_text == "copying 50.0/200.0 MB (25%)"
    assert Supervisor(step="loading").start_text == "loading"
    assert Supervisor(state="ready").start_text == "-"
    assert signals_line(None) == "Cache -  Demand -  Cold starts -"
    assert signals_line(Counters(0.0, 0.0, 0.0)) == "Cache -  Demand -  Cold starts none"


def test_cache_hits_say_predicted_only_when_something_was_predicted() -> None:
    """Slot routing measures the servers' reuse but predicts none: "(predicted 0%)"
    would read as a prefix index that got everything wrong."""
    from corral.top.model import CacheCounts

    assert CacheCounts(cached=82, predicted=80, timed=100).text == "82% (predicted 80%)"
    assert CacheCounts(cached=82, predicted=0, timed=100).text == "82%"
    assert CacheCounts(cached=0, predicted=0, timed=0).text == "-"


def test_the_plain_report_lists_every_agent_whole_in_columns() -> None:
    """``corral top --once``: names and issues are not cut to 80 columns (the text is
    for reading and grep), and each agent's cache hits come from /metrics."""
    from corral.top.model import NO_AGENTS, CacheCounts, plain_report

    long_name = "gpu-node-with-a-very-long-name-1"
    snapshot = Snapshot(
        agents=(
            row("b", busy=1, model="gemma"),
            row(long_name, state="unhealthy", issues=(Issue("slow", "answers slowly"),)),
        ),
        slots_idle=7,
        slots_processing=1,
        buffered_requests=2,
    )
    counters = Counters(0.0, 10, 100, agent_cache={"b": CacheCounts(50, 0, 100)})
    lines = plain_report(snapshot, counters).splitlines()
    assert lines[0] == "Agents 2 (1 ready)  Slots 1 busy / 7 idle  Buffered 2"
    assert lines[1].startswith("Cache -  Demand -")
    header, first, second = lines[3:]
    assert header.split() == ["NAME", "MODEL", "STATE", "SLOTS", "CACHE", "SEEN", "ISSUES"]
    assert first.split() == ["b", "gemma", "ready", "1/4", "50%", "-", "-"]
    assert second.split()[:5] == [long_name, "-", "unhealthy", "0/4", "-"]
    assert second.endswith("  answers slowly")
    assert header.index("STATE") == first.index("ready") == second.index("unhealthy")
    # no metrics: the cache columns say so; no agents: what to do about it
    assert plain_report(snapshot, None).splitlines()[1] == "Cache -  Demand -  Cold starts -"
    assert plain_report(Snapshot(), None).splitlines()[-1] == NO_AGENTS
