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
