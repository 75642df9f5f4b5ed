"""`tagi demo`: TAGI end to end on the real pretrained SmolLM2-135M, offline on CPU.

The preset `configs/demo.yaml`: the lexicon suite (word-category tasks; the held-out tasks name
categories no training task names). Starts a local Ray cluster, runs the pipeline (data ->
teachers -> baselines -> meta-training -> evaluation, each skipped when already complete in the
run directory), serves the trained checkpoint with Ray Serve on loopback, sends real HTTP
requests for a held-out task, prints the answers, the teachers' scores and the evaluation table,
and shuts down.

    tagi demo [--config configs/demo.yaml] [--out runs/demo] [--set KEY=VALUE]
"""
from __future__ import annotations

import socket
import sys
import time

import requests

from tagi_ray.config import preset_path
from tagi_ray.data.prompts import parse_prompt_format
from tagi_ray.data.tables import read_table, select_split
from tagi_ray.metrics import normalize_answer
from tagi_ray.edge.cluster import connect, stop
from tagi_ray.jobs.job_args import job_config, job_parser
from tagi_ray.jobs.pipeline import run_pipeline
from tagi_ray.jobs.evaluate import ORDER
from tagi_ray.report import methods_table, metrics_table
from tagi_ray.run_dir import RunDir
from tagi_ray.training.teacher_store import merge_manifest


def _port(preferred: int) -> int:
    """`preferred` if it is free on loopback, else any free port."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def held_out_requests(run: RunDir, num_pos: int, n_inputs: int = 8) -> tuple[dict, list[dict]]:
    """One held-out task (the first test task): its adapter request in the checkpoint's prompt
    format (`num_pos` positive examples) and a few of its instances."""
    test = select_split(read_table(run.table), "test").to_pylist()
    task = test[0]["task"]
    rows = [r for r in test if r["task"] == task][:n_inputs]
    examples = [{"input": e["input"], "output": e["output"]} for e in rows[0]["pos_examples"][:num_pos]]
    return {"instruction": rows[0]["definition"], "examples": examples}, rows


def ask_server(url: str, adapter_request: dict, rows: list[dict], max_new_tokens: int) -> list[str]:
    """Create the adapter, generate for the instances, print what came back; returns the outputs."""
    created = requests.post(f"{url}/v1/adapters", json=adapter_request, timeout=120).json()
    print(f"POST /v1/adapters -> {created['adapter_id']} (rank {created['rank']}, {len(created['modules'])} "
          f"modules, instruction {created['instruction_tokens']} tokens)")
    body = {"adapter_id": created["adapter_id"], "inputs": [r["input"] for r in rows],
            "max_new_tokens": max_new_tokens}
    outputs = requests.post(f"{url}/v1/generate", json=body, timeout=120).json()["outputs"]
    correct = 0
    for row, out in zip(rows, outputs):
        ok = normalize_answer(out) in {normalize_answer(ref) for ref in row["outputs"]}
        correct += ok
        print(f"  input: {row['input']!r:44} answer: {out!r:16} reference: {row['outputs'][0]!r:14} "
              f"{'correct' if ok else 'wrong'}")
    print(f"  {correct}/{len(rows)} answered exactly right (SNI's exact match)")
    return outputs


def teacher_summary(run: RunDir) -> str:
    """One line: the teachers on their own tasks' held-back instances, against the base."""
    rows = [r for r in merge_manifest(run.teachers) if r.get("status") == "complete"]
    if not rows:
        return "teachers: none"

    def mean(key: str) -> float:
        return sum(r[key] for r in rows) / len(rows)

    return (f"teachers ({len(rows)}, one LoRA per training task) on their own tasks' held-back instances: "
            f"ROUGE-L {mean('rougeL'):.1f}, EM {mean('exact_match'):.1f} (the base without adapter: ROUGE-L "
            f"{mean('base_rougeL'):.1f}, EM {mean('base_exact_match'):.1f})")


def main(argv: list[str] | None = None) -> int:
    args = job_parser(__doc__.split("\n")[0], out_default="runs/demo", address=False,
                      prog="tagi demo").parse_args(argv)
    args.config = args.config or str(preset_path("demo"))
    cfg, run = job_config(args)
    start = time.time()

    from tagi_ray.serve.main import APP_NAME, start as start_serve

    connect(cfg.ray.address)
    try:
        results = run_pipeline(cfg, run)
        print("\n=== serving ===", flush=True)
        url = start_serve(str(run.hypernet), "127.0.0.1", _port(cfg.serve.port))
        adapter_request, rows = held_out_requests(run, parse_prompt_format(cfg.data.prompt))
        print(f"Ray Serve at {url}; held-out task {rows[0]['task']!r}:\n  instruction: "
              f"{adapter_request['instruction'][:200]!r}")
        ask_server(url, adapter_request, rows, cfg.model.max_target_length)
        stats = requests.get(f"{url}/v1/stats", timeout=30).json()
        print(f"served {stats['instance_inference']['instances']} instances in "
              f"{stats['instance_inference']['forward_batches']} forward batch(es)")
    finally:
        stop(APP_NAME)
    print("\n" + teacher_summary(run))
    for fmt, by_method in results["formats"].items():
        print(f"\n{fmt}: held-out ROUGE-L per category (x100)\n" + metrics_table(by_method, "per_category"))
    print("\nheld-out tasks, all methods (ROUGE-L x100, 95% CI; TAGI minus each method, paired)\n"
          + methods_table(results, ORDER))
    print(f"\nreport: {run.root / 'report.md'}\ndemo finished in {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
