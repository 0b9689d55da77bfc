"""The policy: pools by model, most free slots first, rules, reject and wait."""

from dataclasses import dataclass

from support.fleets import ready_fleet

from corral.core import Condition, Dispatch, Fleet, Policy, Reject, Report, RequestInfo, Wait
from corral.core.fleet import Backend

CHAT = "/v1/chat/completions"


def test_empty_fleet_waits():
    assert Policy().pick(Fleet(), RequestInfo(CHAT, "m")) == Wait("no server has registered yet")


def test_most_free_slots_wins():
    fleet = ready_fleet(("small", "m", 2), ("big", "m", 8))
    assert Policy().pick(fleet, RequestInfo(CHAT)) == Dispatch("big")


def test_single_model_fleet_accepts_any_model_name():
    fleet = ready_fleet(("a", "gemma", 2))
    assert Policy().pick(fleet, RequestInfo(CHAT, "gpt-4o")) == Dispatch("a")


def test_model_picks_the_pool():
    fleet = ready_fleet(("a", "gemma", 8), ("b", "qwen", 2))
    assert Policy().pick(fleet, RequestInfo(CHAT, "qwen")) == Dispatch("b")


def test_unknown_model_in_multi_model_fleet_is_rejected_with_the_list():
    fleet = ready_fleet(("a", "gemma", 8), ("b", "qwen", 2))
    decision = Policy().pick(fleet, RequestInfo(CHAT, "llama"))
    assert isinstance(decision, Reject)
    assert decision.status == 404
    assert decision.models == ("gemma", "qwen")
    assert "gemma, qwen" in decision.message


def test_no_model_field_goes_to_the_most_free_server_of_any_model():
    fleet = ready_fleet(("a", "gemma", 2), ("b", "qwen", 6))
    assert Policy().pick(fleet, RequestInfo(CHAT)) == Dispatch("b")


def test_full_fleet_waits():
    fleet = ready_fleet(("a", "m", 1))
    fleet.reserve("a")
    assert isinstance(Policy().pick(fleet, RequestInfo(CHAT)), Wait)


def test_model_of_a_loading_server_waits_rather_than_404():
    fleet = ready_fleet(("a", "gemma", 2), ("b", "qwen", 2))
    fleet.report("b", Report(Condition.LOADING, model="qwen"), now=1)
    assert isinstance(Policy().pick(fleet, RequestInfo(CHAT, "qwen")), Wait)


@dataclass
class OnlyNamed:
    """A rule, as a LoRA-adapter or affinity rule would be written."""

    name: str

    def accepts(self, backend: Backend, request: RequestInfo) -> bool:
        return backend.name == self.name


def test_rules_veto_candidates():
    fleet = ready_fleet(("big", "m", 8), ("small", "m", 2))
    assert Policy([OnlyNamed("small")]).pick(fleet, RequestInfo(CHAT)) == Dispatch("small")
    assert isinstance(Policy([OnlyNamed("nobody")]).pick(fleet, RequestInfo(CHAT)), Wait)


def test_ties_are_broken_fairly():
    fleet = ready_fleet(*[(f"s{i}", "m", 4) for i in range(4)])
    policy = Policy()
    picks = []
    for _ in range(8):
        decision = policy.pick(fleet, RequestInfo(CHAT))
        assert isinstance(decision, Dispatch)
        fleet.reserve(decision.backend_id)
        picks.append(decision.backend_id)
    assert sorted(picks) == sorted([f"s{i}" for i in range(4)] * 2)


def test_servers_that_name_no_model_still_serve():
    fleet = Fleet()
    fleet.register("a", name="a", address="http://a", api_key=None, now=0)
    fleet.report("a", Report(Condition.READY, model=None, slots_total=2), now=0)
    assert fleet.models() == []
    assert Policy().pick(fleet, RequestInfo(CHAT, "whatever")) == Dispatch("a")
    assert Policy().pick(fleet, RequestInfo(CHAT)) == Dispatch("a")


def test_a_pinned_request_waits_for_its_agent():
    from corral.core import Condition, Fleet, Report
    from corral.core.policy import Dispatch, Policy, RequestInfo, Wait

    fleet = Fleet()
    for name, slots in (("a", 2), ("b", 1)):
        fleet.register(name, name=name, address=f"http://{name}", api_key=None, now=0)
        fleet.report(name, Report(Condition.READY, model="m", slots_total=slots), now=0)
    pinned = RequestInfo("/completion", backend_id="b")
    assert Policy().pick(fleet, pinned) == Dispatch("b")  # not the freest, a
    fleet.reserve("b")
    assert isinstance(Policy().pick(fleet, pinned), Wait)
    assert Policy().pick(fleet, RequestInfo("/completion")) == Dispatch("a")
    assert pinned.group != RequestInfo("/completion").group  # queued apart


# ---------------------------------------------------------------- model identity
# A request naming a model the fleet knows is served by that model or waits for it;
# never answered by another model (issue #11, item 3).


def test_model_whose_only_server_is_loading_waits_never_goes_to_another():
    fleet = ready_fleet(("a", "small", 4), ("b", "other", 2))
    fleet.report("b", Report(Condition.LOADING, model=None), now=1)  # restarted: no name yet
    assert fleet.models() == ["small"]
    assert Policy().pick(fleet, RequestInfo(CHAT, "other")) == Wait("no free slot")
    assert Policy().pick(fleet, RequestInfo(CHAT, "small")) == Dispatch("a")


