"""The agent's reading of llama-server answers, case by case, and when it reads."""

import itertools
import math

import pytest

from corral.agent.runners.llamacpp import SERVER_WAIT, Fetched, ReadSchedule, interpret

HEALTHY = Fetched(200, {"status": "ok"})
PROPS = Fetched(
    200,
    {
        "total_slots": 2,
        "model_path": "/m/gemma.gguf",
        "default_generation_settings": {"n_ctx": 2048, "temperature": 0.8},
        "chat_template": "x" * 100_000,
    },
)
SLOTS = Fetched(200, [{"id": 0, "is_processing": True}, {"id": 1, "is_processing": False}])
MODELS = Fetched(200, {"object": "list", "data": [{"id": "gemma-3-270m"}]})


def codes(status):
    return [issue.code for issue in status.issues]


def test_ready_server():
    status = interpret(HEALTHY, PROPS, SLOTS, MODELS)
    assert status.condition == "ready"
    assert (status.slots_total, status.slots_processing) == (2, 1)
    assert status.model == "gemma-3-270m"
    assert status.props == {**PROPS.body, "chat_template": "x" * 100_000}  # every field
    assert status.model_list == MODELS.body
    assert status.issues == []


def test_long_texts_are_trimmed():
    long = Fetched(200, {**PROPS.body, "chat_template": "x" * 1_000_000})
    status = interpret(HEALTHY, long, SLOTS, MODELS)
    assert len(status.props["chat_template"]) == 256 * 1024
    assert status.issues == []


def test_unreachable():
    status = interpret(Fetched(error="Cannot connect to host 127.0.0.1:9"))
    assert status.condition == "unreachable"
    assert "Cannot connect" in status.issues[0].message


def test_loading():
    loading = Fetched(503, {"error": {"code": 503, "message": "Loading model"}})
    status = interpret(loading)
    assert status.condition == "loading"
    assert status.issues[0].message == "Loading model"


def test_api_key_rejected():
    rejected = Fetched(401, {"error": {"code": 401, "message": "Invalid API Key"}})
    status = interpret(HEALTHY, rejected, SLOTS, MODELS)
    assert status.condition == "unauthorized"
    assert codes(status) == ["api_key_rejected"]
    assert "--llamacpp-api-key" in status.issues[0].message


def test_slots_disabled_is_ready_with_an_issue():
    disabled = Fetched(501, {"error": {"code": 501, "message": "This server does not support"}})
    status = interpret(HEALTHY, PROPS, disabled, MODELS)
    assert status.condition == "ready"
    assert status.slots_total == 2 and status.slots_processing == 0
    assert codes(status) == ["slots_disabled"]


def test_unexpected_formats():
    assert interpret(HEALTHY, Fetched(200, []), SLOTS, MODELS).condition == "bad_response"
    no_slots_count = Fetched(200, {"model_path": "x"})
    status = interpret(HEALTHY, no_slots_count, SLOTS, MODELS)
    assert status.condition == "bad_response" and "total_slots" in status.issues[0].message
    odd_slots = Fetched(200, [{"id": 0}])
    assert interpret(HEALTHY, PROPS, odd_slots, MODELS).condition == "bad_response"
    not_json = Fetched(200, "<html>", error="answer is not JSON")
    assert interpret(not_json).condition == "bad_response"


def test_other_http_errors():
    status = interpret(Fetched(500, {"error": {"message": "boom"}}))
    assert status.condition == "error"
    assert status.issues[0].message == "/health answered 500: boom"


def test_a_balancer_with_no_ready_server_is_not_ready():
    down = Fetched(503, {"error": {"code": 503, "message": "Corral: no server yet"}})
    assert interpret(down).condition == "error"


def test_missing_model_id_is_an_issue_not_a_failure():
    status = interpret(HEALTHY, PROPS, SLOTS, Fetched(200, {"data": []}))
    assert status.condition == "ready" and status.model is None
    assert codes(status) == ["no_model_id"]


# ------------------------------------------------------------- the read schedule
def test_slots_wait_for_a_gap_longer_than_the_servers_wait_after_each_answer():
    schedule = ReadSchedule(slots_gap=1.25)
    assert schedule.slots_wait(0.0) == 0  # never read: at once
    schedule.slots_asked(0.0)
    assert schedule.slots_wait(0.5) == math.inf  # a read is under way
    schedule.slots_answered(0.3)  # the gap runs from the answer, not the request
    assert schedule.slots_wait(0.3) == pytest.approx(1.25)
    assert schedule.slots_wait(1.0) == pytest.approx(0.55)
    assert schedule.slots_wait(1.55) == 0
    with pytest.raises(ValueError, match="too soon"):
        schedule.slots_asked(1.5)
    schedule.slots_asked(1.55)


def test_a_poll_at_any_rate_leaves_the_server_a_quiet_second_between_slots_reads():
    # Simulate the agent's monitor: /health every 0.1 s, /slots whenever the schedule
    # allows, each /slots taking 20 ms. The server must see gaps over 1 s (SERVER_WAIT)
    # between two /slots answers, so its handlers check for clients that left.
    schedule = ReadSchedule()
    answers: list[float] = []
    now = 0.0
    while now < 30.0:
        if schedule.slots_wait(now) == 0:
            schedule.slots_asked(now)
            now += 0.02
            schedule.slots_answered(now)
            answers.append(now)
        now += min(0.1, max(schedule.slots_wait(now), 0.01))
    gaps = [b - a for a, b in itertools.pairwise(answers)]
    assert len(answers) > 20  # busy slots still read about every 1.3 s
    assert min(gaps) > SERVER_WAIT
    assert max(gaps) < 1.4


def test_a_gap_within_the_servers_wait_is_refused():
    with pytest.raises(ValueError, match="exceed 1 s"):
        ReadSchedule(slots_gap=0.5)
    with pytest.raises(ValueError):
        ReadSchedule(slots_gap=1.0)


def test_schedule_repr_reads_at_a_glance():
    schedule = ReadSchedule()
    schedule.slots_asked(0.0)
    assert repr(schedule) == "<ReadSchedule /slots 1.25 s after answer, 30 s when idle (asking)>"


def test_an_idle_server_is_read_rarely_or_never():
    """A /slots read is a task, and llama-server counts tasks as activity: read every
    1.25 s, an idle server with --sleep-idle-seconds would never fall asleep."""
    schedule = ReadSchedule(slots_gap=1.25, idle_interval=30.0)
    schedule.slots_asked(0.0)
    schedule.slots_answered(1.0, idle=True)
    assert schedule.slots_due(2.25) == pytest.approx(28.75)  # not after the gap: idle
    assert schedule.slots_wait(2.25) == 0  # a read that must happen (a drain) may
    schedule.slots_asked(31.0)
    schedule.slots_answered(31.5, idle=False)
    assert schedule.slots_due(32.75) == 0  # busy: every gap again
    never = ReadSchedule(idle_interval=None)
    never.slots_asked(0.0)
    never.slots_answered(0.5, idle=True)
    assert never.slots_due(1000.0) == math.inf
    with pytest.raises(ValueError, match="at least slots_gap"):
        ReadSchedule(slots_gap=2.0, idle_interval=1.5)
