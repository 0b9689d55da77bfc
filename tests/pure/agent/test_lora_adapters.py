"""The llamacpp runner's reading of ``/lora-adapters``, and the body the balancer
sends a server for a request naming an adapter."""

import json

import pytest

from corral.agent.runners.base import Fetched
from corral.agent.runners.llamacpp import adapter_name, adapters_of, interpret
from corral.balancer.errors import HTTPError
from corral.balancer.lora import with_lora
from corral.core.fleet import Adapter
from corral.protocol.messages import LoraAdapterInfo

LISTED = [
    {"id": 0, "path": "/m/sql-v2.gguf", "scale": 0.0, "task_name": "", "prompt_prefix": ""},
    {"id": 1, "path": "/m/poem.gguf", "scale": 1.0},
    {"id": "x", "path": "/m/bad.gguf"},  # skipped: no integer id
    {"id": 2, "path": "/n/poem.gguf"},  # skipped: the name is taken
]


def test_adapters_are_named_by_stem_or_by_the_given_name():
    got = adapters_of(Fetched(200, LISTED), {"/m/poem.gguf": "verse"})
    assert got == [
        LoraAdapterInfo("sql-v2", 0, "/m/sql-v2.gguf", 0.0),
        LoraAdapterInfo("verse", 1, "/m/poem.gguf", 1.0),
        LoraAdapterInfo("poem", 2, "/n/poem.gguf", 0.0),
    ]
    assert adapter_name("C:\\x\\a.GGUF") == "a"


@pytest.mark.parametrize(
    "fetched", [None, Fetched(404, {"error": "nope"}), Fetched(200, {"a": 1}), Fetched(error="x")]
)
def test_no_or_bad_answer_means_no_adapters(fetched):
    assert adapters_of(fetched) == []


def test_interpret_reports_the_adapters():
    status = interpret(
        Fetched(200, {"status": "ok"}),
        Fetched(200, {"total_slots": 1}),
        Fetched(200, [{"is_processing": False}]),
        Fetched(200, {"data": [{"id": "gemma"}]}),
        adapters_of(Fetched(200, LISTED[:1])),
    )
    assert [a.name for a in status.adapters] == ["sql-v2"]


def test_the_lora_field_applies_the_named_adapter_alone():
    adapters = (Adapter("sql", 3), Adapter("poem", 7))
    body = json.loads(
        with_lora(b'{"model": "sql", "lora": [{"id": 7, "scale": 2}]}', adapters, "sql")
    )
    assert body == {"model": "sql", "lora": [{"id": 3, "scale": 1.0}, {"id": 7, "scale": 0.0}]}


def test_the_lora_field_refuses_what_it_cannot_do():
    with pytest.raises(HTTPError) as gone:
        with_lora(b"{}", (Adapter("poem", 0),), "sql")
    assert gone.value.status == 503
    with pytest.raises(HTTPError) as bad:
        with_lora(b"[1]", (Adapter("sql", 0),), "sql")
    assert bad.value.status == 400
