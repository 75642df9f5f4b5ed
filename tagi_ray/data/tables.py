"""SNI tasks <-> Arrow tables (one row per instance), the format every job consumes.

Columns: task, category, id, definition, pos_examples (list of {input, output, explanation}),
input, outputs (list of references), split. Training loops read these tables (or Ray Data /
HF `datasets` views of them) and never parse task JSON themselves.
"""
from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tagi_ray.data.sni import Instance, SNITask

_EXAMPLE = pa.struct([("input", pa.string()), ("output", pa.string()), ("explanation", pa.string())])
SCHEMA = pa.schema([
    ("task", pa.string()),
    ("category", pa.string()),
    ("id", pa.string()),
    ("definition", pa.string()),
    ("pos_examples", pa.list_(_EXAMPLE)),
    ("input", pa.string()),
    ("outputs", pa.list_(pa.string())),
    ("split", pa.string()),
])


def tasks_to_table(tasks: Iterable[SNITask], split: str) -> pa.Table:
    """One row per instance of every task, all tagged with `split`."""
    cols: dict[str, list] = {name: [] for name in SCHEMA.names}
    for task in tasks:
        examples = [{k: ex.get(k, "") for k in ("input", "output", "explanation")} for ex in task.pos_examples]
        for inst in task.instances:
            cols["task"].append(task.name)
            cols["category"].append(task.category)
            cols["id"].append(inst.id)
            cols["definition"].append(task.definition)
            cols["pos_examples"].append(examples)
            cols["input"].append(inst.input)
            cols["outputs"].append(list(inst.outputs))
            cols["split"].append(split)
    return pa.table(cols, schema=SCHEMA)


def select_split(table: pa.Table, split: str) -> pa.Table:
    """The rows of one split ("train", "val" or "test")."""
    return table.filter(pc.equal(table.column("split"), split))


def shuffle_rows(table: pa.Table, seed: int) -> pa.Table:
    """The rows in a seeded random order. Task tables are grouped by task; contiguous worker
    shards (or a streaming reader with a small shuffle buffer) would otherwise hold one or two
    tasks each."""
    order = list(range(table.num_rows))
    random.Random(seed).shuffle(order)
    return table.take(order)


def table_to_tasks(table: pa.Table) -> dict[str, list[SNITask]]:
    """Inverse of `tasks_to_table` (for any mix of splits): {split: [SNITask, ...]} in row order."""
    _check_schema(table)
    by_key: dict[tuple[str, str], SNITask] = {}
    for row in table.to_pylist():
        key = (row["split"], row["task"])
        task = by_key.get(key)
        if task is None:
            task = by_key[key] = SNITask(
                name=row["task"], definition=row["definition"], categories=[row["category"]],
                pos_examples=list(row["pos_examples"]), instances=[],
            )
        task.instances.append(Instance(id=row["id"], input=row["input"], outputs=list(row["outputs"])))
    out: dict[str, list[SNITask]] = {}
    for (split, _), task in by_key.items():
        out.setdefault(split, []).append(task)
    return out


def _check_schema(table: pa.Table) -> None:
    missing = [n for n in SCHEMA.names if n not in table.column_names]
    if missing:
        raise ValueError(f"not a tagi-ray task table: missing columns {missing}")


ROW_GROUP_ROWS = 2048  # most rows in one Parquet row group
STATISTICS = ["task", "split"]  # the columns readers filter on; no min/max of long texts in the footer


def row_groups(table: pa.Table) -> list[tuple[int, int]]:
    """(offset, length) of each Parquet row group: one task's rows per group (split after
    ROW_GROUP_ROWS) when the rows are grouped by task, as built. A reader of a few tasks then
    decodes only their rows, wherever they sit in the file: a teacher pack holds tasks of similar
    length, spread over the whole table, so groups of mixed tasks made every pack decode most of
    a large fleet's table. Rows not grouped by task (shuffled) go in groups of ROW_GROUP_ROWS."""
    ends = [table.num_rows]
    if "task" in table.column_names and table.num_rows:
        task = table.column("task").combine_chunks()
        runs = pc.run_end_encode(task).run_ends.to_pylist()  # where each run of one task ends
        if len(runs) == len(pc.unique(task)):  # else some task comes back later: not grouped
            ends = runs
    bounds = [0] + ends
    return [(o, min(ROW_GROUP_ROWS, end - o)) for a, end in zip(bounds, bounds[1:])
            for o in range(a, end, ROW_GROUP_ROWS)]


def write_table(table: pa.Table, path: str | Path) -> Path:
    """Write as Parquet (`.parquet`, `row_groups`) or Arrow IPC (`.arrow`), atomically (temp
    file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".arrow":
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    elif path.suffix == ".parquet":
        stats = [c for c in STATISTICS if c in table.column_names]
        with pq.ParquetWriter(tmp, table.schema, write_statistics=stats or False) as writer:
            for offset, length in row_groups(table):
                writer.write_table(table.slice(offset, length), row_group_size=length)
    else:
        raise ValueError(f"{path}: use a .parquet or .arrow file name")
    tmp.replace(path)
    return path


def read_table(path: str | Path) -> pa.Table:
    """Read a table written by `write_table`."""
    path = Path(path)
    if path.suffix == ".arrow":
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_file(source).read_all()
    else:
        table = pq.read_table(path)
    _check_schema(table)
    return table


def read_task_rows(path: str | Path, split: str, tasks: Iterable[str]) -> pa.Table:
    """The rows of `tasks` in one split of a Parquet task table, without reading the rest: row
    groups whose `task` statistics exclude them are skipped, so a worker's memory follows its
    pack, not the number of tasks in the run."""
    wanted = pa.array(sorted(tasks), pa.string())
    return pq.read_table(path, filters=(pc.field("split") == split) & pc.field("task").isin(wanted), schema=SCHEMA)


def to_hf_dataset(table: pa.Table):
    """A Hugging Face `datasets.Dataset` view of a task table (zero-copy)."""
    import datasets

    return datasets.Dataset(datasets.table.InMemoryTable(table))


def from_hf_dataset(ds) -> pa.Table:
    """The Arrow table behind a `datasets.Dataset` (e.g. after `.filter`/`.select`)."""
    return ds.with_format("arrow")[:]


def without_tasks(table: pa.Table, tasks: Iterable[str]) -> pa.Table:
    """`table` minus the rows of `tasks` (validation tasks stay unseen in training)."""
    tasks = sorted(set(tasks))
    if not tasks:
        return table
    return table.filter(pc.invert(pc.is_in(table.column("task"), value_set=pa.array(tasks, pa.string()))))
