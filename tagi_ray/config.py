"""One config schema for every job: pydantic sections loaded from YAML presets.

`load_config("configs/tiny.yaml", overrides=["train.lr=1e-3"])` returns a validated
`TagiConfig`. Unknown keys, wrong types and out-of-range values raise `ConfigError`, one line
naming the dotted key, the bad value and what was expected (pydantic does the validating).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError,
                      field_validator, model_validator)


class ConfigError(ValueError):
    """A config value is unknown, of the wrong type or out of range; the message names it."""


Int = StrictInt
Bool = StrictBool
Str = StrictStr
PosInt = Annotated[StrictInt, Field(ge=1)]
NonNegInt = Annotated[StrictInt, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]


class Section(BaseModel):
    """A config section: unknown keys are errors, assignments are validated too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    """The frozen base model: a tiny random-init one built from these dims, or a hub name/path."""

    name: Str = "tiny-t5"  # "tiny-t5" | "tiny-llama" | "smollm2-135m" | a local path or cached hub id
    arch: Literal["auto", "t5", "llama"] = "auto"
    tokenizer: Str = "byt5"  # "byt5" (needs no files), "auto" (the model's own) or a local path
    d_model: PosInt = 64
    num_layers: PosInt = 2
    num_heads: PosInt = 4
    d_ff: PosInt = 128
    init_seed: Int = 0
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    max_source_length: PosInt = 256
    max_target_length: PosInt = 64
    max_instruction_length: PosInt = 512

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model: {self.d_model} is not divisible by num_heads={self.num_heads}")
        return self


class LoraConfig(Section):
    """LoRA shape shared by teachers and generated adapters (PEFT conventions)."""

    rank: PosInt = 32
    alpha: PosFloat = 32.0
    dropout: NonNegFloat = 0.0
    target_modules: Annotated[list[Str], Field(min_length=1)] = ["q", "v"]


class InstructionConfig(Section):
    """How the encoded instruction reaches the model: pooled into the hypernetwork's input, and
    (fusion) joined to what the decoder attends to (T5: encoder output; decoder-only: a cached
    key/value prefix). `fusion: false` is the paper's "w/o fusion"."""

    fusion: Bool = True
    # what encodes the instruction (for the hypernetwork and fusion): the frozen base, or the run's
    # tk_instruct baseline of the same format (the official TAGI code: the Tk-Instruct teacher)
    encoder: Literal["base", "tk_instruct"] = "base"
    # "first_last_mean": the mean of (first block output + last hidden state) over the tokens, the
    # official TAGI code's default "first_last_avg" (which also averages over padding)
    pooling: Literal["mean", "first_last_mean"] = "mean"


class HypernetConfig(Section):
    """The hypernetwork that maps a pooled instruction to LoRA A/B for every target module.
    `kind: shared_lora` is the paper's "w/o hypernetwork" ablation: one trained LoRA for every
    instruction (fusion still on)."""

    kind: Literal["mlp", "shared_lora"] = "mlp"
    hidden_dim: PosInt = 256
    embed_dim: PosInt = 32  # layer-depth and module-type embeddings
    init_scale: NonNegFloat = 1e-3


