import json

from tagi_ray.data.lexicon import CATEGORIES, HELD_OUT, build_lexicon, write_lexicon
from tagi_ray.data.sni import load_split


def test_deterministic_and_in_sni_format(tmp_path):
    assert json.dumps(build_lexicon(seed=1)) == json.dumps(build_lexicon(seed=1))
    assert json.dumps(build_lexicon(seed=1)) != json.dumps(build_lexicon(seed=2))
    write_lexicon(tmp_path, n_instances=12)
    train, test = load_split(tmp_path, "train"), load_split(tmp_path, "test")
    assert not train.errors and not test.errors and len(train.tasks) >= 20 and len(test.tasks) >= 8
    assert all(len(t.instances) == 12 and len(t.pos_examples) >= 2 for t in train.tasks + test.tasks)


def test_answers_follow_each_task_rule():
    word_category = {w: c for c, (_, words) in CATEGORIES.items() for w in words}
    assert len(word_category) == sum(len(ws) for _, ws in CATEGORIES.values())  # no word in two categories
    for split in build_lexicon(n_instances=20).values():
        for task in split.values():
            family, cats = task["Rule"].split("_", 1)[0], task["Rule"]
            for inst in task["Instances"]:
                words, answer = inst["input"].split(), inst["output"][0]
                if task["Rule"].startswith("pick_"):
                    target = task["Rule"][len("pick_"):]
                    assert [w for w in words if word_category[w] == target] == [answer]
                elif task["Rule"].startswith("drop_"):
                    target = task["Rule"][len("drop_"):]
                    assert answer.split() == [w for w in words if word_category[w] != target]
                elif task["Rule"].startswith("is_a_"):
                    assert answer == ("yes" if word_category[words[0]] == task["Rule"][len("is_a_"):] else "no")
                else:
                    assert answer.replace(" ", "_") == word_category[words[0]] and family == "which", cats


def test_held_out_categories_are_never_named_by_a_training_task():
    suite = build_lexicon(n_instances=4)
    train_text = " ".join(t["Definition"][0] + " " + t["Rule"] for t in suite["train"].values())
    for category in HELD_OUT:
        assert CATEGORIES[category][0] not in train_text and category not in train_text
        assert any(category in t["Rule"] for t in suite["test"].values())
