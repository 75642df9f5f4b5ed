"""The lexicon suite: SNI-format tasks about word categories, for a pretrained base.

Each task asks a question about common English words and one *category* (animals, fruits,
musical instruments, ...): pick the word of the category from a list, say whether a word
belongs to it, or say which of three categories a word belongs to (`drop`, removing the word,
is defined but not in the default suite). A pretrained model
knows the categories; what it must learn is to read the task's instruction and answer in its
format. Held-out (test) tasks use categories that no training task names, so they can only be
solved through their instruction. Generated offline and deterministically, written in the
Super-NaturalInstructions layout (`write_lexicon`), read by the SNI loader like any task.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from tagi_ray.data.sni import write_sni_layout

# category -> (how the instruction names it, words). Words are common, unambiguous, one per
# category (no "orange", "cricket", "tomato").
CATEGORIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "animal": ("an animal", ("dog", "cat", "horse", "cow", "lion", "tiger", "bear", "rabbit", "sheep", "goat",
                             "wolf", "fox", "monkey", "elephant", "zebra", "deer")),
    "fruit": ("a fruit", ("apple", "banana", "grape", "lemon", "cherry", "peach", "pear", "mango", "plum",
                          "melon", "kiwi", "pineapple", "coconut", "apricot")),
    "color": ("a color", ("red", "blue", "green", "yellow", "purple", "pink", "brown", "black", "white",
                          "gray", "beige", "turquoise")),
    "body_part": ("a part of the body", ("hand", "foot", "head", "nose", "ear", "eye", "arm", "leg", "finger",
                                         "knee", "elbow", "shoulder", "ankle", "chin")),
    "clothing": ("a piece of clothing", ("shirt", "hat", "coat", "dress", "sock", "jacket", "scarf", "glove",
                                         "skirt", "sweater", "trousers", "boot")),
    "furniture": ("a piece of furniture", ("chair", "sofa", "bed", "desk", "shelf", "cabinet", "stool",
                                           "couch", "dresser", "wardrobe", "bookcase", "armchair")),
    "job": ("a job", ("doctor", "teacher", "farmer", "pilot", "nurse", "chef", "lawyer", "baker", "dentist",
                      "plumber", "carpenter", "engineer")),
    "drink": ("a drink", ("water", "milk", "coffee", "tea", "juice", "soda", "wine", "beer", "lemonade",
                          "cocoa", "smoothie", "milkshake")),
    "country": ("a country", ("France", "Japan", "Brazil", "Canada", "Egypt", "India", "Mexico", "Italy",
                              "Spain", "Germany", "China", "Kenya")),
    "tool": ("a tool", ("hammer", "saw", "drill", "wrench", "screwdriver", "shovel", "rake", "axe", "pliers",
                        "chisel", "scissors", "spanner")),
    # held out: no training task names these categories
    "instrument": ("a musical instrument", ("piano", "guitar", "violin", "drum", "flute", "trumpet", "harp",
                                            "cello", "saxophone", "clarinet", "banjo", "trombone")),
    "vehicle": ("a vehicle", ("car", "bus", "train", "truck", "bicycle", "boat", "airplane", "ship", "taxi",
                              "van", "tractor", "motorcycle")),
    "sport": ("a sport", ("soccer", "tennis", "golf", "hockey", "baseball", "basketball", "rugby",
                          "volleyball", "boxing", "skiing", "wrestling", "swimming")),
    "vegetable": ("a vegetable", ("carrot", "potato", "onion", "cabbage", "lettuce", "spinach", "garlic",
                                  "cucumber", "broccoli", "celery", "pumpkin", "radish")),
}
HELD_OUT = ("instrument", "vehicle", "sport", "vegetable")
TRAIN_CATEGORIES = tuple(c for c in CATEGORIES if c not in HELD_OUT)
LIST_LENGTH = 4  # words per list input: one of the category, the rest from other categories


@dataclass(frozen=True)
class LexTask:
    """One task: a family (pick, drop, is_a, which) and its categories."""

    family: str
    categories: tuple[str, ...]

    @property
    def name_slug(self) -> str:
        return f"{self.family}_" + "_".join(self.categories)

    @property
    def definition(self) -> str:
        head = "You are given a list of words separated by spaces. "
        if self.family == "pick":
            return head + f"Return the one word of the list that names {_desc(self.categories[0])}. Write only that word."
        if self.family == "drop":
            return head + (f"Remove the word that names {_desc(self.categories[0])} and write the other words "
                           "in their original order, separated by spaces.")
        if self.family == "is_a":
            return (f"You are given a word. Answer 'yes' if it names {_desc(self.categories[0])}, "
                    "otherwise answer 'no'.")
        labels = ", ".join(f"'{c.replace('_', ' ')}'" for c in self.categories)
        return f"You are given a word. Say which category it belongs to. The answer must be one of: {labels}."

    @property
    def category_label(self) -> str:
        return {"pick": "Word Extraction", "drop": "Word Filtering", "is_a": "Text Classification",
                "which": "Text Categorization"}[self.family]


def _desc(category: str) -> str:
    return CATEGORIES[category][0]


def _words(category: str) -> tuple[str, ...]:
    return CATEGORIES[category][1]


def sample(task: LexTask, rng: random.Random, i: int, others: tuple[str, ...]) -> tuple[str, str]:
    """The i-th (input, answer) pair of a task; distractors come from `others` categories."""
    if task.family in ("pick", "drop"):
        target = rng.choice(_words(task.categories[0]))
        distractors = [rng.choice(_words(c)) for c in rng.sample(others, LIST_LENGTH - 1)]
        words = distractors[:]
        words.insert(rng.randrange(LIST_LENGTH), target)
        answer = target if task.family == "pick" else " ".join(w for w in words if w != target)
        return " ".join(words), answer
    if task.family == "is_a":  # labels alternate: balanced yes/no
        if i % 2 == 0:
            return rng.choice(_words(task.categories[0])), "yes"
        return rng.choice(_words(rng.choice(others))), "no"
    category = task.categories[i % len(task.categories)]  # which: balanced over its labels
    return rng.choice(_words(category)), category.replace("_", " ")


def suite_tasks(seed: int = 0) -> dict[str, list[LexTask]]:
    """Training and held-out tasks. Training: pick and is_a of every training category and
    `which` over triples of training categories; held-out: the same families over categories
    no training task names. (`drop`, a rewriting family, is left out of the suite: its longer
    answers cost the CPU demo ~25% more time.)"""
    rng = random.Random(f"lexicon:{seed}")
    train = [LexTask(f, (c,)) for f in ("pick", "is_a") for c in TRAIN_CATEGORIES]
    shuffled = list(TRAIN_CATEGORIES)
    rng.shuffle(shuffled)
    train += [LexTask("which", tuple(shuffled[i:i + 3])) for i in range(0, 9, 3)]
    test = [LexTask("pick", (c,)) for c in HELD_OUT]
    test += [LexTask("is_a", (c,)) for c in HELD_OUT[:2]]
    test += [LexTask("which", HELD_OUT[:3]), LexTask("which", (HELD_OUT[3], "animal", "tool"))]
    return {"train": train, "test": test}


def make_task_json(task: LexTask, name: str, n_instances: int, rng: random.Random) -> dict:
    """One task as an SNI JSON object (3 positive examples, 1 negative, `n_instances` instances)."""
    others = tuple(c for c in TRAIN_CATEGORIES if c not in task.categories)
    pairs = [sample(task, rng, i, others) for i in range(n_instances + 3)]
    examples, instances = pairs[:3], pairs[3:]
    wrong = examples[0][0].split()[0] if examples[0][1] != examples[0][0].split()[0] else examples[0][0]
    return {
        "Contributors": ["tagi-ray lexicon suite"], "Source": ["tagi_ray.data.lexicon"], "URL": [],
        "Categories": [task.category_label], "Reasoning": ["Commonsense Reasoning"],
        "Definition": [task.definition],
        "Input_language": ["English"], "Output_language": ["English"], "Instruction_language": ["English"],
        "Domains": ["Synthetic"], "Rule": task.name_slug,
        "Positive Examples": [{"input": s, "output": a, "explanation": f"The answer to '{s}' is '{a}'."}
                              for s, a in examples],
        "Negative Examples": [{"input": examples[0][0], "output": wrong,
                               "explanation": f"The correct answer is '{examples[0][1]}'."}],
        "Instances": [{"id": f"{name}-{i}", "input": s, "output": [a]} for i, (s, a) in enumerate(instances)],
        "Instance License": ["Apache 2.0"],
    }


def build_lexicon(seed: int = 0, n_instances: int = 64) -> dict[str, dict[str, dict]]:
    """{"train": {name: task_json}, "test": {name: task_json}}, deterministic in `seed`."""
    suite: dict[str, dict[str, dict]] = {"train": {}, "test": {}}
    for split, base in (("train", 9600), ("test", 9900)):
        for i, task in enumerate(suite_tasks(seed)[split], start=1):
            name = f"task{base + i}_lexicon_{task.name_slug}"
            suite[split][name] = make_task_json(task, name, n_instances, random.Random(f"{seed}:{name}"))
    return suite


def write_lexicon(out_dir: str | Path, seed: int = 0, n_instances: int = 64) -> Path:
    """Write the suite in the SNI layout: tasks/*.json, train_tasks.txt, test_tasks.txt."""
    return write_sni_layout(build_lexicon(seed, n_instances), out_dir)
