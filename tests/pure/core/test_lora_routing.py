"""LoRA adapters in routing: an adapter's name is a pool of the servers that have it,
the request waits for one, servers already running it are preferred, and the fleet
keeps count of which adapter each reservation runs."""

import pytest

from corral.core import Condition, Dispatch, Fleet, Reject, Report, RequestInfo, Wait
from corral.core.fleet import Adapter
from corral.core.routing import PrefixPolicy, SlotPolicy
from corral.core.routing.filters import HasAdapter, resolve_pools
from corral.core.routing.scorers import adapter_affinity

CHAT = "/v1/chat/completions"
SQL = Adapter("sql", 0, "/a/sql.gguf")
POEM = Adapter("poem", 1, "/a/poem.gguf")


def fleet_of(*backends: tuple[str, str, int, tuple[Adapter, ...]]) -> Fleet:
    fleet = Fleet()
    for name, model, slots, adapters in backends:
        fleet.register(name, name=name, address=f"http://{name}", api_key=None, now=0)
        report = Report(Condition.READY, model=model, slots_total=slots, adapters=adapters)
        fleet.report(name, report, now=0)
    return fleet


def ask(fleet: Fleet, name: str) -> RequestInfo:
    """As the proxy builds it: an adapter's name sets ``adapter``."""
    return RequestInfo(CHAT, name, adapter=name if fleet.is_adapter(name) else None)


def test_an_adapter_is_a_pool_of_the_servers_that_have_it():
    fleet = fleet_of(("big", "gemma", 8, ()), ("a", "gemma", 2, (SQL,)), ("b", "gemma", 1, (POEM,)))
    assert fleet.is_adapter("sql") and not fleet.is_adapter("gemma")
    assert fleet.adapters() == {"poem": ["gemma"], "sql": ["gemma"]}
    for policy in (SlotPolicy(), PrefixPolicy()):
        assert policy.pick(fleet, ask(fleet, "sql")) == Dispatch("a")
        assert policy.pick(fleet, ask(fleet, "poem")) == Dispatch("b")
        assert policy.pick(fleet, ask(fleet, "gemma")) == Dispatch("big")  # the base: any


def test_a_request_for_an_adapter_waits_while_no_server_with_it_is_free():
    fleet = fleet_of(("big", "gemma", 8, ()), ("a", "gemma", 1, (SQL,)))
    fleet.reserve("a", 0.0, None, "sql")
    assert SlotPolicy().pick(fleet, ask(fleet, "sql")) == Wait("no free slot")
    fleet.remove("a")  # gone: still known, so it waits for one (never the base model)
    assert fleet.is_adapter("sql")
    decision = SlotPolicy().pick(fleet, ask(fleet, "sql"))
    assert isinstance(decision, Wait) and "sql" in decision.reason


def test_a_model_name_wins_over_an_adapter_name():
    fleet = fleet_of(("a", "gemma", 2, (Adapter("qwen", 0),)), ("q", "qwen", 2, ()))
    assert not fleet.is_adapter("qwen")
    assert SlotPolicy().pick(fleet, ask(fleet, "qwen")) == Dispatch("q")


def test_unknown_names_are_still_rejected_in_a_fleet_of_several_models():
    fleet = fleet_of(("a", "gemma", 2, (SQL,)), ("q", "qwen", 2, ()))
    assert isinstance(SlotPolicy().pick(fleet, ask(fleet, "nope")), Reject)
    assert resolve_pools(fleet, ask(fleet, "sql")) == ["gemma"]


def test_servers_already_running_the_adapter_are_preferred():
    both = (SQL, POEM)
    fleet = fleet_of(("a", "gemma", 4, both), ("b", "gemma", 4, both), ("c", "gemma", 4, both))
    fleet.reserve("a", 0.0, None, "poem")  # runs another adapter: batched apart
    fleet.reserve("c", 0.0, None, "sql")  # runs this one
    info = ask(fleet, "sql")
    assert SlotPolicy().pick(fleet, info) == Dispatch("c")
    assert info.note.reason == "adapter"
    assert [adapter_affinity(fleet.get(n), "sql") for n in "abc"] == [0, 1, 2]
    # without an idle server or one running it, the most free slots win as before
    fleet.release("c", 0.0, None, None, "sql")
    fleet.reserve("b", 0.0, None, "poem")
    fleet.reserve("c", 0.0, None, "poem")
    fleet.reserve("c", 0.0, None, "poem")
    assert SlotPolicy().pick(fleet, ask(fleet, "sql")) in (Dispatch("a"), Dispatch("b"))


def test_reservations_count_their_adapter_until_released():
    fleet = fleet_of(("a", "gemma", 4, (SQL,)))
    fleet.reserve("a", 0.0, None, "sql")
    fleet.reserve("a", 0.0, None, None)
    assert dict(fleet.get("a").running) == {"sql": 1, None: 1}
    fleet.release("a", 0.0, None, None, "sql")
    fleet.release("a", 0.0, None, None, None)
    assert not fleet.get("a").running
    fleet.check_index()


def test_adapters_follow_reports_and_leave_with_the_backend():
    fleet = fleet_of(("a", "gemma", 2, (SQL,)))
    fleet.report("a", Report(Condition.READY, model="gemma", slots_total=2, adapters=(POEM,)), 1)
    assert fleet.adapters() == {"poem": ["gemma"]}
    assert fleet.get("a").adapter("poem") == POEM and fleet.get("a").adapter("sql") is None
    fleet.remove("a")
    assert fleet.adapters() == {}


@pytest.mark.parametrize("name, ok", [("sql", True), ("poem", False)])
def test_the_rule_vetoes_servers_without_the_adapter(name, ok):
    fleet = fleet_of(("a", "gemma", 2, (SQL,)), ("b", "gemma", 2, (POEM,)))
    assert HasAdapter().accepts(fleet.get("a"), ask(fleet, name)) is ok