class LossConfig(Section):
    """L = lambda_ce * L_ce + lambda_kl * L_kl + lambda_ins * L_ins (paper: 1, 5, sigmoid).
    A zero weight switches a term off (the paper's ablations); `uses_*` say which are on."""

    lambda_ce: NonNegFloat = 1.0
    lambda_kl: NonNegFloat = 5.0
    lambda_ins: float | Literal["sigmoid"] = "sigmoid"  # a number >= 0 or "sigmoid" (= sigmoid(L_ins))
    temperature: PosFloat = 2.0  # of L_kl; the official TAGI scripts use 3

    @field_validator("lambda_ins", mode="before")
    @classmethod
    def _number_or_sigmoid(cls, v: Any) -> Any:
        if v == "sigmoid":
            return v
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError("is neither a number nor 'sigmoid'")
        if v < 0:
            raise ValueError("must be >= 0")
        return float(v)

    @property
    def uses_ce(self) -> bool:
        return self.lambda_ce > 0

    @property
    def uses_kl(self) -> bool:
        return self.lambda_kl > 0

    @property
    def uses_ins(self) -> bool:
        return self.lambda_ins == "sigmoid" or self.lambda_ins > 0

    @property
    def uses_teachers(self) -> bool:
        """L_kl and L_ins compare with a task's teacher; either one needs the teacher fleet."""
        return self.uses_kl or self.uses_ins

    @classmethod
    def ce_only(cls, temperature: float = 2.0) -> LossConfig:
        """L_ce alone (stage 1, validation loss)."""
        return cls(lambda_ce=1.0, lambda_kl=0.0, lambda_ins=0.0, temperature=temperature)


class TrainConfig(Section):
    """Optimisation settings shared by teacher training and meta-training."""

    seed: Int = 0
    lr: PosFloat = 1e-3
    weight_decay: NonNegFloat = 0.0
    batch_size: PosInt = 8
    grad_accum: PosInt = 1
    warmup_steps: NonNegInt = 0
    prompt_tuning_steps: NonNegInt = 200  # base warm-up, instruction in prompt
    prompt_tuning_lr: PosFloat = 1e-3
    pretrain_steps: NonNegInt = 100
    meta_steps: PosInt = 200
    zero_stage: Literal[0, 1, 2, 3] = 2
    checkpoint_every: NonNegInt = 50  # meta-training steps; 0 = only at the end
    cache_instructions: Bool = True  # encode each training task's instruction once per run (not per step)
    train_layer_norms: Bool = False  # also train the base's layer norms in meta-training (official TAGI: yes)
    pretrain_corpus: Str = ""  # stage-1 text (.txt lines / .jsonl "text"); "" = the training tasks' text
    fail_at_step: Annotated[StrictInt, Field(ge=-1)] = -1  # fault injection (tests): a worker fails once
    out_dir: Str = "runs/tiny"


class TeacherConfig(Section):
    """Per-task LoRA teachers, trained K at a time on one frozen base (a LoraBank).
    A teacher reads the same input as the TAGI student (the instance, no instruction), so L_kl
    compares logits of the same tokens."""

    steps: PosInt = 100  # optimizer steps per pack
    pack_size: PosInt = 16  # K tasks trained together
    lr: PosFloat = 3e-3
    batch_per_task: PosInt = 4  # examples of each task per step
    # a step's examples in chunks of this many, sorted by length, gradients accumulated (the same
    # gradient; less padding and activation memory when a pack's lengths differ); 0 = one batch
    micro_batch: NonNegInt = 0
    # and/or in chunks of at most this many padded tokens (rows × the chunk's longest, source +
    # target): a worker's activation memory no longer follows the longest tasks of its packs; 0 = off
    micro_batch_tokens: NonNegInt = 0
    held_back: PosInt = 8  # training instances per task held back from the teacher, to score it
    eval_batch_size: PosInt = 32  # held-back instances per forward when scoring teachers
    # L_kl: each teacher's distributions on its task's instances stored once as the top k
    # log-probs (teacher_logits.py); 0 = run the teachers at every meta step
    logits_topk: NonNegInt = 64
    # meta-training keeps at most this many teachers (weights + stored logits) in a worker's memory,
    # loading the others on demand (TeacherStore): memory flat in the fleet size; >= the tasks of a batch
    resident: PosInt = 64
    # a job trains at most this many packs per worker in one worker group, then starts a fresh
    # group for the rest (plan_runs): a worker's peak memory does not grow with the fleet; 0 = one group
    packs_per_worker: NonNegInt = 8
    tasks: list[Str] = []  # only these training tasks ([] = all)
    max_tasks: NonNegInt = 0  # 0 = every (selected) training task
    # fault injection, for tests of resumption: a worker raises after writing this many teachers
    # (-1 = off); the named task's loss is made NaN ("" = off)
    fail_after_tasks: Annotated[StrictInt, Field(ge=-1)] = -1
    inject_nan_task: Str = ""


