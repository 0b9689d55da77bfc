"""The canonical text of a request's prompt, for prefix routing.

Read only when the routing policy asks for it (``needs_prompt``): msgspec decodes the
fields that make the prompt and skips the rest. Contents are kept as the raw JSON the
client sent (no decoding of strings), which is what a client resends unchanged in a
conversation's later turns:

- chat (``messages``; ``system`` for ``/v1/messages``): the tools, then each message's
  role, content and tool calls, in order;
- completion (``prompt``; ``input`` for ``/v1/responses``, ``/v1/embeddings``): the
  prompt as sent.

A body with ``"cache_prompt": false`` (llama-server's field) gives a prompt that says
so: the server will reuse none of its cache for it. Any other value is read as true,
as llama-server reads a field of the wrong type as its default.
"""

from __future__ import annotations

import msgspec

from corral.core.routing import Prompt

_EMPTY = msgspec.Raw(b"")


class _Message(msgspec.Struct):
    role: str = ""
    content: msgspec.Raw = _EMPTY
    tool_calls: msgspec.Raw = _EMPTY


class _PromptBody(msgspec.Struct):
    messages: list[_Message] | None = None
    system: msgspec.Raw = _EMPTY
    tools: msgspec.Raw = _EMPTY
    prompt: msgspec.Raw = _EMPTY
    input: msgspec.Raw = _EMPTY
    cache_prompt: msgspec.Raw = _EMPTY


_decoder = msgspec.json.Decoder(_PromptBody)


def prompt_of(body: bytes) -> Prompt | None:
    """The request's canonical prompt; None when it has none or is not such JSON (the
    request is then routed without one, and the server says what is wrong)."""
    try:
        fields = _decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        return None
    cache = bytes(fields.cache_prompt) != b"false"  # raw JSON, without whitespace
    if fields.messages is not None:
        messages = [(b"system", bytes(fields.system))] if fields.system else []
        messages += [
            (m.role.encode(), bytes(m.content) + bytes(m.tool_calls)) for m in fields.messages
        ]
        return Prompt.of_chat(messages, bytes(fields.tools) or None, cache_prompt=cache)
    text = bytes(fields.prompt) or bytes(fields.input)
    return Prompt(text, cache_prompt=cache) if text else None
