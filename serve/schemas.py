"""HTTP request bodies (pydantic: types) and the configured limits (checked per request).

Every rejection is a 422 whose `detail` lists `{"loc": [...field...], "msg": ...}` entries,
the same shape FastAPI uses for type errors, so a client sees which field was wrong.
"""
from __future__ import annotations

from fastapi import HTTPException
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from tagi_ray.config import ServeConfig
from tagi_ray.decoding import Decoding


class Example(BaseModel):
    """One positive example of the task."""

    model_config = ConfigDict(extra="forbid")
    input: StrictStr
    output: StrictStr


class AdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instruction: StrictStr = Field(description="the task definition")
    examples: list[Example] = Field(default_factory=list, description="positive examples (Def+kPos)")


class Sampling(BaseModel):
    """Decoding options (OpenAI's names and ranges); all unset = greedy."""

    temperature: float | None = Field(None, ge=0, le=2, description="0 or unset: greedy")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: StrictInt | None = Field(None, ge=0, description="0 or unset: no limit")
    seed: StrictInt | None = Field(None, description="same seed, same output (also inside a mixed batch)")
    stop: StrictStr | list[StrictStr] | None = Field(None, description="up to 4 strings; the text ends before them")

    def decoding(self) -> Decoding:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return Decoding(temperature=self.temperature or 0.0, top_p=self.top_p or 1.0, top_k=self.top_k or 0,
                        seed=self.seed, stop=tuple(x for x in stop if x))


class GenerateRequest(Sampling):
    model_config = ConfigDict(extra="forbid")
    adapter_id: StrictStr | None = None
    instruction: StrictStr | None = None
    examples: list[Example] = Field(default_factory=list)
    inputs: list[StrictStr]
    max_new_tokens: StrictInt | None = None


# OpenAI fields this server does not implement: accepted only at their defaults
UNSUPPORTED = {"n": 1, "best_of": 1, "logprobs": None, "echo": False, "suffix": None, "presence_penalty": 0,
               "frequency_penalty": 0, "logit_bias": None, "stream_options": None}
CHAT_UNSUPPORTED = {"n": 1, "logprobs": False, "top_logprobs": None, "presence_penalty": 0, "frequency_penalty": 0,
                    "logit_bias": None, "stream_options": None, "tools": None, "tool_choice": None,
                    "functions": None, "function_call": None, "response_format": None, "parallel_tool_calls": None}


class OpenAIRequest(Sampling):
    """The fields OpenAI's completion and chat routes share. Sampling options are honoured; an
    OpenAI option this server does not implement, set to anything but its default, is a 422
    naming it (never silently ignored); any other unknown field too."""

    model_config = ConfigDict(extra="allow")
    unsupported: ClassVar[dict] = UNSUPPORTED
    model: StrictStr
    max_tokens: StrictInt | None = None
    stream: StrictBool = False
    user: StrictStr | None = None  # accepted (OpenAI: an end-user id), not used

    def unsupported_errors(self) -> list[dict]:
        errors = []
        for name, value in (self.model_extra or {}).items():
            if name not in self.unsupported:
                errors.append({"loc": ["body", name], "msg": f"{name}: unknown field", "type": "extra_forbidden"})
            elif value != self.unsupported[name] and not (value in ({}, [], None) and not self.unsupported[name]):
                errors.append({"loc": ["body", name], "type": "unsupported", "msg": f"{name}: {value!r} is not "
                               f"supported by this server (only {self.unsupported[name]!r})"})
        return errors


class CompletionRequest(OpenAIRequest):
    """OpenAI-style completion: `model` is an adapter id, `prompt` the task instance(s)."""

    prompt: StrictStr | list[StrictStr]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: StrictStr


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[TextPart]
    name: StrictStr | None = None

    def plain(self) -> dict:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatRequest(OpenAIRequest):
    """OpenAI-style chat. The adapter: `model` names one (an adapter id), or it is generated
    from `instruction` (+ `examples`), or from the leading system message; the base's chat
    template renders the other messages."""

    unsupported: ClassVar[dict] = CHAT_UNSUPPORTED
    model: StrictStr = ""
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = None
    instruction: StrictStr | None = None
    examples: list[Example] = Field(default_factory=list)


def _error(field: str, msg: str) -> dict:
    return {"loc": ["body", *field.split(".")], "msg": f"{field}: {msg}", "type": "limit"}


def instruction_errors(instruction: str | None, examples: list[Example], limits: ServeConfig) -> list[dict]:
    errors = []
    if instruction is not None:
        if not instruction.strip():
            errors.append(_error("instruction", "must not be empty"))
        elif len(instruction) > limits.max_instruction_chars:
            errors.append(_error("instruction", f"{len(instruction)} characters, at most "
                                 f"{limits.max_instruction_chars} allowed"))
    if len(examples) > limits.max_examples:
        errors.append(_error("examples", f"{len(examples)} examples, at most {limits.max_examples} allowed"))
    for i, ex in enumerate(examples):
        for name in ("input", "output"):
            if len(getattr(ex, name)) > limits.max_input_chars:
                errors.append(_error(f"examples.{i}.{name}", f"longer than {limits.max_input_chars} characters"))
    return errors


def inputs_errors(inputs: list[str], max_new: int | None, limits: ServeConfig, names=("inputs", "max_new_tokens")
                  ) -> list[dict]:
    errors = []
    if not inputs:
        errors.append(_error(names[0], "must hold at least one input"))
    if len(inputs) > limits.max_inputs:
        errors.append(_error(names[0], f"{len(inputs)} inputs, at most {limits.max_inputs} allowed"))
    for i, text in enumerate(inputs):
        if len(text) > limits.max_input_chars:
            errors.append(_error(f"{names[0]}.{i}", f"{len(text)} characters, at most {limits.max_input_chars} allowed"))
    if max_new is not None and not 1 <= max_new <= limits.max_new_tokens_limit:
        errors.append(_error(names[1], f"{max_new} is out of range [1, {limits.max_new_tokens_limit}]"))
    return errors


def stop_errors(stop: str | list[str] | None) -> list[dict]:
    if isinstance(stop, list) and len(stop) > 4:
        return [_error("stop", f"{len(stop)} strings, at most 4 allowed")]
    return []


def raise_if(errors: list[dict]) -> None:
    if errors:
        raise HTTPException(status_code=422, detail=errors)
