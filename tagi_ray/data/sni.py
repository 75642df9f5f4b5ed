"""Read Super-NaturalInstructions task files (original JSON format) and the official splits.

Layout accepted (the SNI repository's, or a flat copy of it)::

    DIR/tasks/taskNNN_name.json   (or DIR/taskNNN_name.json)
    DIR/train_tasks.txt           (or DIR/splits/default/train_tasks.txt)
    DIR/test_tasks.txt

A corrupt or incomplete task file raises `TaskFileError` naming the file and the field;
`load_split` collects those errors and keeps every other task.
"""
from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SPLITS = ("train", "test")


class TaskFileError(ValueError):
    """A task file is unreadable or misses/mistypes a field. Carries `path` and `field`."""

    def __init__(self, path: str | Path, field_name: str, problem: str):
        self.path, self.field = str(path), field_name
        super().__init__(f"{path}: field {field_name!r}: {problem}")


@dataclass
class Instance:
    id: str
    input: str
    outputs: list[str]


@dataclass
class SNITask:
    """One task: its instruction (definition + examples), category and instances."""

    name: str
    definition: str
    categories: list[str]
    pos_examples: list[dict[str, str]]
    instances: list[Instance]
    path: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # other SNI metadata, kept verbatim

    @property
    def category(self) -> str:
        """SNI's reporting category: first entry of Categories, lowercased, spaces -> '_'."""
        return normalize_category(self.categories[0] if self.categories else "uncategorized")


def normalize_category(name: str) -> str:
    return name.strip().lower().replace(" ", "_")


def _str_or_first(value: Any, path: Path, name: str) -> str:
    if isinstance(value, list):
        if not value or not isinstance(value[0], str):
            raise TaskFileError(path, name, "expected a non-empty string or list of strings")
        value = value[0]
    if not isinstance(value, str) or not value.strip():
        raise TaskFileError(path, name, f"expected a non-empty string, got {value!r:.80}")
    return value


def _examples(raw: Any, path: Path, name: str) -> list[dict[str, str]]:
    if not isinstance(raw, list):
        raise TaskFileError(path, name, f"expected a list of examples, got {type(raw).__name__}")
    out = []
    for i, ex in enumerate(raw):
        if not isinstance(ex, dict) or not isinstance(ex.get("input"), str) or not isinstance(ex.get("output"), str):
            raise TaskFileError(path, f"{name}[{i}]", "expected {'input': str, 'output': str, ...}")
        out.append({"input": ex["input"], "output": ex["output"], "explanation": str(ex.get("explanation", ""))})
    return out


def _instances(raw: Any, path: Path) -> list[Instance]:
    if not isinstance(raw, list) or not raw:
        raise TaskFileError(path, "Instances", "expected a non-empty list")
    out = []
    for i, inst in enumerate(raw):
        where = f"Instances[{i}]"
        if not isinstance(inst, dict):
            raise TaskFileError(path, where, f"expected an object, got {type(inst).__name__}")
        for key in ("id", "input", "output"):
            if key not in inst:
                raise TaskFileError(path, f"{where}.{key}", "missing")
        outputs = inst["output"]
        if isinstance(outputs, str):
            outputs = [outputs]
        if not isinstance(outputs, list) or not outputs or not all(isinstance(o, str) for o in outputs):
            raise TaskFileError(path, f"{where}.output", f"expected a non-empty list of strings, got {outputs!r:.80}")
        if not isinstance(inst["input"], str):
            raise TaskFileError(path, f"{where}.input", "expected a string")
        out.append(Instance(id=str(inst["id"]), input=inst["input"], outputs=list(outputs)))
    return out


_KNOWN = {"Definition", "Categories", "Positive Examples", "Instances"}


