"""Chat with a base model: a question-and-answer transcript instead of a chat template.

The bundled model is Gemma 3 270M *base* (pretrained, not instruction-tuned): its GGUF
carries no chat template, so llama-server falls back to ChatML, whose ``<|im_start|>``
markers the model never saw; asked "Say hello" it answers with more markers
(``'<|im_end|>admin\\n<|im_start|>admin_list...'``, seen on the pinned llama-server).
Gemma's own turn markers do no better on the base model. What a base model does know
is text, and a transcript of questions and answers is text: asked "What is the capital
of France?" under :data:`TEMPLATE` it answers ``' Paris'``, and stops there because
:data:`STOP` (the next question) is given to llama-server as ``--reverse-prompt``,
which the server adds to every request's stop strings.

``corral up`` passes :func:`base_model_args` to the llama-servers it starts for the
bundled model; a real chat model (``--model``) keeps its own template.
"""

from __future__ import annotations

from typing import Final

TEMPLATE: Final = (  # no whitespace control ({%-): the text has only the newlines it means
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}Question: {{ message['content'] }}\n"
    "{% else %}Answer: {{ message['content'] }}\n\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Answer:{% endif %}"
)
"""A Jinja chat template (llama-server's ``--jinja --chat-template``): the system
message as a preamble, each user turn as ``Question: ...``, each assistant turn as
``Answer: ...``, ending with ``Answer:`` for the model to complete."""

STOP: Final = "\nQuestion:"
"""Where an answer ends: the model goes on to ask itself the next question."""


def base_model_args() -> list[str]:
    """llama-server arguments that make ``/v1/chat/completions`` answer sensibly from a
    base model (see the module's docstring). ``--jinja`` comes first: without it
    llama-server accepts only its built-in templates."""
    return ["--jinja", "--chat-template", TEMPLATE, "--reverse-prompt", STOP]


__all__ = ["STOP", "TEMPLATE", "base_model_args"]
