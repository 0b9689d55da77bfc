"""A request's fleet id_slot pinned to its server, with the server's own slot id."""

import json

import pytest

from corral.balancer.errors import HTTPError
from corral.balancer.slot_actions import _with_fleet_id, pin
from corral.core import Condition, Fleet, Report


def fleet_of(*slots: int) -> Fleet:
    fleet = Fleet()
    for index, total in enumerate(slots):
        name = f"a{index}"
        fleet.register(name, name=name, address=f"http://{name}", api_key=None, now=0)
        fleet.report(name, Report(Condition.READY, model="m", slots_total=total), now=0)
    return fleet


def test_a_fleet_slot_becomes_its_servers_slot():
    body, agent = pin(fleet_of(2, 2), b'{"prompt": "hi", "id_slot": 3, "n_predict": 1}', 3)
    assert agent == "a1"
    assert json.loads(body) == {"prompt": "hi", "id_slot": 1, "n_predict": 1}


def test_a_slot_no_server_holds_asks_for_any_slot():
    body, agent = pin(fleet_of(2), b'{"id_slot": 9}', 9)
    assert agent is None and json.loads(body) == {"id_slot": -1}


def test_bad_bodies_are_refused():
    with pytest.raises(HTTPError) as caught:
        pin(fleet_of(2), b"[1]", 0)
    assert caught.value.status == 400


def test_answers_carry_the_fleet_id():
    assert json.loads(_with_fleet_id(b'{"id_slot": 1, "n_erased": 5}', 1, 3))["id_slot"] == 3
    assert _with_fleet_id(b"not json", 1, 3) == b"not json"