def load_task(path: str | Path) -> SNITask:
    """Parse one `taskNNN_name.json`; raise `TaskFileError` naming the file and field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskFileError(path, "<file>", f"cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise TaskFileError(path, "<json>", f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise TaskFileError(path, "<root>", "expected a JSON object")
    for key in ("Definition", "Positive Examples", "Instances"):
        if key not in data:
            raise TaskFileError(path, key, "missing")
    categories = data.get("Categories", [])
    if isinstance(categories, str):
        categories = [categories]
    if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
        raise TaskFileError(path, "Categories", "expected a list of strings")
    return SNITask(
        name=path.stem,
        definition=_str_or_first(data["Definition"], path, "Definition"),
        categories=categories,
        pos_examples=_examples(data["Positive Examples"], path, "Positive Examples"),
        instances=_instances(data["Instances"], path),
        path=str(path),
        extra={k: v for k, v in data.items() if k not in _KNOWN},
    )


def task_path(root: str | Path, name: str) -> Path:
    """Where task `name` lives under an SNI directory (DIR/tasks/ or DIR/)."""
    root = Path(root)
    for candidate in (root / "tasks" / f"{name}.json", root / f"{name}.json"):
        if candidate.is_file():
            return candidate
    return root / "tasks" / f"{name}.json"


def read_split_names(root: str | Path, split: str) -> list[str]:
    """Task names listed in `{split}_tasks.txt` (DIR/ or DIR/splits/default/)."""
    root = Path(root)
    for candidate in (root / f"{split}_tasks.txt", root / "splits" / "default" / f"{split}_tasks.txt"):
        if candidate.is_file():
            lines = candidate.read_text(encoding="utf-8").splitlines()
            return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    raise FileNotFoundError(f"no {split}_tasks.txt under {root} (looked in {root} and {root}/splits/default)")


def select_instances(task: SNITask, split: str, max_instances: int, seed: int) -> list[Instance]:
    """Test tasks: the first `max_instances` in file order (SNI evaluation convention).
    Training tasks: a seeded random sample of `max_instances` (kept in file order)."""
    if len(task.instances) <= max_instances:
        return list(task.instances)
    if split == "test":
        return task.instances[:max_instances]
    rng = random.Random(f"{seed}:{task.name}")
    keep = sorted(rng.sample(range(len(task.instances)), max_instances))
    return [task.instances[i] for i in keep]


@dataclass
class LoadResult:
    """Tasks that loaded, and the errors of those that did not (one per bad file)."""

    tasks: list[SNITask]
    errors: list[TaskFileError]


def load_tasks(root: str | Path, names: list[str], split: str = "train", max_instances: int | None = None,
               seed: int = 0) -> LoadResult:
    """Load named tasks; a bad file is logged and reported in `errors`, the rest still load."""
    tasks, errors = [], []
    for name in names:
        try:
            task = load_task(task_path(root, name))
        except TaskFileError as exc:
            log.warning("skipping task: %s", exc)
            errors.append(exc)
            continue
        if max_instances is not None:
            task.instances = select_instances(task, split, max_instances, seed)
        tasks.append(task)
    return LoadResult(tasks, errors)


def load_split(root: str | Path, split: str, max_instances: int | None = None, seed: int = 0) -> LoadResult:
    """Load every task of an official split ("train" or "test") of an SNI directory."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return load_tasks(root, read_split_names(root, split), split, max_instances, seed)


def write_sni_layout(suite: dict[str, dict[str, dict]], out_dir: str | Path) -> Path:
    """Write generated tasks ({split: {name: task_json}}) in the SNI layout: tasks/*.json (each
    written to a temp name and renamed) and <split>_tasks.txt."""
    out = Path(out_dir)
    (out / "tasks").mkdir(parents=True, exist_ok=True)
    for split, tasks in suite.items():
        for name, task in tasks.items():
            tmp = out / "tasks" / f".{name}.json.tmp"
            tmp.write_text(json.dumps(task, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
            tmp.replace(out / "tasks" / f"{name}.json")
        (out / f"{split}_tasks.txt").write_text("".join(f"{n}\n" for n in tasks), encoding="utf-8")
    return out
