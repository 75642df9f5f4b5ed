"""AdapterGenerator deployment: instruction (+ examples) -> adapter, encoded once, persisted in
the shared adapter store, a bounded set kept resident; uploaded PEFT adapters join the same store."""
from __future__ import annotations

import asyncio
import io
import tarfile
import tempfile
from pathlib import Path

from ray import serve

from tagi_ray.serve.loading import load_for_serving
from tagi_ray.adapters import export_peft
from tagi_ray.base_ref import base_digest, resolve_base
from tagi_ray.peft_upload import UploadError, read_archive
from tagi_ray.adapter_store import AdapterStore, ResidentAdapters, default_store
from tagi_ray.serving import AdapterEntry, AdapterFactory, checkpoint_hash


@serve.deployment(max_ongoing_requests=64)
class AdapterGenerator:
    """Generates adapters and persists them in the shared AdapterStore, so every replica of
    either deployment (and a restarted one) knows every adapter."""

    def __init__(self, checkpoint: str, serve_overrides: dict | None = None):
        self.checkpoint = str(Path(checkpoint).resolve())
        self.model, self.tokenizer, self.cfg = load_for_serving(self.checkpoint, serve_overrides)
        ckpt_hash = checkpoint_hash(self.checkpoint)
        self.factory = AdapterFactory(self.model, self.tokenizer, self.cfg, ckpt_hash)
        store = AdapterStore(self.cfg.serve.adapter_store or default_store(ckpt_hash))
        self.adapters = ResidentAdapters(store, self.cfg.serve.adapter_cache_size)
        self.base_dir = resolve_base(self.checkpoint).resolve()
        self.base_sha256 = base_digest(self.base_dir)
        self.generated = 0
        self.uploaded = 0
        self._lock = asyncio.Lock()

    def _meta(self, entry: AdapterEntry, cached: bool) -> dict:
        return {"adapter_id": entry.adapter_id, "rank": self.cfg.lora.rank, "alpha": self.cfg.lora.alpha,
                "modules": entry.weights.names, "instruction_tokens": entry.instruction_tokens,
                "bytes": entry.nbytes(), "cached": cached}

    async def upload(self, data: bytes) -> dict:
        """A PEFT LoRA archive -> a served adapter in the shared store. Returns its metadata, or
        {"error": {"field", "msg"}} for a refused upload (checks: `peft_upload`)."""
        names = [self.cfg.model.name, str(self.base_dir), *self.cfg.serve.upload_base_names]
        try:
            files = read_archive(data, self.cfg.serve.max_upload_bytes)
            entry, config = await asyncio.to_thread(self.factory.from_peft, files, self.base_sha256, names)
        except UploadError as e:
            return {"error": {"field": e.field, "msg": str(e)}}
        cached = entry.adapter_id in self.adapters.store
        if not cached:
            self.uploaded += 1
            self.adapters.put(entry, {"source": "peft", "r": config["r"], "lora_alpha": config["lora_alpha"],
                                      "base_model_name_or_path": config.get("base_model_name_or_path")})
        return {**self._meta(entry, cached), "source": "peft", "uploaded_rank": int(config["r"])}

    async def _get_or_create(self, instruction: str, examples: list[dict]) -> tuple[AdapterEntry, bool]:
        aid = self.factory.adapter_id(instruction, examples)
        entry = self.adapters.get(aid)
        if entry is not None:
            return entry, True
        async with self._lock:  # one hypernetwork pass at a time; a concurrent twin waits and hits
            entry = self.adapters.get(aid)
            if entry is not None:
                return entry, True
            entry = await asyncio.to_thread(self.factory.create, instruction, examples)
            self.generated += 1
            self.adapters.put(entry, {"instruction": instruction, "examples": examples})
            return entry, False

    async def create(self, instruction: str, examples: list[dict]) -> dict:
        """Generate (or find, here or in the store) the adapter; returns its metadata."""
        entry, cached = await self._get_or_create(instruction, examples)
        return self._meta(entry, cached)

    async def get(self, adapter_id: str) -> AdapterEntry | None:
        """The adapter's tensors (resident or from the store); None for an unknown id."""
        return self.adapters.get(adapter_id)

    async def models(self) -> list[dict]:
        """OpenAI model objects: the base, then every adapter in the shared store (oldest first),
        the same from every replica."""
        base = {"id": self.cfg.model.name, "object": "model", "created": 0, "owned_by": "tagi-ray", "root": None}
        return [base] + [{"id": m["adapter_id"], "object": "model", "created": int(m["created"]),
                          "owned_by": "tagi-ray", "root": self.cfg.model.name, "parent": self.cfg.model.name}
                         for m in self.adapters.store.metas()]

    async def info(self, adapter_id: str) -> dict | None:
        entry = await self.get(adapter_id)
        return None if entry is None else self._meta(entry, True)

    async def peft_archive(self, adapter_id: str) -> bytes | None:
        """The adapter as a .tar.gz of a PEFT directory (adapter_config.json + safetensors)."""
        entry = await self.get(adapter_id)
        if entry is None:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            out = export_peft(entry.weights, self.model.targets, self.cfg.lora.rank, self.cfg.lora.alpha,
                              self.model.arch, str(self.base_dir), Path(tmp) / adapter_id,
                              metadata={"base_sha256": self.base_sha256})
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w:gz") as tar:
                tar.add(out, arcname=adapter_id)
        return buf.getvalue()

    def stats(self) -> dict:
        return {"generated": self.generated, "uploaded": self.uploaded, "cache": self.adapters.stats()}
