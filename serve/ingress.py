"""The HTTP API (FastAPI behind Serve's proxy), composed from the two deployments' handles.

    POST /v1/adapters              {instruction, examples?} -> {adapter_id, rank, modules, cached}
    GET  /v1/adapters/{id}         metadata
    GET  /v1/adapters/{id}/peft    the adapter as a PEFT directory (.tar.gz)
    POST /v1/generate              {adapter_id | instruction (+examples), inputs, max_new_tokens?,
                                    temperature?, top_p?, top_k?, seed?, stop?}  (greedy by default)
    POST /v1/completions           OpenAI-style: model = adapter id, prompt = str | [str], the same
                                   sampling options; unsupported OpenAI options -> 422 naming them
    GET  /v1/models                the base and every adapter in the shared store (OpenAI list format)
    GET  /v1/stats                 batching and cache counters of both deployments
    GET  /healthz
"""

import asyncio
import time
import uuid

from fastapi import FastAPI, HTTPException
from fastapi.responses import Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from tagi_ray.decoding import GREEDY, Decoding
from tagi_ray.serve.schemas import (AdapterRequest, CompletionRequest, GenerateRequest, inputs_errors,
                                    instruction_errors, raise_if, stop_errors)
from tagi_ray.config import ServeConfig

app = FastAPI(title="tagi-ray", description="Instruction -> LoRA adapter (TAGI) and inference with it.")


@serve.deployment(max_ongoing_requests=256)
@serve.ingress(app)
class TagiIngress:
    def __init__(self, generator: DeploymentHandle, inference: DeploymentHandle, limits: dict):
        self.generator, self.inference = generator, inference
        self.limits = ServeConfig(**limits)

    async def _known(self, adapter_id: str, field: str = "adapter_id") -> dict:
        meta = await self.generator.info.remote(adapter_id)
        if meta is None:
            raise HTTPException(404, detail=[{"loc": ["body", field], "msg": f"{field}: unknown adapter "
                                              f"{adapter_id!r} (create it with POST /v1/adapters)", "type": "unknown"}])
        return meta

    async def _run(self, adapter_id: str, inputs: list[str], max_new: int | None,
                   decoding: Decoding = GREEDY) -> list[str]:
        n = max_new or self.limits.default_max_new_tokens
        return await asyncio.gather(*[self.inference.generate.remote(adapter_id, x, n, decoding) for x in inputs])

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.post("/v1/adapters")
    async def create_adapter(self, req: AdapterRequest) -> dict:
        raise_if(instruction_errors(req.instruction, req.examples, self.limits))
        return await self.generator.create.remote(req.instruction, [e.model_dump() for e in req.examples])

    @app.get("/v1/adapters/{adapter_id}")
    async def adapter_info(self, adapter_id: str) -> dict:
        return await self._known(adapter_id)

    @app.get("/v1/adapters/{adapter_id}/peft")
    async def adapter_peft(self, adapter_id: str) -> Response:
        await self._known(adapter_id)
        data = await self.generator.peft_archive.remote(adapter_id)
        return Response(data, media_type="application/gzip",
                        headers={"Content-Disposition": f'attachment; filename="{adapter_id}.tar.gz"'})

    @app.post("/v1/generate")
    async def generate(self, req: GenerateRequest) -> dict:
        if (req.adapter_id is None) == (req.instruction is None):
            raise_if([{"loc": ["body", "adapter_id"], "type": "missing",
                       "msg": "adapter_id: give exactly one of adapter_id or instruction"}])
        if req.adapter_id is not None and req.examples:
            raise_if([{"loc": ["body", "examples"], "type": "extra",
                       "msg": "examples: only with an instruction (an adapter id already includes them)"}])
        raise_if(instruction_errors(req.instruction, req.examples, self.limits)
                 + inputs_errors(req.inputs, req.max_new_tokens, self.limits) + stop_errors(req.stop))
        if req.adapter_id is not None:
            adapter_id = (await self._known(req.adapter_id))["adapter_id"]
        else:  # generated once, reused for every input of the request
            meta = await self.generator.create.remote(req.instruction, [e.model_dump() for e in req.examples])
            adapter_id = meta["adapter_id"]
        return {"adapter_id": adapter_id,
                "outputs": await self._run(adapter_id, req.inputs, req.max_new_tokens, req.decoding())}

    @app.post("/v1/completions")
    async def completions(self, req: CompletionRequest) -> dict:
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        raise_if(req.unsupported_errors() + stop_errors(req.stop)
                 + inputs_errors(prompts, req.max_tokens, self.limits, names=("prompt", "max_tokens")))
        await self._known(req.model, field="model")
        outputs = await self._run(req.model, prompts, req.max_tokens, req.decoding())
        return {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
                "model": req.model,
                "choices": [{"index": i, "text": text, "logprobs": None, "finish_reason": "stop"}
                            for i, text in enumerate(outputs)]}

    @app.get("/v1/models")
    async def models(self) -> dict:
        """OpenAI list format: the base and every adapter of the shared store."""
        return {"object": "list", "data": await self.generator.models.remote()}

    @app.get("/v1/stats")
    async def stats(self) -> dict:
        gen, inf = await asyncio.gather(self.generator.stats.remote(), self.inference.stats.remote())
        return {"adapter_generator": gen, "instance_inference": inf}
