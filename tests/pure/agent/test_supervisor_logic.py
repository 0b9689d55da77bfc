"""The supervisor's decisions (:mod:`corral.agent.lifecycle`), without processes or
an event loop: backoff and the lifecycle state table."""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import pytest

from corral.agent import lifecycle
from corral.agent.lifecycle import (
    Backoff,
    ExitInfo,
    IllegalTransition,
    Phase,
    SupervisorState,
    crash_issue,
)
from corral.protocol.messages import IssueInfo

LINES = ["srv  load_model: loading model", "GGML_ASSERT(n_tokens > 0) failed", "Aborted"]


def ready_state(now: float = 100.0, *, started: float = 97.7) -> SupervisorState:
    state = SupervisorState("gemma")
    state.started(started, pid=1234, port=40123)
    state.ready(now)
    return state


# --------------------------------------------------------------------- backoff
def test_backoff_doubles_from_half_a_second_up_to_thirty():
    backoff = Backoff()
    delays = [backoff.failed(now=float(i)) for i in range(9)]
    assert delays == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]


def test_backoff_resets_after_a_stable_run_only():
    backoff = Backoff(stable_after=60)
    assert [backoff.failed(0), backoff.failed(1), backoff.failed(2)] == [0.5, 1, 2]
    backoff.ready(10)
    assert backoff.failed(69.9) == 4  # ready for 59.9 s: not stable yet
    backoff.ready(100)
    assert backoff.failed(160) == 0.5  # ready for 60 s: forgiven
    assert backoff.failed(161) == 1  # and the next failure grows again


def test_backoff_does_not_reset_when_never_ready():
    backoff = Backoff(stable_after=1)
    assert [backoff.failed(t) for t in (0, 100, 200)] == [0.5, 1, 2]


def test_backoff_refuses_nonsense():
    with pytest.raises(ValueError, match="initial"):
        Backoff(initial=0)
    with pytest.raises(ValueError):
        Backoff(initial=5, maximum=1)
    with pytest.raises(ValueError):
        Backoff(factor=0.5)


# ------------------------------------------------------------ the state table
def test_start_load_ready_records_the_load_time():
    state = SupervisorState("gemma")
    assert state.phase is Phase.STOPPED and state.condition == "unreachable"
    state.started(10.0, pid=1234, port=40123)
    assert (state.phase, state.condition, state.pid, state.port) == (
        Phase.STARTING,
        "loading",
        1234,
        40123,
    )
    assert state.load_time is None
    state.ready(12.3)
    assert state.phase is Phase.READY and state.condition == "ready"
    assert state.load_time == pytest.approx(2.3)
    assert state.restarts == 0 and state.issues == []


def test_crash_backs_off_then_restarts_counting_and_clears_the_issue_when_ready():
    state = ready_state(now=100.0)
    state.exited(-9, 112.3, LINES)
    assert state.phase is Phase.BACKOFF and state.condition == "error"
    assert (state.pid, state.port) == (None, None)
    assert state.delay == 0.5 and state.restart_at == pytest.approx(112.8)
    assert [issue.code for issue in state.issues] == ["crashed"]
    assert state.last_exit == ExitInfo(-9, pytest.approx(14.6), False, tuple(LINES))

    assert not state.restart_due(112.7)
    assert state.restart_due(112.8)
    state.started(112.8, pid=1300, port=40200)
    assert state.phase is Phase.STARTING and state.restarts == 1
    assert [issue.code for issue in state.issues] == ["crashed"]  # still shown while loading
    state.ready(114.0)
    assert state.issues == [] and state.load_time == pytest.approx(1.2)
    assert state.last_exit is not None and state.last_exit.code == -9  # history stays


def test_repeated_crashes_back_off_longer():
    state = SupervisorState("gemma")
    delays = []
    now = 0.0
    for pid in range(1, 5):
        state.started(now, pid=pid, port=40000 + pid)
        state.exited(1, now + 0.1, ["error: cannot bind"])
        delays.append(state.delay)
        assert state.last_exit is not None and state.last_exit.while_loading
        now = state.restart_at or 0.0
    assert delays == [0.5, 1, 2, 4]
    assert state.restarts == 3


def test_start_failed_reports_the_reason_and_retries_with_backoff():
    state = SupervisorState("gemma")
    state.start_failed("model file /no/such.gguf not found", 5.0)
    assert state.phase is Phase.BACKOFF
    assert state.issues == [IssueInfo("start_failed", "model file /no/such.gguf not found")]
    assert state.restart_at == 5.5 and state.restarts == 0
    state.start_failed("model file /no/such.gguf not found", 5.5)
    assert state.restart_at == 6.5 and state.restarts == 1


def test_stop_from_every_running_phase():
    for prepare in (
        lambda s: s.started(0, pid=1, port=2),
        lambda s: (s.started(0, pid=1, port=2), s.ready(1)),
        lambda s: s.start_failed("no binary", 0),
    ):
        state = SupervisorState("gemma")
        prepare(state)
        state.stop_requested()
        assert state.phase is Phase.STOPPING and not state.restart_due(1e9)
        state.stopped()
        assert state.phase is Phase.STOPPED
        assert (state.pid, state.port, state.issues) == (None, None, [])


