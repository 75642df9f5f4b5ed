"""Per-row decoding options for one batched generation: every row may sample with its own
temperature / top-k / top-p and its own seeded generator, and stop at its own strings, while
rows (each with its own adapter) still share every forward pass.

transformers' `generate` runs greedy; `RowSampler` (a LogitsProcessor) replaces each sampling
row's scores by a one-hot on the token it drew from its own `torch.Generator`, so the greedy pick
is that token; greedy rows pass through untouched. A row's draws depend only on its seed and its
own logits, never on the other rows of the batch: the same request with the same seed gives the
same text alone or in any mixed batch. `RowProgress` (a StoppingCriteria) ends each row at its
own token budget, once its text contains one of its stop strings, or once its client has gone
away (the row's slot then stops costing decode steps), and hands streaming rows each new piece
of text as it is decoded; `cut_at_stop` trims the text before the stop string (OpenAI's
convention). A row's text is decoded once per step, and not again once its budget, a stop
string or its cancellation has ended it.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessor, StoppingCriteria


@dataclass(frozen=True)
class Decoding:
    """One row's options. temperature 0 = greedy (then top_p, top_k and seed do nothing)."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = no limit
    seed: int | None = None  # None = a fresh random seed
    stop: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature: must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k: must be >= 0, got {self.top_k}")

    @property
    def sampled(self) -> bool:
        return self.temperature > 0


GREEDY = Decoding()


def _filter(scores: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """One row's logits with everything outside top-k and the top-p nucleus set to -inf."""
    if top_k and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        ordered, idx = torch.sort(scores, descending=True)
        probs = torch.softmax(ordered, dim=-1)
        drop = probs.cumsum(-1) - probs >= top_p  # keep the smallest prefix reaching top_p
        scores = scores.masked_fill(torch.zeros_like(drop).scatter(0, idx, drop), float("-inf"))
    return scores


class RowSampler(LogitsProcessor):
    """Per-row temperature / top-k / top-p sampling with per-row seeded generators (see module)."""

    def __init__(self, rows: Sequence[Decoding]):
        self.rows = list(rows)
        self.generators: list[torch.Generator | None] = []
        for d in self.rows:
            if not d.sampled:
                self.generators.append(None)
                continue
            g = torch.Generator()
            g.manual_seed(d.seed if d.seed is not None else int(torch.randint(0, 2**62, (1,))))
            self.generators.append(g)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if len(self.rows) != scores.shape[0]:
            raise ValueError(f"RowSampler: {len(self.rows)} rows of options for a batch of {scores.shape[0]}")
        out = scores
        for i, (d, g) in enumerate(zip(self.rows, self.generators)):
            if g is None:
                continue
            logits = _filter(scores[i].float() / d.temperature, d.top_k, d.top_p)
            token = torch.multinomial(torch.softmax(logits, dim=-1).cpu(), 1, generator=g).item()
            if out is scores:
                out = scores.clone()
            out[i] = float("-inf")
            out[i, token] = 0.0
        return out


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """The text up to (not including) the first occurrence of any stop string."""
    cut = min((text.find(s) for s in stop if s and s in text), default=-1)
    return text if cut < 0 else text[:cut]


def _never() -> bool:
    return False


@dataclass
class RowStream:
    """A row's live output: `emit(piece)` receives each new piece of text (called from the
    generating thread); `cancelled()` turns true when the client has gone away."""

    emit: Callable[[str], None]
    cancelled: Callable[[], bool] = _never
    sent: str = ""  # the text emitted so far


def _held_back(text: str, stop: Sequence[str]) -> int:
    """How many trailing characters may not be emitted yet: an incomplete UTF-8 character, or a
    prefix of a stop string (it may still become the stop string, which is never sent)."""
    if text.endswith("\ufffd"):
        return len(text) - len(text.rstrip("\ufffd"))
    hold = 0
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:k]):
                hold = k
                break
    return hold


class RowProgress(StoppingCriteria):
    """Per row: done at its own `max_new` tokens, at one of its stop strings, or once its stream
    is cancelled; a streaming row's new text (up to any stop string, never a piece of one) goes to
    its `emit` after every step."""

    def __init__(self, tokenizer, rows: Sequence[Decoding], max_new: Sequence[int],
                 streams: Sequence[RowStream | None]):
        self.tokenizer, self.rows, self.max_new, self.streams = tokenizer, list(rows), list(max_new), list(streams)
        self.start: int | None = None
        self.finished = [False] * len(self.rows)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        if self.start is None:  # first call: one new token after the prompt
            self.start = input_ids.shape[1] - 1
        made = input_ids.shape[1] - self.start
        for i, (d, n, stream) in enumerate(zip(self.rows, self.max_new, self.streams)):
            if self.finished[i]:
                continue
            if stream is not None and stream.cancelled():
                self.finished[i] = True
                continue
            done = made >= n
            if d.stop or stream is not None:
                full = self.tokenizer.decode(input_ids[i, self.start:self.start + n], skip_special_tokens=True)
                text = cut_at_stop(full, d.stop)
                done = done or len(text) < len(full)  # a stop string appeared
                if stream is not None:
                    ready = text[:len(text) - _held_back(text, d.stop)]
                    if len(ready) > len(stream.sent) and ready.startswith(stream.sent):
                        stream.emit(ready[len(stream.sent):])
                        stream.sent = ready
            self.finished[i] = done
        return torch.tensor(self.finished, dtype=torch.bool, device=input_ids.device)


def finish_stream(stream: RowStream, text: str) -> None:
    """After generation: emit what the row's final text adds to what was streamed."""
    if text.startswith(stream.sent) and len(text) > len(stream.sent):
        stream.emit(text[len(stream.sent):])
        stream.sent = text


def generate_options(tokenizer, rows: Sequence[Decoding], max_new: Sequence[int] | None = None,
                     streams: Sequence[RowStream | None] | None = None) -> dict:
    """Keyword arguments for `TagiModel.generate` (none when every row is greedy without stops,
    streams or differing budgets)."""
    options: dict = {}
    if any(d.sampled for d in rows):
        options["logits_processor"] = [RowSampler(rows)]
    streams = list(streams) if streams is not None else [None] * len(rows)
    budgets = list(max_new) if max_new is not None else [10**9] * len(rows)  # else generate's own limit
    if any(d.stop for d in rows) or len(set(budgets)) > 1 or any(streams):
        options["stopping_criteria"] = [RowProgress(tokenizer, rows, budgets, streams)]
    return options
