"""Meta-training speed-ups change nothing but speed: label-only logits, instructions encoded
once (InstructionCache), stored teacher top-k logits (k = vocabulary: the same L_kl), chunked
teacher evaluation."""
import pytest
import torch

from tagi_ray.config import load_config
from tagi_ray.lora import LoraWeights
from tagi_ray.models import build_tiny
from tagi_ray.tagi import TagiModel
from tagi_ray.training.examples import Example
from tagi_ray.training.meta import MetaObjective, instruction_cache
from tagi_ray.training.steps import make_batch
from tagi_ray.training.teacher_logits import compute_topk, gather_topk, load_topk, save_topk
from tagi_ray.training.teacher_store import TeacherStore
from tagi_ray.training.teachers import TaskData, evaluate_pack, held_back_loss

TASKS = {"t0": "Reverse the words of the sentence.", "t1": "Return the last word.", "t2": "Spell it out."}
INPUTS = ["the quick brown fox", "hello there", "jumps over the lazy dog", "abc def", "one two three"]


def examples() -> list[Example]:
    out = []
    for t, instruction in TASKS.items():
        for i, text in enumerate(INPUTS):
            out.append(Example(task=t, category="c", id=f"{t}-{i}", instruction=instruction,
                               source=f"Input: {text}\nOutput: ", target=" ".join(text.split()[::-1]),
                               outputs=(text,)))
    return out


def setup(arch: str, **overrides):
    sets = [f"{k}={v}" for k, v in overrides.items()]
    cfg = load_config(overrides=["model.max_target_length=16", "model.max_source_length=32", *sets])
    torch.manual_seed(0)
    bundle = build_tiny(cfg.model, arch)
    model = TagiModel(bundle, cfg.lora, cfg.hypernet, cfg.instruction).double().eval()
    with torch.no_grad():  # a hypernetwork whose adapters move the logits
        for p in model.hypernet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    g = torch.Generator().manual_seed(1)
    teachers = LoraWeights({t.name: torch.randn(3, model.lora.rank, t.in_features, generator=g).double() * 0.3
                            for t in model.targets},
                           {t.name: torch.randn(3, t.out_features, model.lora.rank, generator=g).double() * 0.3
                            for t in model.targets})
    return cfg, model, bundle.tokenizer, teachers


@pytest.mark.parametrize("arch", ["t5", "llama"])
def test_label_logits_are_forward_at_the_scored_positions(arch):
    cfg, model, tok, teachers = setup(arch)
    batch = make_batch(model, tok, examples()[:6], cfg.model, with_prompt=False, task_ids=[0, 0, 1, 1, 2, 2])
    with torch.no_grad():
        full, labels = model(batch.input_ids, batch.attention_mask, batch.labels, teachers, batch.task_ids, fuse=False)
        logits, kept, rows = model.label_logits(batch.input_ids, batch.attention_mask, batch.labels, teachers,
                                                batch.task_ids, fuse=False)
    torch.testing.assert_close(logits, full[labels != -100])
    assert torch.equal(kept, labels[labels != -100]) and torch.equal(rows, (labels != -100).nonzero()[:, 0])


@pytest.mark.parametrize("arch", ["t5", "llama"])
def test_cached_instructions_and_stored_teacher_logits_give_the_live_loss(arch, tmp_path):
    cfg, model, tok, teachers = setup(arch, **{"loss.lambda_ins": 0.5})
    cfg.teachers.logits_topk = model.base.config.vocab_size  # k = vocabulary: nothing dropped
    rows = {t: i for i, t in enumerate(TASKS)}
    data = examples()
    for t, i in rows.items():  # store each teacher's distributions, read them back
        mine = [e for e in data if e.task == t]
        (tmp_path / t).mkdir()
        save_topk(tmp_path / t, cfg, [e.id for e in mine], *compute_topk(model, tok, cfg, mine, teachers.select([i])))
    store = load_topk(tmp_path, list(TASKS), cfg)
    live = MetaObjective(model, tok, cfg, cfg.loss, TeacherStore.in_memory(teachers, rows))
    fast = MetaObjective(model, tok, cfg, cfg.loss, TeacherStore.in_memory(teachers, rows, store),
                         instruction_cache(model, tok, cfg))
    batch = [data[i] for i in (0, 7, 3, 12, 5, 6)]  # mixed tasks, instruction rows out of order
    with torch.no_grad():
        a, b = live(batch), fast(batch)
        b2 = fast(batch)  # second time: every instruction from the cache
    assert fast.instructions.misses == 3 and fast.instructions.hits == 3  # per distinct instruction of a batch
    for key in ("loss", "loss_ce", "loss_kl", "loss_ins"):
        assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-5, abs=1e-9), key  # float32 KL sums
        assert float(b[key]) == pytest.approx(float(b2[key]), rel=1e-9), key
    assert a["loss_kl"] > 1e-3  # the teachers differ from the students: the comparison means something


