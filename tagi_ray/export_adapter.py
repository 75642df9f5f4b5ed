"""`tagi export-adapter`: instruction (+ examples) -> generated adapter -> PEFT directory."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tagi_ray.adapters import export_peft
from tagi_ray.batching import instruction_batch
from tagi_ray.checkpoint import load_checkpoint
from tagi_ray.data.prompts import instruction_text


def export_generated_adapter(checkpoint: str | Path, instruction: str, out_dir: str | Path,
                             examples: Sequence[dict] = ()) -> Path:
    """Generate the adapter for one instruction and write it as a PEFT adapter directory whose
    base_model_name_or_path is the checkpoint's base."""
    model, tokenizer, cfg = load_checkpoint(checkpoint)
    text = instruction_text(instruction, list(examples), len(examples))
    ids, mask, _ = instruction_batch(tokenizer, model.is_encoder_decoder, [text], cfg.model.max_instruction_length)
    adapter = model.generate_adapter(model.encode_instruction(ids, mask))
    return export_peft(adapter, model.targets, cfg.lora.rank, cfg.lora.alpha, model.arch,
                       str(Path(checkpoint).resolve() / "base"), out_dir,
                       metadata={"instruction": json.dumps(text)})
