"""The evaluation protocol: SNI's trivial baselines on the real test tasks against an independent
recomputation, bootstrap CIs, paired differences, distinct-prediction shares, ablation configs."""
from __future__ import annotations

import json
import string
from dataclasses import replace

import pytest
from rouge_score import rouge_scorer

from tagi_ray.config import load_config
from tagi_ray.data.export import build_table
from tagi_ray.evaluation import Method, compare, score, scored_examples, summarize
from tagi_ray.stats import bootstrap_ci, distinct_share, paired_difference_ci


def _independent(sni_dir, which: str, limit: int = 100) -> tuple[float, float, int]:
    """ROUGE-L / EM of copy_input or copy_demo straight from the task JSON files (SNI's recipe:
    rouge-score with stemming, max over references; EM after lowercasing, stripping ASCII
    punctuation and collapsing spaces; mean over all instances x100)."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    norm = lambda t: " ".join("".join(c for c in t.lower() if c not in string.punctuation).split())  # noqa: E731
    rl = em = n = 0.0
    for name in (sni_dir / "test_tasks.txt").read_text().split():
        task = json.loads((sni_dir / "tasks" / f"{name}.json").read_text())
        for inst in task["Instances"][:limit]:
            pred = inst["input"] if which == "copy_input" else task["Positive Examples"][0]["output"]
            refs = inst["output"] if isinstance(inst["output"], list) else [inst["output"]]
            rl += max(scorer.score(r, pred)["rougeL"].fmeasure for r in refs)
            em += max(float(norm(pred) == norm(r)) for r in refs)
            n += 1
    return 100 * rl / n, 100 * em / n, int(n)


@pytest.mark.parametrize("which", ["copy_input", "copy_demo"])
def test_trivial_baselines_on_the_real_test_tasks_match_an_independent_recomputation(shared_sni_dir, which):
    table, errors = build_table(shared_sni_dir, ("test",), max_eval_instances=100)
    assert not errors
    examples = scored_examples(table, 0)
    preds = [e.input if which == "copy_input" else e.demo_output for e in examples]
    overall = summarize(score(examples, preds))["overall"]
    rouge, em, n = _independent(shared_sni_dir, which)
    assert overall["n"] == n and len({e.task for e in examples}) == 12
    assert overall["rougeL"] == pytest.approx(rouge, abs=1e-3) and overall["exact_match"] == pytest.approx(em, abs=1e-3)
    print(f"{which}: ROUGE-L {overall['rougeL']:.2f} {overall['rougeL_ci']}, EM {overall['exact_match']:.2f}, n={n}")
    assert overall["rougeL_ci"][0] <= overall["rougeL"] <= overall["rougeL_ci"][1]


def test_bootstrap_and_paired_differences():
    a = {"t1": [100.0, 0.0, 100.0, 0.0], "t2": [50.0, 50.0]}
    b = {"t1": [0.0, 0.0, 0.0, 0.0], "t2": [50.0, 50.0]}
    lo, hi = bootstrap_ci(a, n_boot=2000, seed=1)
    assert lo < 50.0 < hi and 0 <= lo and hi <= 100  # mean 50 over the 6 instances
    assert bootstrap_ci(b) == (pytest.approx(100 / 6), pytest.approx(100 / 6))  # no spread within tasks: no spread
    d, dlo, dhi = paired_difference_ci(a, b)
    assert d == pytest.approx(200 / 6) and dlo <= d <= dhi
    assert paired_difference_ci(a, a)[1:] == (0.0, 0.0)  # identical methods: no uncertainty in the difference
    with pytest.raises(ValueError, match="same instances"):
        paired_difference_ci(a, {"t1": [0.0]})
    assert distinct_share(["x"] * 8) == 1 / 8 and distinct_share(list("abcd")) == 1.0


def test_summaries_show_constant_answers_and_compare_on_the_same_instances():
    from tagi_ray.training.examples import Example

    ex = [Example(f"t{i % 2}", "c", str(i), "", "", str(i % 3), (str(i % 3),), input=str(i)) for i in range(12)]
    constant = score(ex, ["0"] * 12)
    right = score(ex, [e.target for e in ex])
    s = summarize(constant)
    assert s["per_task"]["t0"]["distinct"] == pytest.approx(1 / 6, abs=1e-4) and s["overall"]["exact_match"] == pytest.approx(100 / 3, abs=1e-3)
    diff = compare(right, constant)
    assert diff["exact_match"] == pytest.approx(100 - 100 / 3) and diff["exact_match_ci"][0] > 0
    with pytest.raises(ValueError, match="different instances"):
        compare(right, constant[::-1])
    with pytest.raises(ValueError, match="needs a path"):
        Method("tagi", "tagi")


def test_tables_rebuilt_from_stored_predictions_equal_the_evaluations(tmp_path, capsys):
    """`tagi report`: predictions stored by one session (gzipped) and another merge into the
    same summaries and paired differences as scoring them in one evaluation; a later file
    replaces a (format, method); a record without its fields is named by file and line."""
    import gzip

    from tagi_ray.cli import main
    from tagi_ray.evaluation import read_records, results_from_records
    from tagi_ray.jobs.evaluate import mark_ablation
    from tagi_ray.training.examples import Example

    ex = [Example(f"t{i % 3}", "c", str(i), "", "", str(i % 4), (str(i % 4), "z"), input=str(i)) for i in range(30)]
    preds = {"tagi": [e.target if i % 3 else "z" for i, e in enumerate(ex)], "base": ["0"] * 30,
             "oracle": [e.target for e in ex]}
    records = [{"format": "def", "method": m, **r} for m, p in preds.items() for r in score(ex, p)]
    one = results_from_records(records, n_boot=200)
    assert one["formats"]["def"]["base"]["tagi_minus"] == compare(score(ex, preds["tagi"]), score(ex, preds["base"]), 200)
    assert one["formats"]["def"]["oracle"]["overall"] == summarize(score(ex, preds["oracle"]), 200)["overall"]
    first, second = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl"
    stale = [{**r, "rougeL": 0.0} for r in records if r["method"] == "oracle"]
    first.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in records[:60] + stale).encode()))
    second.write_text("".join(json.dumps(r) + "\n" for r in records[60:]))
    merged = read_records([first, second])
    assert sorted(map(json.dumps, merged)) == sorted(map(json.dumps, records))
    assert results_from_records(merged, n_boot=200)["formats"] == one["formats"]
    assert main(["report", str(first), str(second), "--out", str(tmp_path / "r")]) == 0
    saved = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert saved["formats"]["def"]["oracle"]["overall"]["rougeL"] == 100.0
    assert "| oracle |" in (tmp_path / "r" / "report.md").read_text()
    ablation = tmp_path / "c.jsonl"  # the ablation table's records ride in the same files, marked
    ablation.write_text("".join(json.dumps(r) + "\n" for r in mark_ablation(records[:60])))
    assert main(["report", str(first), str(second), str(ablation), "--out", str(tmp_path / "r")]) == 0
    saved = json.loads((tmp_path / "r" / "metrics.json").read_text())
    for table in ("formats", "ablations"):  # headline rows unchanged; ablation rows scored as their own table
        assert {m: r["overall"]["rougeL"] for m, r in saved[table]["def"].items()} == {
            m: r["overall"]["rougeL"] for m, r in one["formats"]["def"].items() if table == "formats" or m != "oracle"}
    assert "## Ablations" in (tmp_path / "r" / "report.md").read_text()
    second.write_text(json.dumps({"format": "def", "method": "x"}) + "\n")
    assert main(["report", str(second), "--out", str(tmp_path / "r")]) == 1
    assert "b.jsonl:1: record lacks" in capsys.readouterr().err


def test_every_ablation_differs_from_tagi_by_exactly_its_switch():
    from tagi_ray.tune.experiment import VARIANTS, variant_config

    base = load_config().to_dict()
    full = variant_config(base, "tagi", "def").to_dict()
    seen = set()
    for variant, switch in VARIANTS.items():
        cfg = variant_config(base, variant, "def").to_dict()
        diff = {f"{s}.{k}": v for s in cfg for k, v in cfg[s].items() if full[s][k] != v}
        assert diff == switch, variant
        seen.add(json.dumps(diff, sort_keys=True))
    assert len(seen) == len(VARIANTS)  # all distinct
    assert variant_config(base, "tagi", "def+2pos").data.prompt == "def+2pos"


def test_an_interrupted_evaluation_resumes_from_each_methods_cached_predictions(tmp_path):
    """`cached_predict`: a method's predictions are computed once and reused while its weights,
    the instances and the decoding lengths are unchanged; a changed checkpoint is scored again."""
    from tagi_ray.evaluation import cached_predict
    from tagi_ray.training.examples import Example

    class CountingPredictor:  # the cache's only contract with Predictor: .cfg and .predict
        cfg, calls = load_config(), 0

        def predict(self, method, examples):
            self.calls += 1
            return [f"{e.id}:{self.calls}" for e in examples]

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "hypernet.safetensors").write_bytes(b"v1")
    ex = [Example("t", "c", str(i), "Define.", f"in {i}", "x", ("x",)) for i in range(3)]
    method, cache, predictor = Method("tagi", "tagi", ckpt), tmp_path / "cache", CountingPredictor()
    first, _ = cached_predict(predictor, method, ex, cache)
    again, _ = cached_predict(predictor, method, ex, cache)
    assert again == first == ["0:1", "1:1", "2:1"] and predictor.calls == 1 and len(list(cache.iterdir())) == 1
    assert cached_predict(predictor, method, ex[:2], cache)[0] == ["0:2", "1:2"]  # other instances
    (ckpt / "hypernet.safetensors").write_bytes(b"v2, retrained")
    assert cached_predict(predictor, method, ex[:2], cache)[0] == ["0:3", "1:3"]  # other weights
    base = Method("base", "base")
    assert cached_predict(predictor, base, ex[:2], cache)[0] == ["0:4", "1:4"]
    other_format = [replace(e, instruction="Define. Positive example 1 ...") for e in ex[:2]]
    assert cached_predict(predictor, base, other_format, cache)[0] == ["0:4", "1:4"]  # reads no instruction
    assert cached_predict(predictor, method, other_format, cache)[0] == ["0:5", "1:5"]  # reads it


def test_the_ablation_grid_may_use_its_own_budget_with_its_own_full_tagi_reference(tmp_path):
    from tagi_ray.run_dir import RunDir
    from tagi_ray.tune.experiment import ablation_budget, trial_specs, variant_config, variant_dir

    one = load_config(overrides=["train.meta_steps=150", "experiment.variants=[tagi,tagi_no_kl]",
                                 "experiment.formats=[def]"])
    assert ablation_budget(one) is None and [s["variant"] for s in trial_specs(one)] == ["tagi", "tagi_no_kl"]
    two = load_config(overrides=["train.meta_steps=150", "experiment.ablation_meta_steps=60",
                                 "experiment.variants=[tagi,tagi_no_kl]", "experiment.formats=[def,def+2pos]"])
    specs = trial_specs(two)
    assert [(s["variant"], s["budget"]) for s in specs if s["format"] == "def"] == \
        [("tagi", "headline"), ("tagi", "ablation"), ("tagi_no_kl", "ablation")]
    assert len(specs) == 6 and variant_config(two.to_dict(), "tagi_no_kl", "def", 60).train.meta_steps == 60
    run = RunDir(tmp_path)
    assert variant_dir(run, "tagi", "def") != variant_dir(run, "tagi", "def", "ablation")


def test_variants_with_the_same_stage_1_share_it(warm_run, tmp_path, capsys):
    """stage1_key: full TAGI at either budget, w/o L_kl and w/o L_ins share stage 1 per format;
    run_meta_training uses a complete shared stage 1 instead of training its own."""
    from tagi_ray.jobs.meta_train import run_meta_training
    from tagi_ray.tune.experiment import stage1_key, variant_config
    from tests.conftest import run_with_shared_base, tiny_test_config

    base = load_config().to_dict()
    keys = {(v, f, s): stage1_key(variant_config(base, v, f, s)) for v in ("tagi", "tagi_no_kl", "tagi_no_ins",
            "tagi_no_fusion", "tagi_no_hypernet") for f in ("def", "def+2pos") for s in (None, 7)}
    assert len({keys[(v, "def", s)] for v in ("tagi", "tagi_no_kl", "tagi_no_ins") for s in (None, 7)}) == 1
    assert len({keys[(v, "def", None)] for v in ("tagi", "tagi_no_fusion", "tagi_no_hypernet")}) == 3
    assert keys[("tagi", "def", None)] != keys[("tagi", "def+2pos", None)]

    cfg = tiny_test_config(train={"pretrain_steps": 2, "meta_steps": 1, "checkpoint_every": 0},
                           loss={"lambda_kl": 0.0, "lambda_ins": 0.0})
    shared = tmp_path / "stage1" / "key"
    first = run_with_shared_base(warm_run, tmp_path / "a")
    run_meta_training(cfg, first, on_ray=False, shared_stage1=shared)
    assert (shared / "hypernet.safetensors").is_file() and (first.root / "meta" / "pretrain").is_dir()
    second = run_with_shared_base(warm_run, tmp_path / "b")
    capsys.readouterr()
    run_meta_training(cfg, second, on_ray=False, shared_stage1=shared)
    assert f"stage pretrain shared from {shared}" in capsys.readouterr().out
    assert not (second.root / "meta" / "pretrain").exists() and (second.root / "hypernet" / "hypernet.safetensors").is_file()
