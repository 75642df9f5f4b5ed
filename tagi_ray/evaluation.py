"""Held-out evaluation: every method on the test tasks, per prompt format, with SNI's metrics,
95% bootstrap confidence intervals and the share of distinct predictions per task.

Methods (one row each in metrics.json and the report; `Method.kind` says how it predicts):
- `base`: the frozen base reading the instance only;
- `prompt_zero_shot`: the frozen base reading the Tk-Instruct prompt (instruction + instance);
- `tk_instruct`: the base fully fine-tuned multi-task with Tk-Instruct prompts (its own model);
- `tk_instruct_lora`: the frozen base + one multi-task LoRA, Tk-Instruct prompts;
- `copy_input`, `copy_demo`: SNI's trivial baselines (the input; the first positive example's output);
- `oracle`: the held-out task's own LoRAs, 2-fold (each instance scored by the fold that never saw it);
- `tagi` and its retrained ablations (`tagi_no_fusion`, ...): a TAGI checkpoint trained in this format.

Protocol: the first `data.max_eval_instances` instances of every test task (SNI's convention: 100);
scores are means over all scored instances x100 (SNI's `compute_metrics`, as the official TAGI
code aggregates); CIs resample instances within tasks (`stats.py`); TAGI minus each other
method is a paired difference on the same instances.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import torch
from tqdm.auto import tqdm

from tagi_ray.adapters import import_peft
from tagi_ray.checkpoint import load_checkpoint
from tagi_ray.config import TagiConfig
from tagi_ray.data.prompts import parse_prompt_format
from tagi_ray.data.tables import select_split
from tagi_ray.inference import generate_plain, generate_with_instructions
from tagi_ray.metrics import exact_match, max_over_references, rouge_l
from tagi_ray.models.base import load_pretrained
from tagi_ray.stats import bootstrap_ci, distinct_share, paired_difference_ci
from tagi_ray.tagi import TagiModel
from tagi_ray.training.baselines import FOLDS, fold_name
from tagi_ray.training.examples import Example, table_examples
from tagi_ray.training.teacher_store import completed_tasks, load_teacher_bank

KINDS = ("tagi", "base", "prompt_zero_shot", "tk_instruct", "tk_instruct_lora", "copy_input", "copy_demo", "oracle")
NEEDS_PATH = {"tagi", "tk_instruct", "tk_instruct_lora", "oracle"}
PROTOCOL = {
    "instances": "the first data.max_eval_instances instances of every test task (SNI: 100), all methods the same",
    "aggregation": "mean over all scored instances x100 (SNI compute_metrics; the official TAGI code)",
    "ci": "95% percentile bootstrap, 1000 resamples of instances within each task (tasks fixed)",
    "difference": "TAGI minus the method, paired on the same instances, same bootstrap",
    "distinct": "per task, distinct predictions / instances (1/n = one constant answer)",
}


@dataclass(frozen=True)
class Method:
    """One evaluated row: `name` (the row label), `kind` (one of KINDS), `path` (what it loads:
    a TAGI checkpoint, a model directory, a PEFT directory or the oracle store)."""

    name: str
    kind: str
    path: Path | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"method {self.name!r}: unknown kind {self.kind!r}; expected one of {KINDS}")
        if self.kind in NEEDS_PATH and self.path is None:
            raise ValueError(f"method {self.name!r} ({self.kind}) needs a path")


def prompt_formats(cfg: TagiConfig) -> dict[str, int]:
    """'def' and the configured 'def+kpos' (k from data.prompt, at least 2)."""
    k = max(2, parse_prompt_format(cfg.data.prompt))
    return {"def": 0, f"def+{k}pos": k}


def _chunks(items: Sequence, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


class Predictor:
    """Greedy predictions of each method, batched, on `device`; models are loaded once."""

    def __init__(self, cfg: TagiConfig, base_dir: Path, device: torch.device, batch_size: int = 32):
        self.cfg, self.device, self.batch_size = cfg, device, batch_size
        bundle = load_pretrained(str(base_dir), cfg.model.dtype)
        self.base = TagiModel(bundle, cfg.lora, cfg.hypernet, cfg.instruction).eval().to(device)
        self.tokenizer = bundle.tokenizer
        self._loaded: dict[Path, TagiModel] = {}

    def _model(self, method: Method) -> TagiModel:
        if method.path not in self._loaded:
            if method.kind == "tagi":
                model, _, _ = load_checkpoint(method.path)
            else:  # tk_instruct: a fine-tuned base
                bundle = load_pretrained(str(method.path), self.cfg.model.dtype)
                model = TagiModel(bundle, self.cfg.lora, self.cfg.hypernet, self.cfg.instruction)
            self._loaded = {method.path: model.eval().to(self.device)}  # keep one extra model in memory
        return self._loaded[method.path]

    def predict(self, method: Method, examples: Sequence[Example]) -> list[str]:
        m = self.cfg.model
        if method.kind == "copy_input":
            return [e.input for e in examples]
        if method.kind == "copy_demo":
            return [e.demo_output for e in examples]
        adapter, index = None, None
        if method.kind == "tk_instruct_lora":
            adapter = import_peft(method.path, rank=self.cfg.lora.rank, alpha=self.cfg.lora.alpha)[0].to(self.device)
        out: list[str] = []
        folds = _fold_of(examples) if method.kind == "oracle" else None
        for start in range(0, len(examples), self.batch_size):
            chunk = examples[start:start + self.batch_size]
            if method.kind == "tagi":
                model = self._model(method)
                out += generate_with_instructions(model, self.tokenizer, m, [e.instruction for e in chunk],
                                                  [e.source for e in chunk], m.max_target_length)
            elif method.kind in ("base", "oracle"):
                if folds is not None:
                    names = [fold_name(e.task, f) for e, f in zip(chunk, folds[start:start + self.batch_size])]
                    missing = sorted(set(names) - completed_tasks(method.path))
                    if missing:
                        raise FileNotFoundError(f"oracle: no LoRA for {missing[:3]} under {method.path}: "
                                                f"run `tagi baselines` (it trains the missing folds)")
                    bank, rows = load_teacher_bank(method.path, sorted(set(names)), self.cfg.lora.rank,
                                                   self.cfg.lora.alpha)
                    adapter = bank.to(self.device)
                    index = torch.tensor([rows[n] for n in names], device=self.device)
                out += generate_plain(self.base, self.tokenizer, [e.source for e in chunk], m.max_source_length,
                                      m.max_target_length, adapter, index)
            else:  # the instruction in the prompt: prompt_zero_shot, tk_instruct, tk_instruct_lora
                model = self._model(method) if method.kind == "tk_instruct" else self.base
                out += generate_plain(model, self.tokenizer, [e.prompt for e in chunk],
                                      m.max_source_length + m.max_instruction_length, m.max_target_length, adapter)
        return out


def _fold_of(examples: Sequence[Example]) -> list[int]:
    """The oracle fold of each example: its position among its task's examples (table order) % FOLDS."""
    seen: dict[str, int] = defaultdict(int)
    folds = []
    for e in examples:
        folds.append(seen[e.task] % FOLDS)
        seen[e.task] += 1
    return folds


