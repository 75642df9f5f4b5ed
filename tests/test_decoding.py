"""Per-row decoding in one batched generation: greedy by default, seeded sampling reproducible
alone and inside a mixed batch, different seeds differ, stop strings honoured, streamed rows
emit exactly their final text, a cancelled row stops."""
import pytest
import torch

from tagi_ray.config import load_config
from tagi_ray.data.prompts import instance_text
from tagi_ray.decoding import GREEDY, Decoding, RowStream, cut_at_stop
from tagi_ray.models import build_tiny
from tagi_ray.serving import AdapterFactory, complete_mixed, generate_mixed
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


def test_streamed_rows_emit_exactly_their_final_text_and_a_cancelled_row_stops(served):
    model, tok, cfg, entries = served
    greedy = run(served, [(0, "red green", GREEDY)], 16)[0]
    stop = greedy[3:5]
    pieces: dict[int, list[str]] = {0: [], 1: [], 2: []}
    streams = [RowStream(emit=pieces[i].append) for i in range(2)]
    calls = []
    streams.append(RowStream(emit=pieces[2].append, cancelled=lambda: len(calls.append(1) or calls) > 2))
    rows = [Decoding(), Decoding(stop=(stop,)), Decoding()]
    done = complete_mixed(model, tok, cfg, [entries[0], entries[0], entries[1]],
                          [instance_text("red green")] * 2 + [instance_text("one two")], [16, 16, 16], rows, streams)
    assert "".join(pieces[0]) == done[0].text == greedy and len(pieces[0]) > 1  # streamed piece by piece
    assert "".join(pieces[1]) == done[1].text == greedy[:greedy.find(stop)]  # never a piece of the stop string
    assert done[0].completion_tokens == 16 and done[0].finish_reason == "length" and done[1].finish_reason == "stop"
    assert done[2].completion_tokens < 16  # cancelled after its second step: the row ended there
    assert "".join(pieces[2]) == done[2].text