def test_pid_and_port_stay_known_while_stopping():
    state = ready_state()
    state.stop_requested()
    assert (state.pid, state.port) == (1234, 40123)


@pytest.mark.parametrize(
    ("prepare", "event"),
    [
        (lambda s: None, lambda s: s.ready(1)),
        (lambda s: None, lambda s: s.exited(1, 1)),
        (lambda s: None, lambda s: s.stop_requested()),
        (lambda s: None, lambda s: s.stopped()),
        (lambda s: s.started(0, pid=1, port=2), lambda s: s.started(1, pid=3, port=4)),
        (lambda s: s.started(0, pid=1, port=2), lambda s: s.start_failed("x", 1)),
        (lambda s: s.started(0, pid=1, port=2), lambda s: s.stopped()),
        (lambda s: (s.started(0, pid=1, port=2), s.ready(1)), lambda s: s.ready(2)),
        (lambda s: s.start_failed("x", 0), lambda s: s.ready(1)),
        (lambda s: s.start_failed("x", 0), lambda s: s.exited(1, 1)),
        (lambda s: (s.start_failed("x", 0), s.stop_requested()), lambda s: s.exited(1, 1)),
        (lambda s: (s.start_failed("x", 0), s.stop_requested()), lambda s: s.stop_requested()),
        (
            lambda s: (s.start_failed("x", 0), s.stop_requested()),
            lambda s: s.started(1, pid=1, port=2),
        ),
    ],
)
def test_illegal_transitions_raise_and_change_nothing(prepare, event):
    state = SupervisorState("gemma")
    prepare(state)
    before = copy.deepcopy(state)
    with pytest.raises(IllegalTransition, match=state.phase.name):
        event(state)
    assert state == before


# ------------------------------------------------------------------ what people read
def test_crash_issue_names_the_signal_the_runtime_and_the_last_lines():
    state = ready_state(now=100.0, started=90.0)
    state.exited(-9, 102.3, LINES)
    (issue,) = state.issues
    assert issue.code == "crashed"
    assert issue.message == (
        "llama-server exited with status -9 (SIGKILL) after 12.3s; last lines: "
        "srv  load_model: loading model | GGML_ASSERT(n_tokens > 0) failed | Aborted"
    )


def test_crash_issue_for_an_exit_code_while_loading_and_for_silence():
    issue = crash_issue(ExitInfo(1, 0.25, True, ()))
    assert issue.message == "llama-server exited with status 1 while loading after 0.2s; " + (
        "it wrote nothing"
    )
    assert "SIGABRT" in crash_issue(ExitInfo(-6, 1, False, ("x",))).message


def test_crash_issue_for_an_illegal_instruction_says_what_to_rebuild():
    """A native build that uses AMX where the VM does not enable it died so, with no
    word of why in its output (found when a fresh machine's every llama-server did)."""
    lines = tuple("x" * 1000 for _ in range(20))  # the hint survives clipping
    message = crash_issue(ExitInfo(-4, 1.5, True, lines)).message
    assert message.startswith("llama-server exited with status -4 (SIGILL) while loading")
    assert "-mno-amx-tile" in message and "illegal instruction" in message
    assert "illegal instruction" not in crash_issue(ExitInfo(-11, 1, False, ("x",))).message


def test_crash_issue_quotes_only_the_end_and_fits_the_protocol_limit():
    lines = [f"line {i} " + "x" * 1000 for i in range(20)]
    message = crash_issue(ExitInfo(-11, 1, False, tuple(lines))).message
    assert len(message) <= 4096
    assert "line 19" in message and "line 9 " not in message
    assert "SIGSEGV" in message


def test_repr_reads_at_a_glance():
    state = SupervisorState("gemma")
    assert repr(state) == "<Supervisor gemma STOPPED restarts 0>"
    state.started(0, pid=1234, port=40123)
    assert repr(state) == "<Supervisor gemma STARTING pid 1234 port 40123 restarts 0>"
    state.exited(-9, 1, ["bye"])
    assert repr(state) == "<Supervisor gemma BACKOFF delay 0.5s restarts 0 issues crashed>"
    state.started(2, pid=1300, port=40200)
    state.ready(4.3)
    assert repr(state) == "<Supervisor gemma READY pid 1300 port 40200 restarts 1 load 2.3s>"
    assert repr(Backoff()) == "<Backoff next 0.5s (0.5-30s)>"


def test_the_lifecycle_does_no_io():
    """Decide without I/O: the state table's module imports nothing that acts."""
    tree = ast.parse(Path(lifecycle.__file__).read_text())
    imported = {
        name.split(".")[0]
        for node in ast.walk(tree)
        for name in (
            [alias.name for alias in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else []
        )
    }
    acting = {"asyncio", "aiohttp", "os", "socket", "subprocess", "time", "ctypes", "threading"}
    assert imported & acting == set()