class BaselineConfig(Section):
    """The baselines TAGI is compared with, each trained on the same training tasks with the
    instruction in the prompt (Tk-Instruct's format): `tk_instruct` fine-tunes the whole base,
    `tk_instruct_lora` one multi-task LoRA of the TAGI rank; `oracle` is a LoRA per held-out
    task trained on that task's own instances (2-fold: each instance is scored by the LoRA of
    the other fold). Steps 0 = `train.meta_steps` (the same budget class as TAGI)."""

    tk_instruct_steps: NonNegInt = 0
    tk_instruct_lr: PosFloat = 1e-4
    tk_instruct_lora_steps: NonNegInt = 0
    tk_instruct_lora_lr: PosFloat = 1e-3
    oracle_steps: NonNegInt = 0  # 0 = teachers.steps (the teachers' recipe)
    # tk_instruct / tk_instruct_lora: a step's train.batch_size examples in length-sorted chunks of
    # this many, gradients accumulated (the same gradient, a chunk's activations); 0 = one batch
    micro_batch: NonNegInt = 0
    methods: list[Literal["tk_instruct", "tk_instruct_lora", "oracle"]] = ["tk_instruct", "tk_instruct_lora", "oracle"]


class DataConfig(Section):
    """Where tasks come from and how prompts are built (Tk-Instruct formats)."""

    source: Str = "builtin"  # "builtin" (word rules), "lexicon" (word categories) or an SNI-layout directory
    builtin_seed: Int = 0
    builtin_tasks: NonNegInt = 0  # source builtin: training tasks (0 = the standard 46; more are generated)
    prompt: Str = "def+2pos"  # "def" or "def+<k>pos"
    max_instances_per_task: PosInt = 64
    max_eval_instances: PosInt = 100  # first N of each test task
    val_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1
    seed: Int = 0

    @field_validator("prompt")
    @classmethod
    def _known_format(cls, v: str) -> str:
        from tagi_ray.data.prompts import parse_prompt_format

        parse_prompt_format(v)
        return v


class RayConfig(Section):
    """Ray scaling: workers and resources per worker; the cluster address and storage."""

    address: Str = ""  # "" -> RAY_ADDRESS or a local cluster
    num_workers: PosInt = 2
    use_gpu: Bool = False
    cpus_per_worker: NonNegFloat = 1.0
    gpus_per_worker: NonNegFloat = 0.0
    storage_path: Str = ""  # "" -> <train.out_dir>/ray; or s3://..., NFS path
    max_failures: Annotated[StrictInt, Field(ge=-1)] = 0


class ServeConfig(Section):
    """Ray Serve: HTTP binding, adapter caches, cross-adapter batching, request limits and the
    start-up deadline. A request beyond a limit gets a 4xx naming the field. Replicas and
    resources per deployment: serve/config.yaml (Ray Serve's format), or sized to the cluster by
    `tagi serve`."""

    host: Str = "127.0.0.1"  # loopback unless configured
    port: PosInt = 8000
    adapter_cache_size: PosInt = 256  # adapters resident per replica (LRU); the rest load from the store
    # where generated adapters persist, shared by every replica (a path all nodes mount on a cluster);
    # "" = $TAGI_CACHE_DIR/adapters/<checkpoint hash>
    adapter_store: Str = ""
    max_batch_size: PosInt = 32  # instances per forward, across adapters
    batch_wait_timeout_s: NonNegFloat = 0.01
    default_max_new_tokens: PosInt = 32
    max_new_tokens_limit: PosInt = 128
    max_instruction_chars: PosInt = 8192
    max_examples: NonNegInt = 8
    max_inputs: PosInt = 64  # inputs per request
    max_input_chars: PosInt = 4096
    start_timeout_s: PosFloat = 60.0  # replicas not running by then: fail, naming what is missing
    # overload: requests in flight per InstanceInference replica, then queued per caller; past the
    # queue a 503 with Retry-After (Ray Serve's max_ongoing_requests / max_queued_requests)
    max_ongoing_requests: PosInt = 64
    max_queued_requests: PosInt = 128
    retry_after_s: NonNegFloat = 1.0
    chat_template: Str = ""  # Jinja chat template for a base whose tokenizer has none ("" = the tokenizer's)
    max_upload_bytes: PosInt = 32 * 1024 * 1024  # PEFT adapter archives (compressed and unpacked)
    # base_model_name_or_path values an uploaded PEFT adapter may name (besides model.name and the
    # base's path); an adapter carrying base_sha256 is checked by that hash instead
    upload_base_names: list[Str] = []

    @model_validator(mode="after")
    def _default_within_limit(self) -> ServeConfig:
        if self.default_max_new_tokens > self.max_new_tokens_limit:
            raise ValueError(f"default_max_new_tokens: {self.default_max_new_tokens} exceeds "
                             f"max_new_tokens_limit={self.max_new_tokens_limit}")
        return self


