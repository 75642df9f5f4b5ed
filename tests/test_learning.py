"""The production meta-training loop (DeepSpeed, run in this process without Ray) learns on the
embedded suite, and the result is usable end to end."""
import json
import random
import statistics
from dataclasses import replace

import pytest
import torch
from peft import PeftModel

from tagi_ray.base_ref import resolve_base
from tagi_ray.checkpoint import load_checkpoint, save_checkpoint
from tagi_ray.cli import main
from tagi_ray.config import LossConfig, load_config
from tagi_ray.data.builtin import write_suite
from tagi_ray.data.export import build_table
from tagi_ray.data.tables import select_split, write_table
from tagi_ray.inference import generate_with_instructions
from tagi_ray.jobs.meta_train import run_meta_training
from tagi_ray.models import load_pretrained
from tagi_ray.run_dir import RunDir
from tagi_ray.training.examples import table_examples
from tagi_ray.training.meta import STEPS_LOG
from tagi_ray.training.steps import make_batch, tagi_step

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Base warm-up (80 steps), then 120 steps of `meta_worker_loop` with L_ce, in-process."""
    root = tmp_path_factory.mktemp("learn")
    cfg = load_config(overrides=["train.batch_size=8", "train.lr=3e-3", "train.prompt_tuning_lr=3e-3",
                                 "train.prompt_tuning_steps=80", "train.pretrain_steps=0", "train.meta_steps=120",
                                 "train.checkpoint_every=0", "loss.lambda_kl=0", "loss.lambda_ins=0",
                                 "ray.cpus_per_worker=2"])
    table, errors = build_table(write_suite(root / "suite", seed=0, n_instances=24), ("train", "test"), 24, 8)
    assert not errors
    run = RunDir(root / "run")
    write_table(table, run.table)
    ckpt = run_meta_training(cfg, run, on_ray=False)
    model, tokenizer, _ = load_checkpoint(ckpt)
    history = {"prompt_tuning": json.loads((run.base / "prompt_tuning.json").read_text())["history"],
               "meta": [json.loads(x) for x in (run.root / "meta" / "meta_log" / STEPS_LOG).read_text().splitlines()]}
    return model, tokenizer, cfg, table, ckpt, history


def test_training_loss_falls_by_half(trained):
    *_, history = trained
    losses = [r["loss"] for r in history["prompt_tuning"] + history["meta"]]
    first, last = statistics.mean(losses[:5]), statistics.mean(losses[-10:])
    print(f"loss {first:.3f} -> {last:.3f}")
    assert last <= 0.5 * first
    meta = [r["loss"] for r in history["meta"]]
    assert [r["step"] for r in history["meta"]] == list(range(1, 121))  # every step of the production loop
    assert statistics.mean(meta[-10:]) < statistics.mean(meta[:10])  # the hypernetwork stage itself learns


def test_adapters_depend_on_the_instruction(trained):
    model, tokenizer, cfg, table, _, _ = trained
    train = table_examples(select_split(table, "train"), 2)
    tasks = sorted({e.task for e in train})
    by_task = {t: [e for e in train if e.task == t] for t in tasks}
    inputs = [e.source for e in by_task[tasks[0]]][:12]
    # same inputs, different instructions, adapters only (fusion off) -> different outputs
    outs = {t: generate_with_instructions(model, tokenizer, cfg.model, [by_task[t][0].instruction] * len(inputs),
                                          inputs, 16, fuse=False) for t in tasks[:4]}
    differing = sum(len({outs[t][i] for t in outs}) > 1 for i in range(len(inputs)))
    assert differing >= len(inputs) // 2, outs
    # and the hypernetwork reads the instruction: the loss with each example's own instruction is
    # lower than with instructions shuffled across the batch
    rng = random.Random(0)
    ce_only = LossConfig(lambda_kl=0.0, lambda_ins=0.0)
    matched, shuffled = [], []
    with torch.no_grad():
        for _ in range(6):
            batch = rng.sample(train, 16)
            instructions = [e.instruction for e in batch]
            rng.shuffle(instructions)
            wrong = [replace(e, instruction=i) for e, i in zip(batch, instructions)]
            for examples, sink in ((batch, matched), (wrong, shuffled)):
                b = make_batch(model, tokenizer, examples, cfg.model, with_prompt=False)
                sink.append(float(tagi_step(model, b, ce_only)["loss"]))
    print(f"loss with own instruction {statistics.mean(matched):.3f}, shuffled {statistics.mean(shuffled):.3f}")
    assert statistics.mean(matched) < statistics.mean(shuffled) - 0.05


def test_checkpoint_round_trip_and_export_adapter_cli(trained, tmp_path):
    trained_model, trained_tok, cfg, table, ckpt, _ = trained
    # the standalone export holds exactly the hypernetwork DeepSpeed trained (weights and the
    # input standardisation buffers), as the last checkpoint of the training loop saved it
    (ds_state,) = (ckpt.parent / "meta" / "meta_checkpoints").glob("checkpoint_*/ds/mp_rank_00_model_states.pt")
    trained_state = {k.removeprefix("model.hypernet."): v
                     for k, v in torch.load(ds_state, map_location="cpu", weights_only=False)["module"].items()
                     if k.startswith("model.hypernet.")}
    exported = trained_model.hypernet.state_dict()
    assert set(trained_state) == set(exported) and {"in_mean", "in_std"} <= set(exported)
    for k, v in exported.items():
        torch.testing.assert_close(v, trained_state[k].to(v.dtype), msg=k)
    again = save_checkpoint(trained_model, trained_tok, cfg, tmp_path / "again")
    model, tok, cfg2 = load_checkpoint(again)
    assert cfg2 == cfg
    ex = table_examples(select_split(table, "test"), 2)[:4]
    a = generate_with_instructions(trained_model, trained_tok, cfg.model, [e.instruction for e in ex],
                                   [e.source for e in ex], 12)
    b = generate_with_instructions(model, tok, cfg.model, [e.instruction for e in ex], [e.source for e in ex], 12)
    assert a == b

    definition = "Reverse the order of the words."
    assert main(["export-adapter", "--checkpoint", str(ckpt), "--instruction", definition,
                 "--out", str(tmp_path / "adapter")]) == 0
    peft_model = PeftModel.from_pretrained(load_pretrained(str(resolve_base(ckpt))).model, str(tmp_path / "adapter")).eval()
    ids = tok(["Now complete the following example -\nInput: a b c.\nOutput: "], return_tensors="pt")
    labels = torch.tensor([[5, 6, 7, 1]])
    from tagi_ray.batching import instruction_batch
    from tagi_ray.data.prompts import instruction_text

    iids, imask, _ = instruction_batch(tok, True, [instruction_text(definition)], cfg.model.max_instruction_length)
    with torch.no_grad():
        adapter = model.generate_adapter(model.encode_instruction(iids, imask))
        ours, _ = model(ids.input_ids, ids.attention_mask, labels, adapter, fuse=False)
        theirs = peft_model(input_ids=ids.input_ids, attention_mask=ids.attention_mask, labels=labels).logits
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)


def test_ins_loss_alone_makes_generated_updates_approach_the_teachers(tmp_path):
    """L_ins only (L_ce, L_kl off): for 6 training tasks with real (packed) teachers, the
    hypernetwork's ΔW = B·A approaches each task's teacher's (cosine >= 0.9), L_ins falls >= 10x."""
    from tagi_ray.inference import fit_hypernet_input_stats, generate_adapters
    from tagi_ray.losses import delta_w_cosine
    from tagi_ray.training.base_warmup import build_model
    from tagi_ray.training.examples import random_batches
    from tagi_ray.training.loop import run_steps
    from tagi_ray.training.teachers import split_task_examples, train_pack

    cfg = load_config(overrides=["teachers.steps=30", "teachers.batch_per_task=4"])
    table, _ = build_table(write_suite(tmp_path / "suite", seed=0, n_instances=16), ("train",), 16, 8)
    torch.manual_seed(0)
    model, tok = build_model(cfg)
    examples = table_examples(select_split(table, "train"), 2)
    tasks = sorted({e.task for e in examples})[:6]
    examples = [e for e in examples if e.task in tasks]
    data = split_task_examples(examples, 2, 0)
    teacher = train_pack(model, tok, cfg, [data[t] for t in tasks], seed=0).bank.weights().detach()
    rows = {t: i for i, t in enumerate(tasks)}
    fit_hypernet_input_stats(model, tok, cfg.model, [e.instruction for e in examples])
    only_ins = LossConfig(lambda_ce=0.0, lambda_kl=0.0, lambda_ins=1.0)

    def step(batch):
        b = make_batch(model, tok, batch, cfg.model, with_prompt=False, task_ids=[rows[e.task] for e in batch])
        return tagi_step(model, b, only_ins, teacher)

    history = run_steps(step, list(model.hypernet.parameters()), random_batches(examples, 8, 0), 120, 3e-3)
    first, last = statistics.mean(h["loss_ins"] for h in history[:5]), statistics.mean(h["loss_ins"] for h in history[-5:])
    instruction = {t: next(e.instruction for e in examples if e.task == t) for t in tasks}
    generated = generate_adapters(model, tok, cfg.model.max_instruction_length, [instruction[t] for t in tasks])
    cosine = delta_w_cosine(generated.weights, teacher)  # (task, module)
    print(f"L_ins {first:.3f} -> {last:.4f}; cosine per task {[round(c, 3) for c in cosine.mean(1).tolist()]}")
    assert 0.5 < first < 2 and last <= first / 10  # starts at the order of L_ce, falls >= 10x
    assert float(cosine.min()) >= 0.9
