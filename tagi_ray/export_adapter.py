"""`tagi export-adapter`: instruction (+ examples) -> generated adapter -> PEFT directory."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tagi_ray.adapters import export_peft
from tagi_ray.base_ref import base_digest, resolve_base
from tagi_ray.checkpoint import load_checkpoint
from tagi_ray.data.prompts import instruction_text
from tagi_ray.inference import generate_adapters


def export_generated_adapter(checkpoint: str | Path, instruction: str, out_dir: str | Path,
                             examples: Sequence[dict] = ()) -> Path:
    """Generate the adapter for one instruction and write it as a PEFT adapter directory whose
    base_model_name_or_path is the checkpoint's base (its content hash in the metadata)."""
    model, tokenizer, cfg = load_checkpoint(checkpoint)
    text = instruction_text(instruction, list(examples), len(examples))
    adapter = generate_adapters(model, tokenizer, cfg.model.max_instruction_length, [text]).weights
    base = resolve_base(checkpoint).resolve()
    return export_peft(adapter, model.targets, cfg.lora.rank, cfg.lora.alpha, model.arch, str(base), out_dir,
                       metadata={"instruction": json.dumps(text), "base_sha256": base_digest(base)})
