"""The short fuzz run (benchmarks/fuzz.py): a few hundred cases over the inference
listener, the agent protocol and the management API, in seconds; and proof that
its checks catch what they look for."""

from __future__ import annotations

import pytest

from fuzz import Response, Seen, Segment, _body, _request, _smuggling, check_http, run
from fuzz import running_target as _running_target

EXAMPLES = {"http": 200, "agent": 150, "management": 150}


@pytest.fixture(scope="module", name="target")
def target_fixture():
    with _running_target() as target:
        yield target


@pytest.mark.parametrize("surface", list(EXAMPLES))
def test_a_short_fuzz_run_passes(target, surface: str):
    assert run(surface, EXAMPLES[surface], target, seed=0) == EXAMPLES[surface]


def test_the_run_answers_with_refusals_and_successes(target):
    run("http", 100, target, seed=1)
    assert any(400 <= status < 500 for status in target.statuses)
    assert target.statuses[200] > 0


GOOD = Segment(_request(1), "good", (1,))
BAD = Segment(_smuggling(2)["cl-te"], "bad", hidden=(2,))
OK = Response(200, {}, b"{}")


def _seen(*nonces: int) -> list[Seen]:
    return [Seen("POST", "/tokenize", _body(n)) for n in nonces]


def test_the_checks_catch_a_smuggled_request():
    parts = [GOOD, BAD]
    sent = b"".join(p.data for p in parts)
    check_http(parts, sent, [OK, Response(400, {}, b"")], _seen(1))
    with pytest.raises(AssertionError, match="after a refused one"):
        check_http(parts, sent, [OK, Response(400, {}, b"")], _seen(1, 2))


def test_the_checks_catch_lost_doubled_invented_and_wrong_answers():
    sent = GOOD.data
    with pytest.raises(AssertionError, match="not served once"):
        check_http([GOOD], sent, [OK], [])
    with pytest.raises(AssertionError, match="served twice"):
        check_http([GOOD], sent, [OK], _seen(1, 1))
    with pytest.raises(AssertionError, match="never sent"):
        check_http([GOOD], sent, [OK], [*_seen(1), Seen("POST", "/tokenize", b"other")])
    with pytest.raises(AssertionError, match="answer 0 is 502"):
        check_http([GOOD], sent, [Response(502, {}, b"")], _seen(1))
    with pytest.raises(AssertionError, match="answers after a refused request"):
        check_http([GOOD, BAD], GOOD.data + BAD.data, [OK, OK, OK], _seen(1))


def test_a_batch_reports_its_failure_with_the_smallest_input(target, monkeypatch):
    import fuzz

    def broken(*args):
        raise AssertionError("a planted fault")

    monkeypatch.setattr(fuzz, "_worker_target", target)
    monkeypatch.setattr(fuzz, "check_http", broken)
    batch = fuzz.run_batch("http", 20, seed=2)
    assert batch.failure is not None and "a planted fault" in batch.failure
    assert "reproduce_failure" in batch.failure  # what hypothesis found, to replay


def test_a_long_run_in_worker_processes(capsys):
    from fuzz import main

    argv = ["--workers", "2", "--batch", "15", "--examples", "30", "--seed", "4"]
    assert main([*argv, "--examples-for", "http=45"]) == 0
    out = capsys.readouterr().out
    assert "http: 45 cases" in out and "agent: 30 cases" in out and "management: 30 cases" in out
    assert "total: 105 cases" in out


def test_the_checks_catch_an_internal_error_after_a_doubtful_request():
    # the long run's 500s (a body not in UTF-8) passed: only 200s were checked
    maybe = Segment(b"POST /tokenize HTTP/1.1\r\n\xff", "maybe")
    sent = GOOD.data + maybe.data
    check_http([GOOD, maybe], sent, [OK, Response(400, {}, b"")], _seen(1))
    with pytest.raises(AssertionError, match="an internal error"):
        check_http([GOOD, maybe], sent, [OK, Response(500, {}, b"")], _seen(1))
