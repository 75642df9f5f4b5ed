import json
import shutil

import pytest

from tagi_ray.data.prompts import instance_text, instruction_text, parse_prompt_format, tk_prompt
from tagi_ray.data.sni import TaskFileError, load_split, load_task, load_tasks, read_split_names, select_instances


def test_loads_the_shared_official_splits(shared_sni_dir):
    train = load_split(shared_sni_dir, "train")
    test = load_split(shared_sni_dir, "test")
    assert not train.errors and not test.errors
    assert len(train.tasks) == 72 and len(test.tasks) == 12
    assert {t.name for t in train.tasks}.isdisjoint({t.name for t in test.tasks})
    # one SNI test category per test task
    assert len({t.category for t in test.tasks}) == 12
    task = next(t for t in train.tasks if t.name == "task063_first_i_elements")
    assert task.category == "program_execution"
    assert task.instances[0].id == "task063-75d82a0556b84113b2cc419c2abc9948"
    assert task.instances[0].outputs == ["q, q, 6047, e, 4093, w, D"]
    assert len(task.pos_examples) >= 2 and task.extra["Source"]


def test_tk_instruct_prompts_for_a_real_task(shared_sni_dir):
    task = load_task(shared_sni_dir / "tasks" / "task063_first_i_elements.json")
    inst = task.instances[0]
    definition = (
        "Definition: In this task, you are given inputs i and A, where i is an integer and A is a list. "
        "You need to output the first i elements of A, starting with the 1st element in A. "
        "i will always have a value less than the length of A.\n\n"
    )
    instance = (
        "Now complete the following example -\n"
        "Input: 7, ['q', 'q', '6047', 'e', '4093', 'w', 'D', '2021', 'R', 'j', '1003', 'Y', 'L', 'Q', "
        "'I', 'F', 'B', '8745', 'H', 'Z', 'O', 'g']\n"
        "Output: "
    )
    pos = (
        " Positive Example 1 -\n"
        "Input: 3, ['a', '34', 'f', '931', '7', '3432', '13245', '762']\n"
        " Output: a, 34, f.\n\n"
        " Positive Example 2 -\n"
        "Input: 6, ['5191', '9389', '9907', '8877', 'N', '6453', 's', 'k', '6209', 'W', '4591', 'B', 'p']\n"
        " Output: 5191, 9389, 9907, 8877, N, 6453.\n\n"
    )
    k_def, k_pos = parse_prompt_format("def"), parse_prompt_format("Def+2Pos")
    assert (k_def, k_pos) == (0, 2)
    assert tk_prompt(task.definition, task.pos_examples, inst.input, k_def) == definition + instance
    assert tk_prompt(task.definition, task.pos_examples, inst.input, k_pos) == definition + pos + instance
    # the two halves TAGI feeds to the hypernetwork and to the model
    assert instruction_text(task.definition, task.pos_examples, k_pos) == definition + pos
    assert instance_text(inst.input) == instance


def test_prompt_adds_a_period_only_without_final_punctuation():
    assert instance_text("hello") == "Now complete the following example -\nInput: hello.\nOutput: "
    assert instance_text("hello?") == "Now complete the following example -\nInput: hello?\nOutput: "
    assert instruction_text("Say yes.") == "Definition: Say yes.\n\n"
    with pytest.raises(ValueError, match="unknown prompt format 'def\\+pos'"):
        parse_prompt_format("def+pos")


def _write(path, data):
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


GOOD = {
    "Definition": ["Echo the input."],
    "Categories": ["Text Matching"],
    "Positive Examples": [{"input": "a", "output": "a"}, {"input": "b", "output": "b"}],
    "Instances": [{"id": "t-0", "input": "x", "output": ["x"]}],
}


@pytest.mark.parametrize(
    "data, field",
    [
        ("{not json", "<json>"),
        ({k: v for k, v in GOOD.items() if k != "Definition"}, "Definition"),
        ({**GOOD, "Definition": [""]}, "Definition"),
        ({**GOOD, "Instances": []}, "Instances"),
        ({**GOOD, "Instances": [{"id": "t-0", "input": "x"}]}, "Instances[0].output"),
        ({**GOOD, "Instances": [{"id": "t-0", "input": "x", "output": []}]}, "Instances[0].output"),
        ({**GOOD, "Positive Examples": [{"input": "a"}]}, "Positive Examples[0]"),
    ],
)
def test_corrupt_task_file_names_file_and_field(tmp_path, data, field):
    path = _write(tmp_path / "task999_bad.json", data)
    with pytest.raises(TaskFileError) as info:
        load_task(path)
    assert info.value.path == str(path) and info.value.field == field
    assert "task999_bad.json" in str(info.value) and repr(field) in str(info.value)


def test_bad_file_does_not_lose_the_other_tasks(tmp_path, shared_sni_dir):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    shutil.copy(shared_sni_dir / "tasks" / "task063_first_i_elements.json", tasks)
    _write(tasks / "task998_broken.json", {**GOOD, "Instances": "oops"})
    _write(tasks / "task997_ok.json", GOOD)
    (tmp_path / "train_tasks.txt").write_text("task063_first_i_elements\ntask998_broken\ntask997_ok\ntask996_missing\n")
    result = load_split(tmp_path, "train")
    assert [t.name for t in result.tasks] == ["task063_first_i_elements", "task997_ok"]
    assert [(e.field, e.path.split("/")[-1]) for e in result.errors] == [
        ("Instances", "task998_broken.json"), ("<file>", "task996_missing.json")]


def test_instance_selection_first_n_for_test_seeded_sample_for_train(shared_sni_dir):
    task = load_task(shared_sni_dir / "tasks" / "task063_first_i_elements.json")
    assert [i.id for i in select_instances(task, "test", 10, 0)] == [i.id for i in task.instances[:10]]
    a = [i.id for i in select_instances(task, "train", 10, seed=1)]
    assert a == [i.id for i in select_instances(task, "train", 10, seed=1)]
    assert a != [i.id for i in select_instances(task, "train", 10, seed=2)]
    assert len(set(a)) == 10
    r = load_tasks(shared_sni_dir, ["task063_first_i_elements"], "train", max_instances=5, seed=0)
    assert len(r.tasks[0].instances) == 5


def test_missing_split_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="test_tasks.txt"):
        read_split_names(tmp_path, "test")