def score(examples: Sequence[Example], predictions: Sequence[str]) -> list[dict]:
    """One record per instance: task, category, id, prediction, first reference, ROUGE-L and EM
    (x100, max over refs)."""
    return [{"task": e.task, "category": e.category, "id": e.id, "prediction": p, "reference": e.outputs[0],
             "rougeL": 100 * max_over_references(rouge_l, p, list(e.outputs)),
             "exact_match": 100 * max_over_references(exact_match, p, list(e.outputs))}
            for e, p in zip(examples, predictions)]


def _by(records: Sequence[dict], key: str, metric: str) -> dict[str, list[float]]:
    groups: dict[str, list[float]] = defaultdict(list)
    for r in records:
        groups[r[key]].append(r[metric])
    return dict(groups)


def summarize(records: Sequence[dict], n_boot: int = 1000, seed: int = 0) -> dict:
    """Overall (with CIs), per task (with the distinct-prediction share) and per category."""
    def mean(values: Sequence[float]) -> float:
        return round(sum(values) / len(values), 4) if values else 0.0

    overall = {"n": len(records)}
    for metric in ("rougeL", "exact_match"):
        overall[metric] = mean([r[metric] for r in records])
        overall[f"{metric}_ci"] = [round(x, 4) for x in bootstrap_ci(_by(records, "task", metric), n_boot, seed)]
    per_task = {}
    for task, preds in sorted(_by(records, "task", "prediction").items()):
        rows = [r for r in records if r["task"] == task]
        per_task[task] = {"rougeL": mean([r["rougeL"] for r in rows]), "exact_match": mean([r["exact_match"] for r in rows]),
                          "n": len(rows), "distinct": round(distinct_share(preds), 4)}
    per_category = {c: {"rougeL": mean(v), "n": len(v)} for c, v in sorted(_by(records, "category", "rougeL").items())}
    for c in per_category:
        per_category[c]["exact_match"] = mean(_by(records, "category", "exact_match")[c])
    return {"overall": overall, "per_task": per_task, "per_category": per_category}


