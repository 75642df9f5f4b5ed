"""Per-row decoding in one batched generation: greedy by default, seeded sampling reproducible
alone and inside a mixed batch, different seeds differ, stop strings honoured."""
import pytest
import torch

from tagi_ray.config import load_config
from tagi_ray.decoding import GREEDY, Decoding, cut_at_stop
from tagi_ray.models import build_tiny
from tagi_ray.serving import AdapterFactory, generate_mixed
from tagi_ray.tagi import TagiModel


@pytest.fixture(scope="module")
def served():
    cfg = load_config(overrides=["model.name=tiny-llama", "model.arch=llama"])
    torch.manual_seed(0)
    bundle = build_tiny(cfg.model, "llama")
    model = TagiModel(bundle, cfg.lora, cfg.hypernet, cfg.instruction).eval()
    with torch.no_grad():
        for p in model.hypernet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    factory = AdapterFactory(model, bundle.tokenizer, cfg, "test")
    entries = [factory.create(f"Task {i}: rewrite the words.") for i in range(3)]
    return model, bundle.tokenizer, cfg, entries


def run(served, rows: list[tuple[int, str, Decoding]], n: int = 16) -> list[str]:
    model, tok, cfg, entries = served
    return generate_mixed(model, tok, cfg, [entries[a] for a, _, _ in rows], [x for _, x, _ in rows],
                          [n] * len(rows), [d for _, _, d in rows])


def test_greedy_is_the_default(served):
    model, tok, cfg, entries = served
    plain = generate_mixed(model, tok, cfg, entries[:2], ["red green", "one two"], [12, 12])
    assert plain == run(served, [(0, "red green", GREEDY), (1, "one two", GREEDY)], 12)


def test_a_seeded_row_gives_the_same_text_alone_and_in_any_mixed_batch(served):
    hot = Decoding(temperature=1.0, seed=7)
    alone = run(served, [(0, "red green", hot)])[0]
    mixed = run(served, [(1, "one two", GREEDY), (0, "red green", hot), (2, "a b c", Decoding(temperature=0.7, seed=3)),
                         (1, "x", Decoding(temperature=1.0, top_k=5, top_p=0.9, seed=11))])
    assert mixed[1] == alone == run(served, [(0, "red green", hot)])[0]
    greedy = run(served, [(0, "red green", GREEDY)])[0]
    samples = {run(served, [(0, "red green", Decoding(temperature=1.0, seed=s))])[0] for s in range(6)}
    assert len(samples) > 1 and samples != {greedy}  # other seeds, other texts


def test_top_k_1_is_greedy_and_stop_strings_cut_the_text(served):
    greedy = run(served, [(0, "red green", GREEDY)])[0]
    assert run(served, [(0, "red green", Decoding(temperature=1.0, top_k=1, seed=5))])[0] == greedy
    assert len(greedy) >= 4
    stop = greedy[2:4]
    cut = run(served, [(0, "red green", Decoding(stop=(stop,))), (1, "one two", GREEDY)])
    assert cut[0] == greedy[:greedy.find(stop)] and stop not in cut[0]
    assert cut_at_stop("abc. def", [".", "x"]) == "abc" and cut_at_stop("abc", ["x"]) == "abc"
    with pytest.raises(ValueError, match="top_p"):
        Decoding(temperature=1.0, top_p=0.0)
