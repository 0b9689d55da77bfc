"""The canonical prompt the balancer reads from a request body, for prefix routing."""

from __future__ import annotations

import pytest

from corral.balancer.prompt import prompt_of

CHAT = b'{"messages": [{"role": "user", "content": "hi"}]%s}'
COMPLETION = b'{"prompt": "Once upon a time"%s}'


@pytest.mark.parametrize("shape", [CHAT, COMPLETION])
@pytest.mark.parametrize(
    ("field", "cache_prompt"),
    [
        (b"", True),
        (b', "cache_prompt": true', True),
        (b', "cache_prompt": false', False),
        (b', "cache_prompt" :  false ', False),
        # llama-server reads a field of the wrong type as its default (true)
        (b', "cache_prompt": 0', True),
        (b', "cache_prompt": "false"', True),
        (b', "cache_prompt": null', True),
    ],
)
def test_cache_prompt_is_read_as_llama_server_reads_it(
    shape: bytes, field: bytes, cache_prompt: bool
) -> None:
    prompt = prompt_of(shape % field)
    assert prompt is not None and prompt.cache_prompt is cache_prompt
    # the same text either way: a later turn sent with the cache on matches it
    plain = prompt_of(shape % b"")
    assert plain is not None and prompt.text == plain.text
    assert ("cache_prompt=false" in repr(prompt)) is (not cache_prompt)


def test_a_body_without_a_prompt_has_none() -> None:
    assert prompt_of(b'{"cache_prompt": false}') is None
    assert prompt_of(b"not json") is None
