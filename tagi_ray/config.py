"""One config schema for every job: nested dataclasses loaded from YAML presets.

`load_config("configs/tiny.yaml", overrides=["train.lr=1e-3"])` returns a validated
`TagiConfig`. Unknown keys, wrong types and out-of-range values raise `ConfigError`
naming the dotted key, the bad value and what was expected.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A config value is unknown, of the wrong type or out of range; the message names it."""


def _choices(*values: str) -> dict:
    return {"choices": values}


def _min(value: float, exclusive: bool = False) -> dict:
    return {"min": value, "min_exclusive": exclusive}


@dataclass
class ModelConfig:
    """The frozen base model: a tiny random-init one built from these dims, or a hub name/path."""

    name: str = "tiny-t5"  # "tiny-t5" | "tiny-llama" | a local path or hub id (never downloaded)
    arch: str = field(default="auto", metadata=_choices("auto", "t5", "llama"))
    tokenizer: str = "byt5"  # "byt5" (needs no files) or a local path
    d_model: int = field(default=64, metadata=_min(1))
    num_layers: int = field(default=2, metadata=_min(1))
    num_heads: int = field(default=4, metadata=_min(1))
    d_ff: int = field(default=128, metadata=_min(1))
    init_seed: int = 0
    dtype: str = field(default="float32", metadata=_choices("float32", "bfloat16", "float16"))
    max_source_length: int = field(default=256, metadata=_min(1))
    max_target_length: int = field(default=64, metadata=_min(1))
    max_instruction_length: int = field(default=512, metadata=_min(1))


@dataclass
class LoraConfig:
    """LoRA shape shared by teachers and generated adapters (PEFT conventions)."""

    rank: int = field(default=32, metadata=_min(1))
    alpha: float = field(default=32.0, metadata=_min(0, exclusive=True))
    dropout: float = field(default=0.0, metadata=_min(0))
    target_modules: list[str] = field(default_factory=lambda: ["q", "v"])


@dataclass
class HypernetConfig:
    """The hypernetwork that maps an encoded instruction to LoRA A/B for every target module."""

    hidden_dim: int = field(default=256, metadata=_min(1))
    pooling: str = field(default="mean", metadata=_choices("mean", "first_last_mean"))
    embed_dim: int = field(default=32, metadata=_min(1))  # layer-depth and module-type embeddings
    init_scale: float = field(default=1e-3, metadata=_min(0))
    fusion: bool = True  # instruction fusion into the decoder's cross-attention / prefix
    num_pos_examples: int = field(default=2, metadata=_min(0))


@dataclass
class LossConfig:
    """L = lambda_ce * L_ce + lambda_kl * L_kl + lambda_ins * L_ins (paper: 1, 5, sigmoid).
    A zero weight switches a term off (the paper's ablations)."""

    lambda_ce: float = field(default=1.0, metadata=_min(0))
    lambda_kl: float = field(default=5.0, metadata=_min(0))
    lambda_ins: Union[float, str] = "sigmoid"  # a number >= 0 or "sigmoid" (= sigmoid(L_ins))
    temperature: float = field(default=2.0, metadata=_min(0, exclusive=True))


@dataclass
class TrainConfig:
    """Optimisation settings shared by teacher training and meta-training."""

    seed: int = 0
    lr: float = field(default=1e-3, metadata=_min(0, exclusive=True))
    weight_decay: float = field(default=0.0, metadata=_min(0))
    batch_size: int = field(default=8, metadata=_min(1))
    grad_accum: int = field(default=1, metadata=_min(1))
    warmup_steps: int = field(default=0, metadata=_min(0))
    prompt_tuning_steps: int = field(default=200, metadata=_min(0))  # base warm-up, instruction in prompt
    prompt_tuning_lr: float = field(default=1e-3, metadata=_min(0, exclusive=True))
    pretrain_steps: int = field(default=100, metadata=_min(0))
    meta_steps: int = field(default=200, metadata=_min(0))
    zero_stage: int = field(default=2, metadata={"choices": (0, 1, 2, 3)})
    checkpoint_every: int = field(default=50, metadata=_min(0))  # meta-training steps; 0 = only at the end
    train_layer_norms: bool = False  # also train the base's layer norms during meta-training
    pretrain_corpus: str = ""  # stage-1 text (.txt lines / .jsonl "text"); "" = the training tasks' text
    fail_at_step: int = field(default=-1, metadata=_min(-1))  # fault injection (tests): a worker fails once
    out_dir: str = "runs/tiny"


