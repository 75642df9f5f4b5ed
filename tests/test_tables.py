import pyarrow as pa
import pytest

from tagi_ray.data.export import build_table
from tagi_ray.data.tables import (SCHEMA, from_hf_dataset, read_table, select_split, shuffle_rows, table_to_tasks,
                                  tasks_to_table, to_hf_dataset, write_table)


@pytest.mark.parametrize("suffix", [".parquet", ".arrow"])
def test_table_round_trip(shared_sni_dir, tmp_path, suffix):
    table, errors = build_table(shared_sni_dir, ("train", "test"), max_instances=8, max_eval_instances=5)
    assert not errors and table.schema == SCHEMA
    assert set(table.column("split").to_pylist()) == {"train", "test"}
    back = read_table(write_table(table, tmp_path / f"tasks{suffix}"))
    assert back.equals(table)
    tasks = table_to_tasks(back)
    assert len(tasks["train"]) == 72 and len(tasks["test"]) == 12
    assert all(len(t.instances) == 5 for t in tasks["test"])
    # and back to the same table
    again = tasks_to_table(tasks["test"], "test")
    assert again.equals(select_split(table, "test"))


def test_shuffle_rows_mixes_tasks_reproducibly(shared_sni_dir):
    table, _ = build_table(shared_sni_dir, ("train",), max_instances=16)
    assert len(set(table.column("task").to_pylist()[:16])) == 1  # grouped by task as built
    mixed = shuffle_rows(table, seed=3)
    assert mixed.equals(shuffle_rows(table, seed=3)) and not mixed.equals(shuffle_rows(table, seed=4))
    assert sorted(mixed.column("id").to_pylist()) == sorted(table.column("id").to_pylist())  # a permutation
    assert len(set(mixed.column("task").to_pylist()[:16])) >= 8  # a batch's worth of rows spans many tasks


def test_hf_datasets_view(shared_sni_dir):
    table, _ = build_table(shared_sni_dir, ("test",), max_eval_instances=3)
    ds = to_hf_dataset(table)
    assert len(ds) == table.num_rows and ds[0]["split"] == "test"
    assert isinstance(ds[0]["outputs"], list) and isinstance(ds[0]["pos_examples"][0]["input"], str)
    small = ds.filter(lambda r: r["category"] == ds[0]["category"])
    assert from_hf_dataset(small).num_rows == 3


def test_non_task_table_is_refused(tmp_path):
    import pyarrow as pa

    write_table(pa.table({"x": [1]}), tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="missing columns"):
        read_table(tmp_path / "x.parquet")


def test_read_task_rows_reads_one_pack_without_the_rest(shared_sni_dir, tmp_path, monkeypatch):
    """Teacher workers read their pack's rows from the run's Parquet table: the same rows as
    filtering the whole table, from row groups that hold one task each (so the others are
    skipped by their statistics), wherever the pack's tasks sit in the file."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from tagi_ray.data import tables
    from tagi_ray.data.tables import read_task_rows

    monkeypatch.setattr(tables, "ROW_GROUP_ROWS", 64)
    table, _ = build_table(shared_sni_dir, ("train", "test"), max_instances=16, max_eval_instances=5)
    path = write_table(table, tmp_path / "tasks.parquet")
    train = select_split(table, "train")
    names = sorted(set(train.column("task").to_pylist()))[10:70:20]  # spread over the file, like a pack
    got = read_task_rows(path, "train", names)
    assert got.equals(train.filter(pc.is_in(train.column("task"), value_set=pa.array(names))))
    assert got.num_rows == 3 * 16 and read_task_rows(path, "train", []).num_rows == 0
    fragment = next(ds.dataset(path).get_fragments())
    groups = fragment.split_by_row_group(ds.field("task").isin(names) & (ds.field("split") == "train"))
    assert len(groups) == 3 < fragment.num_row_groups  # the pack's groups, not the file's
    assert sum(g.row_groups[0].num_rows for g in groups) == 3 * 16  # and no other task's rows


def test_row_groups_hold_one_task_and_shuffled_rows_round_trip(tmp_path, monkeypatch):
    """Row groups cut at task boundaries (and after ROW_GROUP_ROWS); rows not grouped by task
    are written in fixed-size groups; both read back unchanged."""
    import pyarrow.parquet as pq

    from tagi_ray.data import tables

    monkeypatch.setattr(tables, "ROW_GROUP_ROWS", 3)
    grouped = pa.table({"task": list("aaaaabbc"), "x": list(range(8))})
    assert tables.row_groups(grouped) == [(0, 3), (3, 2), (5, 2), (7, 1)]
    mixed = pa.table({"task": list("abab"), "x": list(range(4))})
    assert tables.row_groups(mixed) == [(0, 3), (3, 1)]
    for t in (grouped, mixed, grouped.slice(0, 0)):
        path = write_table(t, tmp_path / "t.parquet")
        assert pq.read_table(path).equals(t)
        assert pq.ParquetFile(path).metadata.num_row_groups == len(tables.row_groups(t))
