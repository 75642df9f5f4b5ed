"""Ray job: meta-train the hypernetwork with DeepSpeed on Ray Train, both stages, resumable.

    python jobs/meta_train.py --config configs/tiny.yaml [--out runs/x] [--address ...]
    tagi meta-train --config configs/tiny.yaml

Stage 1 ("pretrain") trains on plain text split in three; stage 2 ("meta") on the training
tasks against their teachers (run `tagi teachers` first when lambda_kl / lambda_ins are on).
Each stage is a TorchTrainer run with a stable name under the run's Ray storage, so a
resubmitted job resumes from the last checkpoint; a finished stage is skipped. The result is a
standalone TAGI checkpoint in `<out>/hypernet/`. `on_ray=False` runs the same worker loop in
this process (world size 1), with its checkpoints under `<out>/meta/<stage>_checkpoints/`.
"""
from __future__ import annotations

import random
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from tagi_ray.checkpoint import HYPERNET_FILE
from tagi_ray.config import TagiConfig
from tagi_ray.data.prompts import format_name, parse_prompt_format
from tagi_ray.data.tables import select_split, shuffle_rows, without_tasks
from tagi_ray.jobs.job_args import job_config, job_parser
from tagi_ray.run_dir import RunDir
from tagi_ray.stages import ensure_base, ensure_data, record_config
from tagi_ray.training.examples import table_examples
from tagi_ray.training.meta import EXPORT_DIR, meta_worker_loop
from tagi_ray.training.pretrain_text import split_texts, texts_from_corpus, texts_from_table
from tagi_ray.training.baselines import BaselinePaths
from tagi_ray.training.teacher_store import completed_tasks
from tagi_ray.training.worker import default_device, run_in_process


def meta_training_tasks(cfg: TagiConfig, table: pa.Table, run: RunDir, exclude: set[str] = frozenset()) -> pa.Table:
    """Stage-2 rows: training tasks (minus `exclude`, e.g. validation tasks); with teacher losses
    on, only tasks whose teacher is complete."""
    train = select_split(table, "train")
    names = set(train.column("task").to_pylist()) - set(exclude)
    if cfg.loss.uses_teachers:
        done = completed_tasks(run.teachers)
        if not done:
            raise FileNotFoundError(f"loss.lambda_kl/lambda_ins need teachers, but {run.teachers} has none: "
                                    f"run `tagi teachers` first (or set loss.lambda_kl=0 loss.lambda_ins=0)")
        missing = sorted(names - done)
        if missing:
            print(f"meta-train: {len(missing)} training tasks have no teacher and are left out: {missing[:5]}...")
        names &= done
    return train.filter(pc.is_in(train.column("task"), value_set=pa.array(sorted(names), pa.string())))


def instruction_encoder(cfg: TagiConfig, run: RunDir) -> str | None:
    """The model directory that encodes instructions (`instruction.encoder`), None for the base."""
    if cfg.instruction.encoder == "base":
        return None
    paths, fmt = BaselinePaths(run.baselines), format_name(parse_prompt_format(cfg.data.prompt))
    if not paths.done("tk_instruct", fmt):
        raise FileNotFoundError(f"instruction.encoder: tk_instruct needs the tk_instruct baseline of format {fmt!r} "
                                f"at {paths.tk_instruct(fmt)}: run `tagi baselines` first, with tk_instruct in baselines.methods")
    return str(paths.tk_instruct(fmt))


