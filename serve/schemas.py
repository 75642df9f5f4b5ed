"""HTTP request bodies (pydantic: types) and the configured limits (checked per request).

Every rejection is a 422 whose `detail` lists `{"loc": [...field...], "msg": ...}` entries,
the same shape FastAPI uses for type errors, so a client sees which field was wrong.
"""
from __future__ import annotations

from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from tagi_ray.config import ServeConfig


class Example(BaseModel):
    """One positive example of the task."""

    model_config = ConfigDict(extra="forbid")
    input: StrictStr
    output: StrictStr


class AdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instruction: StrictStr = Field(description="the task definition")
    examples: list[Example] = Field(default_factory=list, description="positive examples (Def+kPos)")


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    adapter_id: StrictStr | None = None
    instruction: StrictStr | None = None
    examples: list[Example] = Field(default_factory=list)
    inputs: list[StrictStr]
    max_new_tokens: StrictInt | None = None


class CompletionRequest(BaseModel):
    """OpenAI-style completion: `model` is an adapter id; decoding is greedy (sampling options
    an OpenAI client may send are accepted and ignored)."""

    model_config = ConfigDict(extra="ignore")
    model: StrictStr
    prompt: StrictStr | list[StrictStr]
    max_tokens: StrictInt | None = None


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


def raise_if(errors: list[dict]) -> None:
    if errors:
        raise HTTPException(status_code=422, detail=errors)
