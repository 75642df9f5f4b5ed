"""Stage-1 data: plain text split in three (TAGI's hypernetwork pretraining).

A text is cut at two random word boundaries: the first part goes to the hypernetwork (as if
it were an instruction), the middle is the model's input, the rest is the target. Texts come
from a corpus file (.txt: one text per line; .jsonl: a "text" field) or, when none is given,
from the training tasks' definitions and instances.
"""
from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

from tagi_ray.data.tables import select_split
from tagi_ray.training.examples import Example

MIN_WORDS = 6


def texts_from_table(table: pa.Table) -> list[str]:
    """Definitions (once per task) and 'input output' of every training instance."""
    train = select_split(table, "train")
    texts = sorted(set(train.column("definition").to_pylist()))
    texts += [f"{i} {o[0]}" for i, o in zip(train.column("input").to_pylist(), train.column("outputs").to_pylist())]
    return [t for t in texts if len(t.split()) >= MIN_WORDS] or texts


def texts_from_corpus(path: str | Path) -> list[str]:
    """One text per line (.txt) or per JSON line with a "text" field (.jsonl)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretraining corpus not found: {path}")
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if path.suffix == ".jsonl":
        out = []
        for n, line in enumerate(lines, 1):
            try:
                out.append(str(json.loads(line)["text"]))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{n}: expected a JSON object with a 'text' field ({exc})") from None
        return out
    return lines


def split_text(text: str, rng: random.Random) -> Example:
    """First part -> hypernetwork, middle -> input, rest -> target (each at least one word)."""
    words = text.split()
    if len(words) < 3:
        words = (words * 3)[:3]
    a = rng.randint(1, len(words) - 2)
    b = rng.randint(a + 1, len(words) - 1)
    return Example(task="pretrain", category="pretrain", id="", instruction=" ".join(words[:a]),
                   source=" ".join(words[a:b]), target=" ".join(words[b:]), outputs=(" ".join(words[b:]),))


def split_texts(texts: Sequence[str], rng: random.Random) -> list[Example]:
    return [split_text(t, rng) for t in texts]