def _fit_stage(cfg: TagiConfig, run: RunDir, stage: str, base: Path, data: pa.Table, instructions: list[str],
               init: Path | None, teacher_tasks: list[str], name: str = "meta", callbacks: list | None = None,
               val_data: pa.Table | None = None, on_ray: bool = True) -> Path:
    """One stage as a TorchTrainer run named `<name>-<stage>` (or in this process); returns the
    exported standalone checkpoint. `callbacks`: Ray Train callbacks (a sweep's
    TuneReportCallback); `val_data`: validation rows (`val_loss` reported with every checkpoint)."""
    out = run.root / "meta" / stage
    if (out / HYPERNET_FILE).is_file():
        print(f"meta-train: stage {stage} already complete ({out})")
        return out
    config = {"cfg": cfg.to_dict(), "stage": stage, "base": str(base), "init_hypernet": str(init) if init else None,
              "instruction_encoder": instruction_encoder(cfg, run),
              "instructions": instructions, "teachers_dir": str(run.teachers), "teacher_tasks": teacher_tasks,
              "log_dir": str(run.root / "meta" / f"{stage}_log"), "val_data": val_data,
              # rows shuffled once (tasks mixed in every batch); each rank takes its slice
              "data": shuffle_rows(data, cfg.train.seed)}
    if on_ray:
        from tagi_ray.edge.cluster import connect, storage_path
        from tagi_ray.edge.train import fit_workers

        connect(cfg.ray.address)
        final = fit_workers(meta_worker_loop, config, cfg.ray, f"{name}-{stage}",  # stable: resubmission resumes
                            storage_path(cfg.ray.storage_path, str(run.ray_storage)), callbacks=callbacks)
    else:
        final = run_in_process(meta_worker_loop, config, run.root / "meta" / f"{stage}_checkpoints",
                               default_device(cfg.ray.use_gpu))
    with final.as_directory() as d:
        tmp = out.with_name(f".{stage}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(Path(d) / EXPORT_DIR, tmp)
        tmp.rename(out)
    return out


def run_meta_training(cfg: TagiConfig, run: RunDir, exclude_tasks: set[str] = frozenset(),
                      val_data: pa.Table | None = None, callbacks: list | None = None, name: str = "meta",
                      on_ray: bool = True, shared_stage1: Path | None = None) -> Path:
    """Both stages; writes and returns the final checkpoint `<run>/hypernet/`. `exclude_tasks`
    (validation tasks) are left out of training; `val_data` and `callbacks` go to stage 2 only
    (a sweep trial: validation loss to Ray Tune); `name` prefixes the Ray Train run names.
    `shared_stage1`: where runs whose stage 1 is identical share it (used when complete, else
    this run's stage 1 is published there)."""
    table = ensure_data(cfg, run)
    base = ensure_base(cfg, run, table)
    rng = random.Random(cfg.train.seed)
    tasks = meta_training_tasks(cfg, table, run, exclude_tasks)
    names = sorted(set(tasks.column("task").to_pylist()))
    instructions = sorted({e.instruction for e in table_examples(tasks, parse_prompt_format(cfg.data.prompt))})
    stage1 = None
    if cfg.train.pretrain_steps:  # the input standardisation is fitted here, on both stages' instructions
        texts = texts_from_corpus(cfg.train.pretrain_corpus) if cfg.train.pretrain_corpus \
            else texts_from_table(without_tasks(table, exclude_tasks))
        fragments = [e.instruction for e in split_texts(rng.sample(texts, min(512, len(texts))), rng)]
        if shared_stage1 is not None and (shared_stage1 / HYPERNET_FILE).is_file():
            print(f"meta-train: stage pretrain shared from {shared_stage1}")
            stage1 = shared_stage1
        else:
            stage1 = _fit_stage(cfg, run, "pretrain", base, pa.table({"text": texts}), fragments + instructions,
                                None, [], name, on_ray=on_ray)
            if shared_stage1 is not None and not shared_stage1.exists():
                tmp = shared_stage1.with_name(f".{shared_stage1.name}.tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(stage1, tmp)
                tmp.rename(shared_stage1)
    final = _fit_stage(cfg, run, "meta", base, tasks, instructions, stage1, names if cfg.loss.uses_teachers else [],
                       name, callbacks, val_data, on_ray)
    if not (run.hypernet / HYPERNET_FILE).is_file():
        shutil.copytree(final, run.hypernet)
    print(f"meta-train: checkpoint -> {run.hypernet}")
    return run.hypernet


def main(argv: list[str] | None = None) -> int:
    cfg, run = job_config(job_parser(__doc__.split("\n")[0], prog="tagi meta-train").parse_args(argv))
    record_config(cfg, run)
    run_meta_training(cfg, run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