def test_stored_logits_are_used_only_when_they_match_the_run(tmp_path):
    cfg, model, tok, teachers = setup("llama")
    data = [e for e in examples() if e.task == "t0"]
    (tmp_path / "t0").mkdir()
    full_k = model.base.config.vocab_size
    cfg.teachers.logits_topk = 8
    save_topk(tmp_path / "t0", cfg, [e.id for e in data], *compute_topk(model, tok, cfg, data, teachers.select([0])))
    assert load_topk(tmp_path, ["t0"], cfg)["t0-1"][0].shape[1] == 8
    assert load_topk(tmp_path, ["t0", "t1"], cfg) is None  # a teacher without a file: live teachers
    cfg.loss.temperature = 3.0
    assert load_topk(tmp_path, ["t0"], cfg) is None  # stored at another temperature
    cfg.loss.temperature, cfg.teachers.logits_topk = 2.0, full_k
    assert load_topk(tmp_path, ["t0"], cfg) is None  # stored with another k
    with pytest.raises(KeyError, match="t1-0"):
        gather_topk({}, [examples()[5]])


def test_chunked_teacher_evaluation_equals_one_batch():
    cfg, model, tok, teachers = setup("llama")
    data = examples()
    tasks = [TaskData(t, [], [e for e in data if e.task == t]) for t in TASKS]
    cfg.teachers.eval_batch_size = 1000
    whole = evaluate_pack(model, tok, cfg, tasks, teachers), held_back_loss(model, tok, cfg, tasks, teachers)
    cfg.teachers.eval_batch_size = 4  # chunks cut across tasks
    chunked = evaluate_pack(model, tok, cfg, tasks, teachers), held_back_loss(model, tok, cfg, tasks, teachers)
    assert whole[0] == chunked[0]
    assert whole[1] == pytest.approx(chunked[1], rel=1e-9)
    # an oracle fold's examples carry their task's name, not the fold's: scored all the same
    folds = [TaskData(f"{t.name}__fold0", [], t.held_back) for t in tasks]
    by_fold = evaluate_pack(model, tok, cfg, folds, teachers)
    assert [m["n"] for m in by_fold.values()] == [len(t.held_back) for t in tasks]
    assert list(by_fold.values()) == list(chunked[0].values())


def test_teachers_read_lazily_give_the_eager_loss_with_bounded_memory(tmp_path):
    """TeacherStore: a worker holding at most 2 of 3 teachers (weights + stored logits), loading
    the rest on demand, computes exactly the loss of one holding the whole fleet."""
    from functools import partial

    from tagi_ray.training.teacher_store import load_teacher_bank, write_teacher

    cfg, model, tok, teachers = setup("llama", **{"loss.lambda_ins": 0.5, "teachers.logits_topk": 16})
    model.float()
    data = examples()
    for i, t in enumerate(TASKS):
        mine = [e for e in data if e.task == t]
        own = teachers.select([i]).to(torch.float32)
        write_teacher(tmp_path, t, own, model.targets, cfg, model.arch, tmp_path / "base", {"task": t},
                      extra=partial(save_topk, cfg=cfg, ids=[e.id for e in mine],
                                    **dict(zip(("idx", "logp", "offsets"), compute_topk(model, tok, cfg, mine, own)))))
    eager_bank, eager_rows = load_teacher_bank(tmp_path, list(TASKS), cfg.lora.rank, cfg.lora.alpha)
    lazy = TeacherStore.open(tmp_path, list(TASKS), cfg, resident=2)
    eager = MetaObjective(model, tok, cfg, cfg.loss, TeacherStore.in_memory(eager_bank, eager_rows,
                                                                            load_topk(tmp_path, list(TASKS), cfg)))
    student = MetaObjective(model, tok, cfg, cfg.loss, lazy)
    assert lazy.has_topk
    by_task = {t: [e for e in data if e.task == t] for t in TASKS}
    for a, b in [("t0", "t1"), ("t2", "t0"), ("t1", "t2"), ("t0", "t1")]:  # every batch evicts one teacher
        batch = by_task[a][:2] + by_task[b][:2]
        with torch.no_grad():
            x, y = eager(batch), student(batch)
        for key in ("loss", "loss_ce", "loss_kl", "loss_ins"):
            assert float(x[key]) == pytest.approx(float(y[key]), rel=1e-6), key
        assert len(lazy.resident_tasks) <= 2
    assert lazy.loads == 8 and lazy.hits == 8  # 2 loads per batch (LRU), each topk read a hit
    with pytest.raises(ValueError, match="teachers.resident >= 3"):
        lazy.bank(list(TASKS))
    with pytest.raises(FileNotFoundError, match="no complete teachers"):
        TeacherStore.open(tmp_path, ["t9"], cfg)