@dataclass
class TeacherConfig:
    """Per-task LoRA teachers, trained K at a time on one frozen base (a LoraBank).
    A teacher reads the same input as the TAGI student (the instance, no instruction), so L_kl
    compares logits of the same tokens."""

    steps: int = field(default=100, metadata=_min(1))  # optimizer steps per pack
    pack_size: int = field(default=16, metadata=_min(1))  # K tasks trained together
    lr: float = field(default=3e-3, metadata=_min(0, exclusive=True))
    batch_per_task: int = field(default=4, metadata=_min(1))  # examples of each task per step
    holdout: int = field(default=8, metadata=_min(1))  # held-back instances per task for evaluation
    tasks: list[str] = field(default_factory=list)  # only these training tasks ([] = all)
    max_tasks: int = field(default=0, metadata=_min(0))  # 0 = every (selected) training task
    # fault injection, for tests of resumption: a worker raises after writing this many teachers
    # (-1 = off); the named task's loss is made NaN ("" = off)
    fail_after_tasks: int = field(default=-1, metadata=_min(-1))
    inject_nan_task: str = ""


@dataclass
class DataConfig:
    """Where tasks come from and how prompts are built (Tk-Instruct formats)."""

    source: str = "builtin"  # "builtin" or a directory in the SNI layout
    builtin_seed: int = 0
    prompt: str = "def+2pos"  # "def" or "def+<k>pos"
    max_instances_per_task: int = field(default=64, metadata=_min(1))
    max_eval_instances: int = field(default=100, metadata=_min(1))  # first N of each test task
    val_fraction: float = field(default=0.1, metadata=_min(0))
    seed: int = 0


@dataclass
class RayConfig:
    """Ray scaling: workers and resources per worker; the cluster address and storage."""

    address: str = ""  # "" -> RAY_ADDRESS or a local cluster
    num_workers: int = field(default=2, metadata=_min(1))
    use_gpu: bool = False
    cpus_per_worker: float = field(default=1.0, metadata=_min(0))
    gpus_per_worker: float = field(default=0.0, metadata=_min(0))
    storage_path: str = ""  # "" -> <train.out_dir>/ray; or s3://..., NFS path
    max_failures: int = field(default=0, metadata=_min(-1))


@dataclass
class ServeConfig:
    """Ray Serve: HTTP binding, adapter caches, cross-adapter batching and request limits.
    A request beyond a limit gets a 4xx naming the field; replicas and resources per deployment
    live in serve/config.yaml (Ray Serve's own format)."""

    host: str = "127.0.0.1"  # loopback unless configured
    port: int = field(default=8000, metadata=_min(1))
    adapter_cache_size: int = field(default=256, metadata=_min(1))  # adapters per replica (LRU)
    max_batch_size: int = field(default=32, metadata=_min(1))  # instances per forward, across adapters
    batch_wait_timeout_s: float = field(default=0.01, metadata=_min(0))
    default_max_new_tokens: int = field(default=32, metadata=_min(1))
    max_new_tokens_limit: int = field(default=128, metadata=_min(1))
    max_instruction_chars: int = field(default=8192, metadata=_min(1))
    max_examples: int = field(default=8, metadata=_min(0))
    max_inputs: int = field(default=64, metadata=_min(1))  # inputs per request
    max_input_chars: int = field(default=4096, metadata=_min(1))


@dataclass
class TuneConfig:
    """Ray Tune sweeps (`tagi tune`): trials, their resources, ASHA, validation tasks. The search
    space itself is a space YAML (tune/spaces/*.yaml), which may also set any config section.
    Each trial meta-trains with `workers_per_trial` Ray Train workers; validation loss
    (`val_loss`, L_ce of generated adapters on validation tasks) is reported every
    `train.checkpoint_every` meta steps, and ASHA stops weak trials at those reports."""

    name: str = ""  # experiment name ("" = the space file's stem); <run>/ray/<name>, <run>/sweeps/<name>
    num_samples: int = field(default=1, metadata=_min(1))  # samples of the space (each grid combination)
    search: str = field(default="random", metadata=_choices("random", "optuna"))  # optuna: if installed
    seed: int = 0  # the search algorithm's seed
    max_concurrent_trials: int = field(default=2, metadata=_min(0))  # 0 = as many as the cluster fits
    workers_per_trial: int = field(default=1, metadata=_min(1))  # ray.num_workers inside a trial
    cpus_per_worker: float = field(default=0.9, metadata=_min(0))  # ray.cpus_per_worker inside a trial
    driver_cpus: float = field(default=0.1, metadata=_min(0, exclusive=True))  # the trial function itself
    grace_period: int = field(default=0, metadata=_min(0))  # meta steps before ASHA may stop (0 = checkpoint_every)
    reduction_factor: float = field(default=2.0, metadata=_min(1, exclusive=True))
    val_tasks: list[str] = field(default_factory=list)  # [] = a seeded data.val_fraction of the training tasks
    val_instances: int = field(default=8, metadata=_min(1))  # instances per validation task in val_loss


