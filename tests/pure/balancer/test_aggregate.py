"""The balancer's own answers to /props, /slots and /v1/models, from fleet states."""

from corral.balancer import aggregate
from corral.core import Condition, Fleet, Report
from corral.core.fleet import Issue

PROPS = {
    "default_generation_settings": {"params": {"temperature": 0.8}, "n_ctx": 1024},
    "total_slots": 2,
    "model_alias": "gemma",
    "bos_token": "<bos>",
    "chat_template_caps": {"supports_tools": False},
    "endpoint_slots": True,
    "is_sleeping": False,
    "build_info": "b0-unknown",
}
MODELS = {
    "models": [{"name": "gemma", "model": "gemma", "capabilities": ["completion"]}],
    "object": "list",
    "data": [
        {
            "id": "gemma",
            "aliases": ["gemma"],
            "tags": [],
            "object": "model",
            "architecture": {"input_modalities": ["text"]},
            "created": 1,
            "owned_by": "llamacpp",
            "meta": {"n_ctx": 1024, "n_vocab": 262144, "size": 246587904},
        }
    ],
}


def fleet_of(*reports: Report) -> Fleet:
    fleet = Fleet()
    for index, report in enumerate(reports):
        name = f"a{index}"
        fleet.register(name, name=name, address=f"http://{name}", api_key=None, now=0)
        fleet.report(name, report, now=0)
    return fleet


def ready(slots: int = 2, **kw) -> Report:
    kw.setdefault("props", PROPS)
    return Report(Condition.READY, model="gemma", slots_total=slots, **kw)


def test_props_keep_every_field_but_the_fleet_wide_ones():
    props = aggregate.props(fleet_of(ready(2), ready(3)))
    for key, value in PROPS.items():
        if key != "total_slots":
            assert props[key] == value, key
    assert props["total_slots"] == 5
    assert props["corral"] == {"agents": 2, "agents_ready": 2, "models": ["gemma"]}


def test_the_fleet_sleeps_only_when_every_server_sleeps():
    asleep = {**PROPS, "is_sleeping": True}
    assert aggregate.props(fleet_of(ready(props=asleep), ready()))["is_sleeping"] is False
    both = fleet_of(ready(props=asleep), ready(props=asleep))
    assert aggregate.props(both)["is_sleeping"] is True


def test_slots_number_the_fleet_and_map_back_to_servers():
    fleet = fleet_of(ready(2), ready(3))
    status, entries = aggregate.slots(fleet)
    assert status == 200
    assert [e["id"] for e in entries] == [0, 1, 2, 3, 4]
    assert entries[3]["corral"] == {"agent": "a1", "id": 1}
    assert set(entries[0]) == {"id", "n_ctx", "speculative", "is_processing", "corral"}
    owner = aggregate.slot_owner(fleet, 3)
    assert owner is not None and (owner[0].name, owner[1]) == ("a1", 1)
    assert aggregate.slot_owner(fleet, 5) is None
    assert aggregate.slot_owner(fleet, -1) is None


def test_slots_answer_501_when_every_server_runs_without_them():
    off = (Issue("slots_disabled", "off"),)
    status, body = aggregate.slots(fleet_of(ready(issues=off), ready(issues=off)))
    assert status == 501
    assert body["error"]["type"] == "not_supported_error"
    assert aggregate.slots(fleet_of(ready(issues=off), ready()))[0] == 200


def test_models_keep_the_servers_fields_and_add_corrals_own():
    body = aggregate.models(fleet_of(ready(model_list=MODELS), ready(model_list=MODELS)), 7)
    (entry,) = body["data"]
    for key, value in MODELS["data"][0].items():
        assert entry[key] == value, key
    assert entry["corral"] == {"agents": 2, "agents_ready": 2}
    assert body["models"] == MODELS["models"]
    assert "corral" not in MODELS["data"][0]  # the agent's copy is left alone


def test_models_from_an_agent_that_sent_no_list():
    body = aggregate.models(fleet_of(ready()), 7)
    assert body == {
        "object": "list",
        "data": [
            {
                "id": "gemma",
                "object": "model",
                "created": 7,
                "owned_by": "llamacpp",
                "corral": {"agents": 1, "agents_ready": 1},
            }
        ],
    }