def compare(a: Sequence[dict], b: Sequence[dict], n_boot: int = 1000, seed: int = 0) -> dict:
    """Paired difference a - b (ROUGE-L and EM) with CIs; records in the same instance order."""
    if [(r["task"], r["id"]) for r in a] != [(r["task"], r["id"]) for r in b]:
        raise ValueError("compare: the two methods were scored on different instances")
    out = {}
    for metric in ("rougeL", "exact_match"):
        d, lo, hi = paired_difference_ci(_by(a, "task", metric), _by(b, "task", metric), n_boot, seed)
        out[metric] = round(d, 4)
        out[f"{metric}_ci"] = [round(lo, 4), round(hi, 4)]
    return out


def scored_examples(table: pa.Table, num_pos: int) -> list[Example]:
    """The scored instances: every test-split row of the table (built with the first
    data.max_eval_instances per test task)."""
    return table_examples(select_split(table, "test"), num_pos)


# what each kind of method reads of an instance (base and oracle: the same in every format)
READS = {"base": ("source",), "oracle": ("source",), "tagi": ("instruction", "source")}


def _fingerprint(cfg: TagiConfig, method: Method, examples: Sequence[Example]) -> str:
    """What a method's predictions depend on: its kind and weights (path, size and mtime of
    every file), the text it reads of each instance, and the decoding lengths."""
    files = []
    if method.path is not None and method.path.exists():
        paths = [method.path] if method.path.is_file() else sorted(p for p in method.path.rglob("*") if p.is_file())
        files = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    m = cfg.model
    fields = READS.get(method.kind, ("prompt",))
    key = [method.kind, str(method.path), files, [[e.task, e.id] + [getattr(e, f) for f in fields] for e in examples],
           m.max_source_length, m.max_instruction_length, m.max_target_length]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()


def cached_predict(predictor: Predictor, method: Method, examples: Sequence[Example],
                   cache_dir: Path | None) -> tuple[list[str], float]:
    """A method's predictions and the seconds they took, read from `cache_dir` when it holds them
    for the same fingerprint (one JSON file per fingerprint: a format-independent method is
    predicted once for both formats); otherwise computed and written there. An interrupted
    evaluation thus resumes at the first method it had not finished."""
    key = _fingerprint(predictor.cfg, method, examples)
    cache = cache_dir / f"{method.name}-{key[:20]}.json" if cache_dir is not None else None
    if cache is not None and cache.is_file():
        stored = json.loads(cache.read_text())
        return stored["predictions"], stored["seconds"]
    start = time.time()
    with torch.no_grad():
        predictions = predictor.predict(method, examples)
    seconds = round(time.time() - start, 1)
    if cache is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps({"method": method.name, "kind": method.kind, "seconds": seconds,
                                   "predictions": predictions}))
        tmp.replace(cache)
    return predictions, seconds