class TuneConfig(Section):
    """Ray Tune sweeps (`tagi tune`): trials, their resources, ASHA, validation tasks. The search
    space itself is a space YAML (tune/spaces/*.yaml), which may also set any config section.
    Each trial meta-trains with `workers_per_trial` Ray Train workers; validation loss
    (`val_loss`, L_ce of generated adapters on validation tasks) is reported every
    `train.checkpoint_every` meta steps, and ASHA stops weak trials at those reports."""

    name: Str = ""  # experiment name ("" = the space file's stem); <run>/ray/<name>, <run>/sweeps/<name>
    num_samples: PosInt = 1  # samples of the space (each grid combination)
    search: Literal["random", "optuna"] = "random"  # optuna: if installed
    seed: Int = 0  # the search algorithm's seed
    max_concurrent_trials: NonNegInt = 2  # 0 = as many as the cluster fits
    workers_per_trial: PosInt = 1  # ray.num_workers inside a trial
    cpus_per_worker: NonNegFloat = 0.9  # ray.cpus_per_worker inside a trial
    driver_cpus: PosFloat = 0.1  # the trial function itself
    grace_period: NonNegInt = 0  # meta steps before ASHA may stop (0 = checkpoint_every)
    reduction_factor: Annotated[float, Field(gt=1)] = 2.0
    val_tasks: list[Str] = []  # [] = a seeded data.val_fraction of the training tasks
    val_instances: PosInt = 8  # instances per validation task in val_loss


class ExperimentConfig(Section):
    """`tagi experiment`: the paper's comparison (Table 2) and ablations (Table 4), every TAGI
    variant retrained with one switch changed, per prompt format, as one Ray Tune grid (trial
    resources from `tune:`: driver_cpus, workers_per_trial, cpus_per_worker,
    max_concurrent_trials)."""

    variants: list[Literal["tagi", "tagi_no_fusion", "tagi_no_kl", "tagi_no_ins", "tagi_no_pretrain",
                           "tagi_no_hypernet"]] = ["tagi", "tagi_no_fusion", "tagi_no_kl", "tagi_no_ins",
                                                   "tagi_no_pretrain", "tagi_no_hypernet"]
    formats: list[Literal["def", "def+2pos"]] = ["def", "def+2pos"]
    # the ablation grid's budget (the issue allows a smaller one than the headline comparison): with
    # 0 or train.meta_steps, one table; else the ablations AND a full-TAGI reference train this many
    # meta steps, while the headline TAGI trains train.meta_steps like the baselines
    ablation_meta_steps: NonNegInt = 0


