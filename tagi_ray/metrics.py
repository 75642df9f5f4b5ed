"""SNI evaluation metrics: ROUGE-L and exact match, max over references, per task and category.

Follows the Super-NaturalInstructions evaluation script: ROUGE-L F-measure from `rouge-score`
with `use_stemmer=True` and its default tokenizer; exact match after lowercasing, removing
punctuation and collapsing whitespace; each score is the max over an instance's references;
reported as means x 100.
"""
from __future__ import annotations

import string
from collections import defaultdict
from collections.abc import Sequence
from functools import lru_cache

from rouge_score import rouge_scorer

_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, strip ASCII punctuation, collapse whitespace (SNI's normalisation)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


@lru_cache(maxsize=1)
def _scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure in [0, 1]."""
    return _scorer().score(target=reference, prediction=prediction)["rougeL"].fmeasure


def max_over_references(metric, prediction: str, references: Sequence[str]) -> float:
    if isinstance(references, str) or not references:
        raise ValueError(f"references must be a non-empty list of strings, got {references!r}")
    return max(metric(prediction, ref) for ref in references)


def compute_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """{'exact_match', 'rougeL', 'n'}: means x 100 over instances, each max over references."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    n = len(predictions)
    if n == 0:
        return {"exact_match": 0.0, "rougeL": 0.0, "n": 0}
    em = sum(max_over_references(exact_match, p, r) for p, r in zip(predictions, references))
    rl = sum(max_over_references(rouge_l, p, r) for p, r in zip(predictions, references))
    return {"exact_match": round(100.0 * em / n, 4), "rougeL": round(100.0 * rl / n, 4), "n": n}


def grouped_metrics(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    tasks: Sequence[str],
    categories: Sequence[str],
) -> dict:
    """Overall, per-task and per-category metrics (each group averaged over its instances)."""
    if not (len(predictions) == len(references) == len(tasks) == len(categories)):
        raise ValueError("predictions, references, tasks and categories must have equal length")

    def by(keys: Sequence[str]) -> dict[str, dict[str, float]]:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, key in enumerate(keys):
            groups[key].append(i)
        return {
            key: compute_metrics([predictions[i] for i in idx], [references[i] for i in idx])
            for key, idx in sorted(groups.items())
        }

    return {
        "overall": compute_metrics(predictions, references),
        "per_task": by(tasks),
        "per_category": by(categories),
    }
