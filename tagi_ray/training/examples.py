"""Training/eval examples from a task table: instruction, instance source, prompt, target."""
from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import pyarrow as pa

from tagi_ray.data.prompts import instance_text, instruction_text

T = TypeVar("T")


@dataclass(frozen=True)
class Example:
    task: str
    category: str
    id: str
    instruction: str  # definition + k positive examples: what the hypernetwork reads
    source: str  # "Now complete the following example - Input: ... Output: ": what the model reads
    target: str  # the first reference (training target)
    outputs: tuple[str, ...]  # all references (metrics)
    input: str = ""  # the raw instance input (SNI's copy_input baseline)
    demo_output: str = ""  # the first positive example's output (SNI's copy_demo baseline)

    @property
    def prompt(self) -> str:
        """Instruction-in-prompt source (Tk-Instruct format): instruction + instance."""
        return self.instruction + self.source


def table_examples(table: pa.Table, num_pos: int) -> list[Example]:
    """One Example per table row, with the instruction built from the first `num_pos` examples."""
    out = []
    for row in table.to_pylist():
        out.append(Example(
            task=row["task"], category=row["category"], id=row["id"],
            instruction=instruction_text(row["definition"], row["pos_examples"], num_pos),
            source=instance_text(row["input"]), target=row["outputs"][0], outputs=tuple(row["outputs"]),
            input=row["input"], demo_output=row["pos_examples"][0]["output"] if row["pos_examples"] else "",
        ))
    return out


def random_batches(examples: Sequence[T], batch_size: int, seed: int) -> Iterator[list[T]]:
    """An endless stream of seeded random batches (sampling without replacement per epoch)."""
    rng = random.Random(seed)
    order: list[int] = []
    while True:
        if len(order) < batch_size:
            fresh = list(range(len(examples)))
            rng.shuffle(fresh)
            order += fresh
        yield [examples[i] for i in order[:batch_size]]
        del order[:batch_size]