class TagiConfig(Section):
    """The whole config: one section per concern."""

    model: ModelConfig = ModelConfig()
    lora: LoraConfig = LoraConfig()
    instruction: InstructionConfig = InstructionConfig()
    hypernet: HypernetConfig = HypernetConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    teachers: TeacherConfig = TeacherConfig()
    baselines: BaselineConfig = BaselineConfig()
    data: DataConfig = DataConfig()
    ray: RayConfig = RayConfig()
    serve: ServeConfig = ServeConfig()
    tune: TuneConfig = TuneConfig()
    experiment: ExperimentConfig = ExperimentConfig()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


# ---- errors: one line per problem, named by dotted key ------------------------------------
_FIELD_PREFIX = re.compile(r"^(\w+): ")


def _describe(error: dict) -> str:
    loc = [str(p) for p in error["loc"] if not str(p).startswith(("function-", "literal[", "float", "int"))]
    key = ".".join(loc)
    msg = error["msg"].removeprefix("Value error, ")
    match = _FIELD_PREFIX.match(msg)
    if match and error["type"] == "value_error" and loc and len(loc) == 1:  # a section-level check names its field
        key, msg = f"{key}.{match.group(1)}", msg[match.end():]
        return f"{key}: {msg}"
    if error["type"] == "extra_forbidden":
        section: Any = TagiConfig
        for part in loc[:-1]:
            section = section.model_fields[part].annotation
        return f"unknown key {key!r} (allowed in {'.'.join(loc[:-1]) or 'top level'}: {sorted(section.model_fields)})"
    if error["type"] == "model_type":
        return f"{key}: expected a mapping (section), got {error['input']!r}"
    return f"{key or 'config'}: {error['input']!r}: {msg}"


def _summarise(exc: ValidationError) -> str:
    seen, lines = set(), []
    for error in exc.errors(include_url=False):
        line = _describe(error)
        key = line.split(":")[0]
        if key not in seen:  # a union reports one error per arm: keep the first
            seen.add(key)
            lines.append(line)
    return "; ".join(lines)


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
    try:
        node[parts[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError:
        node[parts[-1]] = raw


def _float_strings(data: Any) -> Any:
    """PyYAML reads '3e-4' (no dot) as a string; read number-like strings as numbers."""
    if isinstance(data, dict):
        return {k: _float_strings(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_float_strings(v) for v in data]
    if isinstance(data, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", data):
        return float(data)
    return data


# keys of configs recorded before 2026-12-03 (run directories, checkpoints) -> their new place
_MOVED = {("hypernet", "fusion"): ("instruction", "fusion"), ("hypernet", "pooling"): ("instruction", "pooling"),
          ("teachers", "holdout"): ("teachers", "held_back"), ("hypernet", "num_pos_examples"): None}


def _migrate(data: dict) -> dict:
    for (section, key), new in _MOVED.items():
        if isinstance(data.get(section), dict) and key in data[section]:
            value = data[section].pop(key)
            if new is not None:
                data.setdefault(new[0], {}).setdefault(new[1], value)
    return data


def config_from_dict(data: dict | None, overrides: list[str] | None = None) -> TagiConfig:
    """Validate a plain dict (e.g. parsed YAML) plus KEY=VALUE overrides into a TagiConfig."""
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"config must be a mapping, got {type(data).__name__}")
    data = _migrate(yaml.safe_load(yaml.safe_dump(dict(data or {}))))  # deep copy
    for override in overrides or []:
        _apply_override(data, override)
    try:
        return TagiConfig.model_validate(_float_strings(data))
    except ValidationError as exc:
        raise ConfigError(_summarise(exc)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TagiConfig:
    """Load a YAML preset (default: the embedded `configs/tiny.yaml`) and apply overrides."""
    path = Path(path) if path else default_config_path()
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    try:
        return config_from_dict(data, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def save_config(cfg: TagiConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (next to a run's outputs)."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def preset_path(name: str) -> Path:
    """A preset shipped at the project root: `configs/<name>.yaml`."""
    return Path(__file__).resolve().parent.parent / "configs" / f"{name}.yaml"


def default_config_path() -> Path:
    """The embedded default preset, `configs/tiny.yaml` at the project root."""
    return preset_path("tiny")
