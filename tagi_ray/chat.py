"""Chat messages -> (the task instruction, the prompt in the base's own chat format).

TAGI reads a task's instruction once, into an adapter; a chat's system message is that
instruction when no adapter is named. The remaining turns are rendered with the tokenizer's chat
template (transformers' `apply_chat_template`), ending with the assistant's turn to write.

    instruction, turns = split_instruction(messages)       # system message -> instruction
    prompt = chat_prompt(tokenizer, turns)                 # NoChatTemplate for a base without one
"""
from __future__ import annotations

from collections.abc import Sequence


class NoChatTemplate(ValueError):
    """The base's tokenizer has no chat template (and the serve config sets none)."""


def split_instruction(messages: Sequence[dict]) -> tuple[str | None, list[dict]]:
    """(the leading system message's content or None, the other messages)."""
    if messages and messages[0]["role"] == "system":
        return messages[0]["content"], list(messages[1:])
    return None, list(messages)


def chat_prompt(tokenizer, messages: Sequence[dict], template: str = "") -> str:
    """The conversation as the base expects it, ending where the assistant's reply begins.
    `template` (a Jinja chat template) replaces a missing tokenizer template."""
    template = template or getattr(tokenizer, "chat_template", None)
    if not template:
        raise NoChatTemplate("the base's tokenizer has no chat template (set serve.chat_template to serve chat, "
                             "or use /v1/completions)")
    return tokenizer.apply_chat_template(list(messages), chat_template=template, tokenize=False,
                                         add_generation_prompt=True)
