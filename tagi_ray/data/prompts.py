"""Tk-Instruct prompt formats ("Def", "Def+kPos"), split into instruction and instance parts.

The full Tk-Instruct source string is ``instruction_text(...) + instance_text(...)``, exactly as
Tk-Instruct's collator builds it (definition, k positive examples, then "Now complete the
following example -"). TAGI feeds the instruction part to the hypernetwork and the instance
part to the model, so both halves are exposed on their own.
"""
from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence

_FORMAT = re.compile(r"^def(?:\+(\d+)pos)?$")


def parse_prompt_format(name: str) -> int:
    """Number of positive examples for a format name: "def" -> 0, "def+2pos" -> 2."""
    match = _FORMAT.match(name.strip().lower())
    if not match:
        raise ValueError(f"unknown prompt format {name!r}; use 'def' or 'def+<k>pos' (e.g. 'def+2pos')")
    return int(match.group(1) or 0)


def format_name(num_pos: int) -> str:
    """The canonical name of the format with `num_pos` positive examples: "def", "def+2pos"."""
    return "def" if num_pos == 0 else f"def+{num_pos}pos"


def _end_with_punct(text: str) -> str:
    return text if text and text[-1] in string.punctuation else text + "."


def definition_text(definition: str) -> str:
    """'Definition: <def>.' followed by a blank line (the Tk-Instruct definition block)."""
    return _end_with_punct("Definition: " + definition.strip()) + "\n\n"


def pos_example_text(index: int, example: Mapping[str, str]) -> str:
    """One ' Positive Example i -' block, 1-based index, as Tk-Instruct writes it."""
    text = _end_with_punct(f" Positive Example {index} -\nInput: {example['input'].strip()}") + "\n"
    text = _end_with_punct(text + f" Output: {example['output'].strip()}") + "\n"
    return text + "\n"


def instruction_text(definition: str, pos_examples: Sequence[Mapping[str, str]] = (), k: int = 0) -> str:
    """What the hypernetwork reads: the definition block plus the first k positive examples."""
    blocks = [definition_text(definition)]
    blocks += [pos_example_text(i + 1, ex) for i, ex in enumerate(list(pos_examples)[:k])]
    return "".join(blocks)


def instance_text(input_text: str) -> str:
    """What the model reads for one instance: the Tk-Instruct 'Now complete...' block."""
    text = _end_with_punct("Now complete the following example -\nInput: " + input_text.strip())
    return text + "\nOutput: "


def tk_prompt(definition: str, pos_examples: Sequence[Mapping[str, str]], input_text: str, k: int) -> str:
    """The full Tk-Instruct source string (instruction-in-prompt baseline)."""
    return instruction_text(definition, pos_examples, k) + instance_text(input_text)