def test_model_whose_only_server_left_the_fleet_waits_never_goes_to_another():
    fleet = ready_fleet(("a", "small", 4), ("b", "other", 2))
    fleet.remove("b")  # its agent is gone: one model is left registered
    assert fleet.models() == ["small"]
    assert fleet.seen_models() == ["other", "small"]
    assert Policy().pick(fleet, RequestInfo(CHAT, "other")) == Wait("no free slot")
    # any other name is still unknown: the fleet has seen two models
    decision = Policy().pick(fleet, RequestInfo(CHAT, "gpt-4o"))
    assert isinstance(decision, Reject)
    assert decision.models == ("other", "small")


def test_model_whose_only_server_is_unreachable_or_draining_waits():
    fleet = ready_fleet(("a", "small", 4), ("b", "other", 2))
    fleet.report("b", Report(Condition.UNREACHABLE, model="other"), now=1)
    assert isinstance(Policy().pick(fleet, RequestInfo(CHAT, "other")), Wait)
    fleet.report("b", Report(Condition.READY, model="other", slots_total=2), now=2)
    fleet.cordon("b", now=3)
    assert isinstance(Policy().pick(fleet, RequestInfo(CHAT, "other")), Wait)
    fleet.uncordon("b")
    assert Policy().pick(fleet, RequestInfo(CHAT, "other")) == Dispatch("b")


def test_a_fleet_that_only_ever_saw_one_model_accepts_any_name_even_when_it_is_down():
    fleet = ready_fleet(("a", "small", 2))
    fleet.report("a", Report(Condition.LOADING), now=1)
    assert isinstance(Policy().pick(fleet, RequestInfo(CHAT, "gpt-4o")), Wait)
    fleet.report("a", Report(Condition.READY, model="small", slots_total=2), now=2)
    assert Policy().pick(fleet, RequestInfo(CHAT, "gpt-4o")) == Dispatch("a")


def test_a_scaled_model_with_no_server_waits_instead_of_404_or_another_model():
    fleet = ready_fleet(("a", "small", 2), ("b", "medium", 2))
    assert isinstance(Policy().pick(fleet, RequestInfo("/completion", "large")), Reject)
    fleet.expect(["large"])  # --scaled-model large: it may have no server now
    assert isinstance(Policy().pick(fleet, RequestInfo("/completion", "large")), Wait)
    one = ready_fleet(("a", "small", 2))
    one.expect(["large"])
    assert isinstance(Policy().pick(one, RequestInfo("/completion", "large")), Wait)
    # the fleet knows two models now: another name is unknown, never sent to "small"
    assert isinstance(Policy().pick(one, RequestInfo("/completion", "whatever")), Reject)


def test_a_route_goes_only_to_servers_that_answer_its_api():
    fleet = ready_fleet(("llama", "m", 2))
    fleet.register("vllm", name="vllm", address="http://vllm", api_key=None, now=0)
    fleet.report(
        "vllm",
        Report(Condition.READY, model="m", slots_total=64, apis=frozenset({"openai"})),
        now=0,
    )
    policy = Policy()
    # vLLM has the most free slots, but does not answer llama.cpp's /completion
    assert policy.pick(fleet, RequestInfo(CHAT, "m", api="openai")) == Dispatch("vllm")
    assert policy.pick(fleet, RequestInfo("/completion", "m", api="llamacpp")) == Dispatch("llama")
    # nobody answers Ollama's /api/chat: rejected at once, not buffered forever
    decision = policy.pick(fleet, RequestInfo("/api/chat", "m", api="ollama"))
    assert isinstance(decision, Reject) and decision.status == 404
    assert "/api/chat" in decision.message
    # a busy llama-server makes a llama.cpp request wait, even with vLLM idle
    fleet.reserve("llama")
    fleet.reserve("llama")
    assert isinstance(policy.pick(fleet, RequestInfo("/completion", "m", api="llamacpp")), Wait)


def test_requests_of_different_apis_wait_in_different_queues():
    assert (
        RequestInfo("/completion", "m", api="llamacpp").group
        != RequestInfo(CHAT, "m", api="openai").group
    )


def test_a_model_whose_servers_do_not_answer_the_route_is_rejected_not_buffered():
    fleet = ready_fleet(("llama", "gemma", 2))
    fleet.register("vllm", name="vllm", address="http://vllm", api_key=None, now=0)
    fleet.report(
        "vllm",
        Report(Condition.READY, model="llama-8b", slots_total=4, apis=frozenset({"openai"})),
        now=0,
    )
    decision = Policy().pick(fleet, RequestInfo("/completion", "llama-8b", api="llamacpp"))
    assert isinstance(decision, Reject) and decision.status == 404
    assert "llama-8b" in decision.message
    # when it changes model, what it answers moves with it
    fleet.report("vllm", Report(Condition.READY, model="gemma", slots_total=4), now=0)
    assert Policy().pick(fleet, RequestInfo("/completion", "gemma", api="llamacpp")) == Dispatch(
        "vllm"
    )
