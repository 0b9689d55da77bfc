"""Why a backend gets no requests, in the words the dashboard and `corral top` show."""

from __future__ import annotations

from corral.balancer.management import backend_json, not_routable
from corral.core.fleet import Backend, Condition


def backend(**fields) -> Backend:
    fields.setdefault("condition", Condition.READY)
    return Backend(id="a1", name="gpu-1", address="http://h:1", slots_total=4, **fields)


def test_a_routable_backend_has_no_reasons():
    assert backend().routable
    assert not_routable(backend(), now=10.0) == []
    assert backend_json(backend(), now=10.0)["not_routable"] == []


def test_each_reason_in_words():
    assert not_routable(backend(heartbeat_ok=False, last_seen=3.0), now=10.0) == [
        "heartbeat missed: last heard from 7 s ago"
    ]
    assert not_routable(backend(set_aside=True), now=0.0) == [
        "set aside after a failed request, until its agent reports it ready again"
    ]
    assert not_routable(backend(cordoned=True, cordoned_at=5.0), now=17.0) == [
        "cordoned for a rollout 12 s ago (draining its requests)"
    ]
    assert not_routable(backend(condition=Condition.LOADING), now=0.0) == [
        "its server is loading the model"
    ]
    assert not_routable(backend(applying=True), now=0.0) == [
        "its agent is applying new settings (restarting its server)"
    ]


def test_every_unroutable_backend_says_why():
    for condition in Condition:
        for flags in ({}, {"set_aside": True}, {"heartbeat_ok": False}, {"cordoned": True}):
            b = backend(condition=condition, **flags)
            assert b.routable == (not_routable(b, now=1.0) == []), (condition, flags)