# what a stored record must hold to be scored again
RECORD_FIELDS = ("format", "method", "task", "category", "id", "prediction", "rougeL", "exact_match")


def results_from_records(records: Sequence[dict], n_boot: int = 1000,
                         seconds: Mapping[tuple[str, str], float] | None = None) -> dict:
    """`evaluate`'s results from its records (one per format, method and instance; methods in
    first-seen order): per format, each method's summary, its prediction seconds when known, and,
    when a `tagi` row exists, the paired difference TAGI − method. The protocol's instance counts
    are those of the records."""
    grouped: dict[str, dict[str, list[dict]]] = defaultdict(dict)
    for r in records:
        grouped[r["format"]].setdefault(r["method"], []).append(r)
    formats: dict = {}
    for fmt, scored in grouped.items():
        summaries = {name: summarize(recs, n_boot) for name, recs in scored.items()}
        for name, recs in scored.items():
            if seconds and (fmt, name) in seconds:
                summaries[name]["seconds"] = seconds[fmt, name]
            if "tagi" in scored and name != "tagi":
                summaries[name]["tagi_minus"] = compare(scored["tagi"], recs, n_boot)
            summaries[name]["examples"] = [{k: r.get(k) for k in ("task", "prediction", "reference")} for r in recs[:3]]
        formats[fmt] = summaries
    first = next(iter(grouped.values()), {})
    instances = next(iter(first.values()), [])
    return {"protocol": {**PROTOCOL, "tasks": len({r["task"] for r in instances}), "scored_instances": len(instances)},
            "formats": formats}


def read_records(paths: Sequence[Path]) -> list[dict]:
    """Scored records from predictions.jsonl(.gz) files; a later file's (format, method) rows
    replace an earlier file's. A record lacking a field names its file and line."""
    merged: dict[tuple[str, str], list[dict]] = {}
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such predictions file")
        text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
        groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            r = json.loads(line)
            missing = [k for k in RECORD_FIELDS if k not in r]
            if missing:
                raise ValueError(f"{path}:{n}: record lacks {missing}")
            groups[r["format"], r["method"]].append(r)
        merged.update(groups)
    return [r for recs in merged.values() for r in recs]


def evaluate(cfg: TagiConfig, table: pa.Table, methods: dict[str, list[Method]], base_dir: Path,
             device: torch.device, batch_size: int = 32, n_boot: int = 1000,
             cache_dir: Path | None = None) -> tuple[dict, list[dict]]:
    """Evaluate `methods[format]` in each format. Returns (results, records): results =
    {"protocol", "formats": {format: {method: summary (+ "tagi_minus", the paired difference, when a
    tagi row exists; "seconds", the prediction time)}}};
    records = one dict per (format, method, instance). `cache_dir`: each method's predictions are
    kept there and reused while nothing they depend on changed (`cached_predict`)."""
    predictor = Predictor(cfg, base_dir, device, batch_size)
    all_records: list[dict] = []
    seconds: dict[tuple[str, str], float] = {}
    for fmt, rows in methods.items():
        examples = scored_examples(table, parse_prompt_format(fmt))
        for method in tqdm(rows, desc=f"eval {fmt}", dynamic_ncols=True):
            predictions, seconds[fmt, method.name] = cached_predict(predictor, method, examples, cache_dir)
            all_records += [{"format": fmt, "method": method.name, **r} for r in score(examples, predictions)]
    return results_from_records(all_records, n_boot, seconds), all_records
