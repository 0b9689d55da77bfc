"""The short fuzz run (benchmarks/fuzz.py): a few hundred cases over the inference
listener, the agent protocol and the management API, in seconds; and proof that
its checks catch what they look for."""

from __future__ import annotations

import pytest

from fuzz import (
    KEYS,
    BodyRequest,
    Response,
    Seen,
    Segment,
    _body,
    _request,
    _smuggling,
    check_body,
    check_http,
    run,
)
from fuzz import running_target as _running_target

EXAMPLES = {"http": 200, "body": 200, "agent": 150, "management": 150}


@pytest.fixture(scope="module", name="target")
def target_fixture():
    with _running_target() as target:
        yield target


@pytest.fixture(scope="module", name="keyed")
def keyed_fixture():
    """The body surface's target: prefix routing, the priority queue, a keys file."""
    with _running_target(keyed=True) as target:
        yield target


@pytest.mark.parametrize("surface", list(EXAMPLES))
def test_a_short_fuzz_run_passes(target, keyed, surface: str):
    on = keyed if surface == "body" else target
    assert run(surface, EXAMPLES[surface], on, seed=0) == EXAMPLES[surface]


def test_the_body_cases_are_served_and_refused(keyed):
    run("body", 150, keyed, seed=1)
    assert keyed.statuses[200] > 0 and keyed.statuses[400] > 0 and keyed.statuses[401] > 0


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
    assert "body: 30 cases" in out and "body: 5xx relayed from the server: 0" in out
    assert "total: 135 cases" in out


def test_the_checks_catch_an_internal_error_after_a_doubtful_request():
    # the long run's 500s (a body not in UTF-8) passed: only 200s were checked
    maybe = Segment(b"POST /tokenize HTTP/1.1\r\n\xff", "maybe")
    sent = GOOD.data + maybe.data
    check_http([GOOD, maybe], sent, [OK, Response(400, {}, b"")], _seen(1))
    with pytest.raises(AssertionError, match="an internal error"):
        check_http([GOOD, maybe], sent, [OK, Response(500, {}, b"")], _seen(1))


CHAT = BodyRequest(b"", "/v1/chat/completions", "fz1", b'{"messages": []}', KEYS[0])
SERVED = Response(200, {"x-corral-server": "rec"}, b"{}")


def _upstream(request: BodyRequest, body: bytes | None = None, **headers: str) -> Seen:
    sent = request.body if body is None else body
    return Seen("POST", request.path, sent, request.request_id, tuple(headers.items()))


def test_the_body_checks_catch_5xx_by_origin_and_requests_that_should_not_pass():
    check_body([CHAT], [SERVED], [_upstream(CHAT)])
    check_body([CHAT], [Response(400, {}, b"")], [])
    with pytest.raises(AssertionError, match="500 from the balancer"):
        check_body([CHAT], [Response(500, {}, b"")], [])
    with pytest.raises(AssertionError, match="502 relayed from the server"):
        check_body([CHAT], [Response(502, {"x-corral-server": "rec"}, b"")], [_upstream(CHAT)])
    with pytest.raises(AssertionError, match="reached the server 1 times"):
        check_body([CHAT], [Response(401, {}, b"")], [_upstream(CHAT)])
    with pytest.raises(AssertionError, match="reached the server 0 times"):
        check_body([CHAT], [SERVED], [])
    with pytest.raises(AssertionError, match="never sent"):
        other = Seen("POST", CHAT.path, CHAT.body, "fz9")
        check_body([CHAT], [SERVED], [_upstream(CHAT), other])
    with pytest.raises(AssertionError, match="the server got"):
        check_body([CHAT], [SERVED], [_upstream(CHAT, b'{"messages": [1]}')])
    with pytest.raises(AssertionError, match="a client header reached the server"):
        check_body([CHAT], [SERVED], [_upstream(CHAT, **{"X-Corral-Priority": "high"})])
    with pytest.raises(AssertionError, match="2 requests got 1 answers"):
        check_body([CHAT, CHAT], [SERVED], [_upstream(CHAT)])
    pinned = BodyRequest(b"", CHAT.path, "fz1", b'{"messages": [], "id_slot": 3}', None)
    check_body([pinned], [SERVED], [_upstream(pinned, b'{"messages":[],"id_slot":1}')])


def test_the_body_fuzz_finds_the_non_utf8_500(keyed, monkeypatch):
    # d7621a4's fault planted again: msgspec's UnicodeDecodeError escaping as a 500
    from corral.balancer import proxy

    fixed = proxy.request_fields

    def unfixed(body: bytes):
        if b"\xff" in body:
            raise UnicodeDecodeError("utf-8", body, 0, 1, "invalid start byte")
        return fixed(body)

    monkeypatch.setattr(proxy, "request_fields", unfixed)
    keyed.errors.clear()
    with pytest.raises((AssertionError, ExceptionGroup)) as found:  # one or several kinds
        run("body", 300, keyed, seed=3)
    keyed.errors.clear()
    failures = getattr(found.value, "exceptions", (found.value,))
    assert any("500 from the balancer" in str(f) for f in failures), failures


def test_a_mutation_of_a_nonce_is_not_another_request():
    # the long run's false "requests served twice": request 1's nonce mutated into 2's
    mutated = _request(1).replace(b"n1x", b"n2x")
    parts = [Segment(mutated, "maybe", (1,)), Segment(_request(2), "good", (2,))]
    seen = [Seen("POST", "/tokenize", mutated.split(b"\r\n\r\n")[1]), *_seen(2)]
    check_http(parts, b"".join(p.data for p in parts), [OK, OK], seen)
