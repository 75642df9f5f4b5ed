import json

from tagi_ray.data.builtin import TEST_RULES, TRAIN_RULES, apply_rule, build_suite, write_suite
from tagi_ray.data.sni import load_split


def test_suite_is_deterministic_by_seed():
    assert json.dumps(build_suite(seed=3)) == json.dumps(build_suite(seed=3))
    assert json.dumps(build_suite(seed=3)) != json.dumps(build_suite(seed=4))


def test_sizes_and_sni_format(tmp_path):
    write_suite(tmp_path, seed=0, n_instances=20)
    train, test = load_split(tmp_path, "train"), load_split(tmp_path, "test")
    assert not train.errors and not test.errors
    assert len(train.tasks) >= 40 and len(test.tasks) >= 12
    for task in train.tasks + test.tasks:
        assert len(task.pos_examples) >= 2 and len(task.instances) == 20
        assert task.definition.endswith(".") and len(task.definition.split()) > 10
        rule = task.extra["Rule"]
        ops = next(r for r in TRAIN_RULES + TEST_RULES if ">".join(o.rule for o in r) == rule)
        for inst in task.instances:  # every output is produced by the task's own rule
            assert inst.outputs == [apply_rule(ops, inst.input)]
    # several output types: labels, numbers, single words, rewrites
    outputs = {o for t in test.tasks + train.tasks for i in t.instances for o in i.outputs}
    assert {"yes", "no", "even", "odd"} <= outputs and any(o.isdigit() for o in outputs)
    assert len({t.category for t in test.tasks}) >= 5


def test_held_out_tasks_share_no_definition_or_rule_with_training(tmp_path):
    write_suite(tmp_path, seed=0, n_instances=4)
    train, test = load_split(tmp_path, "train").tasks, load_split(tmp_path, "test").tasks
    assert {t.definition for t in train}.isdisjoint({t.definition for t in test})
    assert {t.extra["Rule"] for t in train}.isdisjoint({t.extra["Rule"] for t in test})
    train_ops = {op.rule for r in TRAIN_RULES for op in r}
    train_pairs = {tuple(op.rule for op in r) for r in TRAIN_RULES if len(r) == 2}
    for rule in TEST_RULES:
        unseen_param = any(op.rule not in train_ops for op in rule)
        unseen_composition = len(rule) == 2 and tuple(op.rule for op in rule) not in train_pairs
        assert unseen_param or unseen_composition, rule
    # held-out instances never repeat a training task's answer function on the same input
    assert {t.name for t in train}.isdisjoint({t.name for t in test})


def test_balanced_labels_for_classification_tasks():
    suite = build_suite(seed=0, n_instances=40)
    for task in list(suite["train"].values()) + list(suite["test"].values()):
        outs = [i["output"][0] for i in task["Instances"]]
        if set(outs) <= {"yes", "no"} or set(outs) <= {"even", "odd"}:
            assert len(set(outs)) == 2 and abs(outs.count(outs[0]) - 20) <= 1


def test_a_fleet_of_756_distinct_training_tasks_keeps_the_held_out_tasks_unseen():
    from tagi_ray.data.builtin import build_suite, fleet_rules, rule_string

    suite = build_suite(seed=0, n_instances=4, n_train=756)
    assert len(suite["train"]) == 756 and len(suite["test"]) == len(TEST_RULES)
    rules = [t["Rule"] for t in suite["train"].values()]
    assert len(set(rules)) == 756 and len({t["Definition"][0] for t in suite["train"].values()}) == 756
    assert rules[:len(TRAIN_RULES)] == [rule_string(r) for r in TRAIN_RULES]  # the standard suite first
    assert set(rules).isdisjoint({rule_string(r) for r in TEST_RULES})
    reserved = {op.rule for r in TEST_RULES if len(r) == 1 for op in r}  # held-out parameter values
    fleet = fleet_rules(800)
    assert not any(op.rule in reserved for r in fleet for op in r)
    assert build_suite(seed=0, n_instances=4, n_train=756)["train"].keys() == suite["train"].keys()
