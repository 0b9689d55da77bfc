"""A backend that serves several models (llama.cpp's router mode): the index, loaders
and model identity."""

from __future__ import annotations

from corral.core.fleet import Condition, Fleet, ModelState, Report
from corral.core.routing import Dispatch, RequestInfo, Wait
from corral.core.routing.filters import resolve_pools
from corral.core.routing.slots import SlotPolicy

L, U, S, G = ModelState.LOADED, ModelState.UNLOADED, ModelState.SLEEPING, ModelState.LOADING


def router(fleet: Fleet, bid: str, models: dict[str, ModelState], slots: int = 2, **kw) -> None:
    if bid not in fleet:
        fleet.register(bid, name=bid, address=f"http://{bid}", api_key=None, now=0.0)
    report = Report(
        Condition.READY,
        model=sorted(models)[0],
        slots_total=slots,
        models=tuple(models.items()),
        **kw,
    )
    fleet.report(bid, report, now=0.0)
    fleet.check_index()


def single(fleet: Fleet, bid: str, model: str, slots: int = 2) -> None:
    fleet.register(bid, name=bid, address=f"http://{bid}", api_key=None, now=0.0)
    fleet.report(bid, Report(Condition.READY, model=model, slots_total=slots), now=0.0)


def ask(model: str | None) -> RequestInfo:
    return RequestInfo("/v1/completions", model)


def test_every_model_a_router_serves_is_known_and_listed() -> None:
    fleet = Fleet()
    router(fleet, "r", {"alpha": L, "beta": U})
    assert fleet.models() == ["alpha", "beta"]
    assert fleet.seen_models() == ["alpha", "beta"]
    assert resolve_pools(fleet, ask("beta")) == ["beta"]
    assert resolve_pools(fleet, ask("gamma")).status == 404  # type: ignore[union-attr]


def test_loaded_model_is_in_the_index_unloaded_one_is_not() -> None:
    fleet = Fleet()
    router(fleet, "r", {"alpha": L, "beta": U, "gamma": S})
    assert [b.id for b in fleet.candidates(["alpha"])] == ["r"]
    assert [b.id for b in fleet.candidates(["gamma"])] == ["r"]  # asleep: a request wakes it
    assert list(fleet.candidates(["beta"])) == []
    assert [b.id for b in fleet.loaders(["beta"])] == ["r"]


def test_request_for_unloaded_model_goes_to_a_host_that_can_load_it() -> None:
    fleet = Fleet()
    router(fleet, "r", {"alpha": L, "beta": U})
    request = ask("beta")
    assert SlotPolicy().pick(fleet, request) == Dispatch("r")
    assert request.note.reason == "load"


def test_a_host_with_the_model_loaded_is_preferred_and_waited_for() -> None:
    fleet = Fleet()
    router(fleet, "cold", {"alpha": U, "beta": L}, slots=4)
    single(fleet, "hot", "alpha", slots=1)
    policy = SlotPolicy()
    assert policy.pick(fleet, ask("alpha")) == Dispatch("hot")
    fleet.reserve("hot")
    # loaded elsewhere but busy: wait for it rather than load the model a second time
    assert isinstance(policy.pick(fleet, ask("alpha")), Wait)
    fleet.set_aside("hot")  # not routable: nobody has it loaded, so load it
    assert policy.pick(fleet, ask("alpha")) == Dispatch("cold")


def test_loaders_prefer_loading_then_room_then_free_slots() -> None:
    fleet = Fleet()
    router(fleet, "full", {"a": L, "b": U}, slots=8, models_max=1)
    router(fleet, "roomy", {"a": U, "b": U}, slots=2, models_max=2)
    router(fleet, "roomier", {"c": L, "b": U}, slots=1)  # no limit
    assert [b.id for b in fleet.loaders(["b"])] == ["roomier", "roomy", "full"]
    router(fleet, "full", {"a": L, "b": G}, slots=8, models_max=1)
    assert fleet.loaders(["b"])[0].id == "full"  # already loading it
    fleet.reserve("roomier")
    assert "roomier" not in [b.id for b in fleet.loaders(["b"])]  # no free slot


def test_models_share_the_hosts_slots() -> None:
    fleet = Fleet()
    router(fleet, "r", {"alpha": L, "beta": L}, slots=2)
    fleet.reserve("r")
    fleet.check_index()
    assert [b.free for b in fleet.candidates(["beta"])] == [1]
    fleet.reserve("r")
    fleet.check_index()
    assert list(fleet.candidates(["alpha"])) == list(fleet.candidates(["beta"])) == []
    fleet.release("r")
    fleet.check_index()
    assert [b.id for b in fleet.candidates(["alpha"])] == ["r"]


def test_load_unload_and_removal_keep_the_index_true() -> None:
    fleet = Fleet()
    router(fleet, "r", {"alpha": L, "beta": U})
    router(fleet, "r", {"alpha": U, "beta": L})
    assert list(fleet.candidates(["alpha"])) == []
    assert [b.id for b in fleet.candidates(["beta"])] == ["r"]
    router(fleet, "r", {"alpha": L, "beta": L, "gamma": U})  # a model added to the dir
    assert fleet.models() == ["alpha", "beta", "gamma"]
    fleet.cordon("r", now=1.0)
    fleet.check_index()
    assert list(fleet.loaders(["gamma"])) == []
    fleet.remove("r")
    fleet.check_index()
    assert fleet.models() == []
    assert fleet.seen_models() == ["alpha", "beta", "gamma"]  # identity kept: they wait


def test_router_beside_single_model_servers() -> None:
    fleet = Fleet()
    single(fleet, "s", "alpha", slots=1)
    router(fleet, "r", {"alpha": L, "beta": U}, slots=3)
    assert [b.id for b in fleet.candidates(["alpha"])] == ["r", "s"]  # most free first
    assert fleet.get("r").model_for("beta") == "beta"
    assert fleet.get("s").model_for("beta") == "alpha"
    # a router that becomes a single-model server again
    fleet.report("r", Report(Condition.READY, model="alpha", slots_total=3), now=1.0)
    fleet.check_index()
    assert fleet.models() == ["alpha"]
