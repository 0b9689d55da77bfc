"""JSON bodies whose strings are not UTF-8: msgspec 0.22 raises UnicodeDecodeError for
them (not its DecodeError; 0.23 raises DecodeError), and every reader of a body must
treat that as bad JSON, never as an internal error. Found by the long fuzz run
(docs/reliability.md, "Fuzzing")."""

import pytest

from corral.balancer.errors import HTTPError
from corral.balancer.metrics import NOTHING_COUNTED, read_counts
from corral.balancer.prompt import prompt_of
from corral.balancer.proxy import request_fields
from corral.balancer.slot_actions import _with_fleet_id, pin
from corral.core.fleet import Fleet

BODIES = [
    b'{"model": "\xff"}',
    b'{"id_slot": "\xff"}',
    b'{"messages": [{"role": "\xff", "content": "a"}]}',
    b'{"\xff": 1}',
    b'{"prompt": "\xc3"}',
]


@pytest.mark.parametrize("body", BODIES)
def test_the_balancer_refuses_or_ignores_them(body: bytes):
    prompt_of(body)  # None, or the raw prompt: never an error
    assert read_counts(body) == NOTHING_COUNTED
    assert _with_fleet_id(body, 0, 1) == body
    with pytest.raises(HTTPError) as info:
        pin(Fleet(), body, 0)
    assert info.value.status == 400 and "UTF-8" in str(info.value)  # worded by the version


@pytest.mark.parametrize("body", BODIES[:2])
def test_the_fields_the_balancer_reads_are_a_400(body: bytes):
    with pytest.raises(HTTPError) as info:
        request_fields(body)
    assert info.value.status == 400 and "UTF-8" in str(info.value)