@dataclass
class TagiConfig:
    """The whole config: one section per concern."""

    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    hypernet: HypernetConfig = field(default_factory=HypernetConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    teachers: TeacherConfig = field(default_factory=TeacherConfig)
    data: DataConfig = field(default_factory=DataConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against annotation `tp`; return it (ints accepted where floats are)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping (section), got {value!r}")
        return _build(tp, value, key)
    if origin in (Union, types.UnionType):
        for arm in typing.get_args(tp):
            try:
                return _coerce(value, arm, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} is not a valid {_type_name(tp)}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {typing.get_args(tp)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML reads "3e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported annotation {tp!r}")  # a schema bug, not user error


def _check_range(value: Any, meta: typing.Mapping, key: str) -> None:
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{key}: {value!r} is not one of {list(meta['choices'])}")
    if "min" in meta and isinstance(value, (int, float)):
        low = meta["min"]
        if value < low or (meta.get("min_exclusive") and value == low):
            op = ">" if meta.get("min_exclusive") else ">="
            raise ConfigError(f"{key}: {value!r} must be {op} {low}")


def _build(cls: type, data: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            raise ConfigError(f"unknown key {key!r} (allowed in {prefix or 'top level'}: {sorted(fields)})")
        coerced = _coerce(value, hints[name], key)
        _check_range(coerced, fields[name].metadata, key)
        kwargs[name] = coerced
    obj = cls(**kwargs)
    _validate_section(obj, prefix)
    return obj


def _validate_section(obj: Any, prefix: str) -> None:
    """Cross-field and free-form value checks that metadata cannot express."""
    if isinstance(obj, LossConfig):
        v = obj.lambda_ins
        if isinstance(v, str) and v != "sigmoid":
            raise ConfigError(f"{prefix}.lambda_ins: {v!r} is neither a number nor 'sigmoid'")
        if not isinstance(v, str) and v < 0:
            raise ConfigError(f"{prefix}.lambda_ins: {v!r} must be >= 0")
    if isinstance(obj, DataConfig):
        from tagi_ray.data.prompts import parse_prompt_format

        try:
            parse_prompt_format(obj.prompt)
        except ValueError as exc:
            raise ConfigError(f"{prefix}.prompt: {exc}") from None
        if obj.val_fraction >= 1:
            raise ConfigError(f"{prefix}.val_fraction: {obj.val_fraction!r} must be < 1")
    if isinstance(obj, ServeConfig) and obj.default_max_new_tokens > obj.max_new_tokens_limit:
        raise ConfigError(f"{prefix}.default_max_new_tokens: {obj.default_max_new_tokens} exceeds "
                          f"max_new_tokens_limit={obj.max_new_tokens_limit}")
    if isinstance(obj, LoraConfig) and not obj.target_modules:
        raise ConfigError(f"{prefix}.target_modules: must name at least one module")
    if isinstance(obj, ModelConfig) and obj.d_model % obj.num_heads:
        raise ConfigError(
            f"{prefix}.d_model: {obj.d_model} is not divisible by num_heads={obj.num_heads}"
        )


def _apply_override(data: dict, override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"override {override!r}: expected KEY=VALUE, e.g. train.lr=1e-3")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {part!r} is not a section")
    node[parts[-1]] = yaml.safe_load(raw)


def config_from_dict(data: dict | None, overrides: list[str] | None = None) -> TagiConfig:
    """Validate a plain dict (e.g. parsed YAML) plus KEY=VALUE overrides into a TagiConfig."""
    data = dict(data or {})
    if not isinstance(data, dict):
        raise ConfigError(f"config must be a mapping, got {type(data).__name__}")
    data = yaml.safe_load(yaml.safe_dump(data))  # deep copy
    for override in overrides or []:
        _apply_override(data, override)
    return _build(TagiConfig, data, "")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TagiConfig:
    """Load a YAML preset (default: the embedded `configs/tiny.yaml`) and apply overrides."""
    path = Path(path) if path else default_config_path()
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    try:
        return config_from_dict(data, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def save_config(cfg: TagiConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (next to a run's outputs)."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def default_config_path() -> Path:
    """The embedded default preset, `configs/tiny.yaml` at the project root."""
    return Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml"