@pytest.mark.parametrize("arch", ["t5", "llama"])
def test_micro_batched_teacher_steps_give_the_one_batch_gradient(arch):
    """teachers.micro_batch: a packed step in length-sorted chunks, gradients accumulated, equals
    the step in one batch (and a non-finite task is dropped the same way)."""
    from tagi_ray.lora import LoraBank
    from tagi_ray.training.teachers import pack_backward

    cfg, model, tok, _ = setup(arch)
    data = examples()
    ids = [list(TASKS).index(e.task) for e in data]
    bank = LoraBank(model.targets, len(TASKS), cfg.lora.rank, seed=0).double()
    with torch.no_grad():
        for b in bank.B.values():
            b.normal_(0, 0.1)  # B = 0 at init would leave A without gradient

    def grads(micro: int, nan_row=None, tokens: int = 0) -> tuple[torch.Tensor, list[torch.Tensor], set]:
        cfg.teachers.micro_batch, cfg.teachers.micro_batch_tokens = micro, tokens
        bank.zero_grad(set_to_none=True)
        dead: set[int] = set()
        losses = pack_backward(model, tok, cfg, bank, data, ids, dead, nan_row)
        return losses, [p.grad.clone() for p in bank.parameters()], dead

    one_loss, one, _ = grads(0)
    for micro, tokens in ((1, 0), (4, 0), (7, 0), (0, 1), (0, 60), (0, 200), (3, 200)):
        loss, chunked, _ = grads(micro, tokens=tokens)
        torch.testing.assert_close(loss, one_loss)
        for a, b in zip(chunked, one):
            torch.testing.assert_close(a, b)
    l0, g0, d0 = grads(0, nan_row=1)
    lt, gt, dt = grads(0, nan_row=1, tokens=60)
    assert dt == d0 and torch.isnan(lt[1])
    l4, g4, d4 = grads(4, nan_row=1)
    assert d0 == d4 == {1} and torch.isnan(l4[1]) and torch.isfinite(l4[[0, 2]]).all()
    for a, b in zip(g4, g0):
        torch.testing.assert_close(a, b)


def test_length_chunks_bound_rows_and_padded_tokens():
    from tagi_ray.training.steps import length_chunks

    lengths = [5, 30, 10, 10, 50, 5, 20]
    assert length_chunks(lengths) == [[0, 1, 2, 3, 4, 5, 6]]  # no bound: one batch, as given
    assert length_chunks(lengths, max_rows=3) == [[0, 5, 2], [3, 6, 1], [4]]
    chunks = length_chunks(lengths, max_tokens=40)
    assert chunks == [[0, 5, 2, 3], [6], [1], [4]]  # 4 × 10 fits 40; 50 > 40 goes alone
    assert sorted(j for c in chunks for j in c) == list(range(7))
    assert all(len(c) * max(lengths[j] for j in c) <= 40 for c in chunks if len(c) > 1)
    assert length_chunks(lengths, max_rows=2, max_tokens=40) == [[0, 5], [2, 3], [6], [1], [4]]
    assert length_chunks([]) == []


def test_pooled_instructions_are_computed_once_and_shared_through_the_cache(tmp_path, monkeypatch):
    from tagi_ray.inference import fit_hypernet_input_stats

    cfg, model, tok, _ = setup("llama")
    texts = list(TASKS.values())
    cache = tmp_path / "pooled" / "key.safetensors"
    fit_hypernet_input_stats(model, tok, cfg.model, texts, cache=cache)
    mean, std = model.hypernet.in_mean.clone(), model.hypernet.in_std.clone()
    assert cache.is_file()
    with torch.no_grad():
        model.hypernet.in_mean.zero_()
    monkeypatch.setattr(model, "encode_instruction", lambda *a: (_ for _ in ()).throw(AssertionError("re-encoded")))
    fit_hypernet_input_stats(model, tok, cfg.model, texts, cache=cache)  # from the cache: no base forward
    torch.testing.assert_close(model.hypernet.in_mean, mean)
    torch.testing.assert_close(model.hypernet.in_std, std)
    shared = TagiModel(build_tiny(cfg.model.model_copy(), "llama"), cfg.lora,
                       cfg.hypernet.model_copy(update={"kind": "shared_lora"}), cfg.instruction)
    monkeypatch.setattr(shared, "encode_instruction", lambda *a: (_ for _ in ()).throw(AssertionError("encoded")))
    fit_hypernet_input_stats(shared, tok, cfg.model, texts)  # nothing to fit for the shared-LoRA ablation


@pytest.mark.parametrize("arch", ["t5", "llama"])
def test_prompt_micro_batches_give_the_batch_gradient(arch):
    """tk_instruct's step in length-sorted chunks (baselines.micro_batch) accumulates the same
    gradient as the whole batch at once: chunk losses weighted by their share of scored tokens."""
    from tagi_ray.training.steps import prompt_chunks, prompt_step

    cfg, model, tokenizer, _ = setup(arch)
    batch = examples()[::2]  # 8 examples of different lengths
    params = [p for p in model.base.parameters()]
    model.base.requires_grad_(True)

    def grads(size: int) -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        parts = prompt_chunks(model, tokenizer, cfg.model, size, "cpu")(batch)
        assert len(parts) == (-(-len(batch) // size) if size else 1)
        assert sum(w for _, w in parts) == pytest.approx(1.0)
        for part, weight in parts:
            (prompt_step(model, part)["loss"] * weight).backward()
        return [p.grad.clone() for p in params if p.grad is not None]

    whole, chunked = grads(0), grads(3)
    assert len(whole) == len(chunked) > 0
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b)
