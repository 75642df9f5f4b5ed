import pytest

from tagi_ray.metrics import compute_metrics, exact_match, grouped_metrics, normalize_answer, rouge_l


def test_normalisation_and_exact_match():
    assert normalize_answer("  The  Cat, sat!\n") == "the cat sat"
    assert exact_match("Yes.", "yes") == 1.0
    assert exact_match("yes no", "yes") == 0.0


def test_rouge_l_hand_worked():
    # LCS("the cat sat on the mat", "the cat lay on the mat") = the cat on the mat = 5 of 6 tokens
    assert rouge_l("the cat sat on the mat", "the cat lay on the mat") == pytest.approx(5 / 6)
    # stemming: "running dogs" vs "run dog" -> identical stems
    assert rouge_l("running dogs", "run dog") == pytest.approx(1.0)
    # P = 1/1, R = 1/3 -> F = 2PR/(P+R) = 0.5
    assert rouge_l("cat", "the black cat") == pytest.approx(0.5)
    assert rouge_l("", "anything") == 0.0


def test_max_over_references_and_means_times_100():
    preds = ["the cat", "blue"]
    refs = [["a dog", "the cat"], ["red", "dark blue sky"]]
    m = compute_metrics(preds, refs)
    # EM: 1 (second reference) + 0 -> 50; ROUGE-L: 1.0 + F(P=1, R=1/3)=0.5 -> 75
    assert m == {"exact_match": 50.0, "rougeL": 75.0, "n": 2}


def test_grouped_by_task_and_category():
    out = grouped_metrics(["a", "b", "c"], [["a"], ["x"], ["c"]], ["t1", "t1", "t2"], ["cat_a", "cat_a", "cat_b"])
    assert out["overall"]["exact_match"] == pytest.approx(200 / 3, abs=1e-3)
    assert out["per_task"]["t1"]["exact_match"] == 50.0 and out["per_task"]["t2"]["exact_match"] == 100.0
    assert out["per_category"]["cat_a"]["n"] == 2


def test_bad_references_are_refused():
    with pytest.raises(ValueError):
        compute_metrics(["a"], ["a"])  # a bare string is not a list of references
    with pytest.raises(ValueError):
        compute_metrics(["a", "b"], [["a"]])
