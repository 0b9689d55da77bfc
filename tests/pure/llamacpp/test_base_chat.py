"""The question-and-answer template `corral up` gives the bundled base model."""

from __future__ import annotations

from corral.llamacpp.base_chat import STOP, TEMPLATE, base_model_args


def test_jinja_comes_before_the_template():
    # without --jinja first, llama-server accepts only its built-in template names
    args = base_model_args()
    assert args.index("--jinja") < args.index("--chat-template")
    assert args[args.index("--chat-template") + 1] == TEMPLATE
    assert args[args.index("--reverse-prompt") + 1] == STOP


def test_the_template_strips_no_newline():
    # "{%-" would eat the newline before it and run the turns together
    assert "{%-" not in TEMPLATE and "-%}" not in TEMPLATE
    assert TEMPLATE.endswith("Answer:{% endif %}")
