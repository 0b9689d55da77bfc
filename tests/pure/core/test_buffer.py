"""The buffer: bounded, FIFO across groups, deadlines, O(1) cancel."""

import pytest

from corral.core import Buffer, BufferFull, RequestInfo


def req(model=None):
    return RequestInfo("/completion", model)


def test_capacity_is_enforced():
    buffer = Buffer(capacity=2, timeout=10)
    buffer.push(req(), now=0)
    buffer.push(req(), now=0)
    with pytest.raises(BufferFull):
        buffer.push(req(), now=0)
    assert len(buffer) == 2


def test_zero_capacity_refuses_everything():
    with pytest.raises(BufferFull):
        Buffer(capacity=0, timeout=1).push(req(), now=0)


def test_heads_are_oldest_first_across_models():
    buffer = Buffer(capacity=10, timeout=10)
    a1 = buffer.push(req("a"), now=0)
    b1 = buffer.push(req("b"), now=1)
    buffer.push(req("a"), now=2)
    assert buffer.heads() == [a1, b1]
    buffer.take(a1)
    assert [w.enqueued_at for w in buffer.heads()] == [1, 2]


def test_cancel_skips_without_scanning():
    buffer = Buffer(capacity=10, timeout=10)
    w1 = buffer.push(req(), now=0)
    w2 = buffer.push(req(), now=0)
    assert buffer.cancel(w1)
    assert not buffer.cancel(w1)
    assert buffer.heads() == [w2]
    assert len(buffer) == 1


def test_expire_returns_only_overdue_requests():
    buffer = Buffer(capacity=10, timeout=5)
    old = buffer.push(req(), now=0)
    new = buffer.push(req(), now=3)
    assert buffer.next_deadline() == 5
    assert buffer.expire(now=4.9) == []
    assert buffer.expire(now=5) == [old]
    assert buffer.next_deadline() == 8
    assert list(buffer) == [new]
    assert repr(buffer) == "<Buffer [1/10 waiting | timeout 5s]>"


def test_take_must_be_a_head():
    buffer = Buffer(capacity=10, timeout=5)
    buffer.push(req(), now=0)
    second = buffer.push(req(), now=0)
    with pytest.raises(ValueError):
        buffer.take(second)


def test_behind_lists_a_window_of_its_own_queue_and_take_behind_keeps_the_counts():
    buffer = Buffer(capacity=10, timeout=5)
    head = buffer.push(RequestInfo("/v1/chat/completions", "m", size=10), now=0)
    other = buffer.push(RequestInfo("/v1/chat/completions", "n", size=20), now=0)  # own queue
    rest = [buffer.push(RequestInfo("/v1/chat/completions", "m", size=1), now=0) for _ in range(4)]
    buffer.cancel(rest[0])
    assert buffer.behind(head, 3) == rest[1:3]  # three places: one cancelled
    assert buffer.behind(rest[1], 3) == []  # not a head
    buffer.take_behind(rest[2], now=1)
    assert len(buffer) == 4 and buffer.bytes == 10 + 20 + 1 + 1
    assert list(buffer) == [head, other, rest[1], rest[3]]
    with pytest.raises(ValueError):
        buffer.take_behind(rest[2])  # served already
    with pytest.raises(ValueError):
        buffer.take_behind(head)  # a head: take()
    assert buffer.heads(1) == [head, other]
