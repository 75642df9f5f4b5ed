"""The HTTP API (FastAPI behind Serve's proxy), composed from the two deployments' handles.

    POST /v1/adapters              {instruction, examples?} -> {adapter_id, rank, modules, cached}
    POST /v1/adapters/upload       body: a PEFT LoRA archive (tar, tar.gz or zip) -> {adapter_id, ...}
    GET  /v1/adapters/{id}         metadata
    GET  /v1/adapters/{id}/peft    the adapter as a PEFT directory (.tar.gz)
    POST /v1/generate              {adapter_id | instruction (+examples), inputs, max_new_tokens?,
                                    temperature?, top_p?, top_k?, seed?, stop?}  (greedy by default)
    POST /v1/completions           OpenAI: model = adapter id, prompt = str | [str], the same sampling
                                   options, stream; unsupported OpenAI options -> 422 naming them
    POST /v1/chat/completions      OpenAI chat: model = adapter id, or the adapter generated from
                                   `instruction` or the system message; stream; 422 without a template
    GET  /v1/models                the base and every adapter in the shared store (OpenAI list format)
    GET  /v1/stats                 batching and cache counters of both deployments
    GET  /healthz

Overload: past the deployments' max_ongoing_requests + max_queued_requests, Ray Serve answers
503 with Retry-After (serve.retry_after_s). Metrics per adapter and route: serve/metrics.py.
"""

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import Response, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from tagi_ray.chat import split_instruction
from tagi_ray.config import ServeConfig
from tagi_ray.data.prompts import instance_text
from tagi_ray.decoding import GREEDY, Decoding
from tagi_ray.serve.metrics import observe_request, observe_tokens
from tagi_ray.serve.schemas import (AdapterRequest, ChatRequest, CompletionRequest, GenerateRequest, inputs_errors,
                                    instruction_errors, raise_if, stop_errors)
from tagi_ray.serving import Completion

app = FastAPI(title="tagi-ray", description="Instruction -> LoRA adapter (TAGI) and inference with it.")


class RequestMetrics:
    """ASGI middleware: requests, status and latency (streams: to their last chunk) per route and
    adapter; a route handler names the adapter in `request.state.adapter_id`."""

    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        started, status = time.perf_counter(), [500]
        state = scope.setdefault("state", {})

        async def send_status(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.inner(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "-")
            observe_request(route, state.get("adapter_id", "-"), status[0], time.perf_counter() - started)


app.add_middleware(RequestMetrics)


def _route(request: Request) -> str:
    return getattr(request.scope.get("route"), "path", request.url.path)


def _usage(done: list[Completion]) -> dict:
    prompt, completion = sum(c.prompt_tokens for c in done), sum(c.completion_tokens for c in done)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


_END = object()  # a stream that ended before its first item


async def _first(stream):
    """The first item of a DeploymentResponseGenerator (raises its rejection, e.g. a full queue)."""
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return _END


def _cancel_all(streams: list) -> None:
    """Cancel every stream; one whose assignment failed re-raises its error on cancel (Ray 2.60)."""
    for s in streams:
        try:
            s.cancel()
        except Exception:
            pass


class _CancellingStream(StreamingResponse):
    """A StreamingResponse that runs `on_end` however the response ends, also when the client
    left before the body was first read (then the body generator never starts, and its own
    `finally` never runs)."""

    def __init__(self, content, on_end, **kwargs):
        super().__init__(content, **kwargs)
        self._on_end = on_end

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_end()


def _quiet(task: asyncio.Task) -> None:
    """Retrieve a cancelled pump's exception (RequestCancelledError) so asyncio does not log it."""
    if not task.cancelled():
        task.exception()


def _sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


@serve.deployment(max_ongoing_requests=256)
@serve.ingress(app)
class TagiIngress:
    def __init__(self, generator: DeploymentHandle, inference: DeploymentHandle, limits: dict, base_name: str = ""):
        self.generator, self.inference = generator, inference
        self.limits = ServeConfig(**limits)
        self.base_name = base_name

    async def _known(self, adapter_id: str, field: str = "adapter_id") -> dict:
        meta = await self.generator.info.remote(adapter_id)
        if meta is None:
            raise HTTPException(404, detail=[{"loc": ["body", field], "msg": f"{field}: unknown adapter "
                                              f"{adapter_id!r} (create it with POST /v1/adapters)", "type": "unknown"}])
        return meta

    async def _adapter(self, request: Request, adapter_id: str | None, instruction: str | None,
                       examples: list, field: str) -> str:
        """The id of a known adapter, or of the one generated (once, then cached) from the instruction."""
        if adapter_id is not None:
            adapter_id = (await self._known(adapter_id, field))["adapter_id"]
        else:
            adapter_id = (await self.generator.create.remote(instruction, [e.model_dump() for e in examples]))["adapter_id"]
        request.state.adapter_id = adapter_id
        return adapter_id

    async def _complete(self, request: Request, adapter_id: str, prompts: list[str], max_new: int | None,
                        decoding: Decoding = GREEDY) -> list[Completion]:
        n = max_new or self.limits.default_max_new_tokens
        done = await asyncio.gather(*[self.inference.complete.remote(adapter_id, p, n, decoding) for p in prompts])
        observe_tokens(_route(request), adapter_id, sum(c.prompt_tokens for c in done),
                       sum(c.completion_tokens for c in done))
        return done

    async def _stream(self, request: Request, adapter_id: str, prompts: list[str], max_new: int | None,
                      decoding: Decoding, chunk) -> StreamingResponse:
        """Server-sent events: `chunk(index, piece, finish_reason)` per new piece of each prompt's
        text (prompts interleaved as they are decoded), then `data: [DONE]`. Each prompt's first
        item is awaited before the 200 goes out, so a full InstanceInference queue is a 503 with
        Retry-After, as for plain requests, not a stream that ends early."""
        n = max_new or self.limits.default_max_new_tokens
        route = _route(request)
        streams = [self.inference.options(stream=True).complete_stream.remote(adapter_id, p, n, decoding)
                   for p in prompts]
        try:
            firsts = list(await asyncio.gather(*[_first(s) for s in streams], return_exceptions=True))
        except BaseException:  # this request was cancelled
            _cancel_all(streams)
            raise
        failed = [f for f in firsts if isinstance(f, BaseException)]
        if failed:  # e.g. a full queue (-> 503): the other prompts' rows are not left running
            _cancel_all(streams)
            raise failed[0]

        async def events() -> AsyncIterator[str]:
            merged: asyncio.Queue = asyncio.Queue()

            async def pump(i: int) -> None:
                try:
                    if firsts[i] is not _END:
                        await merged.put((i, firsts[i]))
                        async for item in streams[i]:
                            await merged.put((i, item))
                finally:
                    await merged.put((i, None))

            tasks = [asyncio.ensure_future(pump(i)) for i in range(len(prompts))]
            open_, tokens = len(prompts), [0, 0]
            try:
                while open_:
                    i, item = await merged.get()
                    if item is None:
                        open_ -= 1
                    elif isinstance(item, Completion):
                        tokens[0] += item.prompt_tokens
                        tokens[1] += item.completion_tokens
                        yield _sse(chunk(i, "", item.finish_reason))
                    else:
                        yield _sse(chunk(i, item, None))
                for t in tasks:
                    t.result()  # a failed prompt fails the stream
                yield _sse("[DONE]")
            finally:
                for t in tasks:
                    t.cancel()  # the client went away (the streams are cancelled by _CancellingStream)
                    t.add_done_callback(_quiet)
                observe_tokens(route, adapter_id, *tokens)

        return _CancellingStream(events(), lambda: _cancel_all(streams), media_type="text/event-stream")

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.post("/v1/adapters")
    async def create_adapter(self, req: AdapterRequest, request: Request) -> dict:
        raise_if(instruction_errors(req.instruction, req.examples, self.limits))
        meta = await self.generator.create.remote(req.instruction, [e.model_dump() for e in req.examples])
        request.state.adapter_id = meta["adapter_id"]
        return meta

    @app.post("/v1/adapters/upload")
    async def upload_adapter(self, request: Request) -> dict:
        """Body: a PEFT LoRA directory as tar / tar.gz / zip (adapter_config.json +
        adapter_model.safetensors). 413 past serve.max_upload_bytes, 422 naming what is refused."""
        size = int(request.headers.get("content-length") or 0)
        if size > self.limits.max_upload_bytes:
            raise HTTPException(413, detail=[{"loc": ["body"], "type": "limit", "msg": f"archive: {size} bytes, at "
                                              f"most {self.limits.max_upload_bytes} allowed"}])
        data = bytearray()
        async for part in request.stream():
            data += part
            if len(data) > self.limits.max_upload_bytes:
                raise HTTPException(413, detail=[{"loc": ["body"], "type": "limit", "msg": f"archive: more than "
                                                  f"{self.limits.max_upload_bytes} bytes"}])
        result = await self.generator.upload.remote(bytes(data))
        if "error" in result:
            raise_if([{"loc": ["body", result["error"]["field"]], "type": "invalid", "msg": result["error"]["msg"]}])
        request.state.adapter_id = result["adapter_id"]
        return result

    @app.get("/v1/adapters/{adapter_id}")
    async def adapter_info(self, adapter_id: str) -> dict:
        return await self._known(adapter_id)

    @app.get("/v1/adapters/{adapter_id}/peft")
    async def adapter_peft(self, adapter_id: str, request: Request) -> Response:
        await self._known(adapter_id)
        request.state.adapter_id = adapter_id
        data = await self.generator.peft_archive.remote(adapter_id)
        return Response(data, media_type="application/gzip",
                        headers={"Content-Disposition": f'attachment; filename="{adapter_id}.tar.gz"'})

    @app.post("/v1/generate")
    async def generate(self, req: GenerateRequest, request: Request) -> dict:
        if (req.adapter_id is None) == (req.instruction is None):
            raise_if([{"loc": ["body", "adapter_id"], "type": "missing",
                       "msg": "adapter_id: give exactly one of adapter_id or instruction"}])
        if req.adapter_id is not None and req.examples:
            raise_if([{"loc": ["body", "examples"], "type": "extra",
                       "msg": "examples: only with an instruction (an adapter id already includes them)"}])
        raise_if(instruction_errors(req.instruction, req.examples, self.limits)
                 + inputs_errors(req.inputs, req.max_new_tokens, self.limits) + stop_errors(req.stop))
        adapter_id = await self._adapter(request, req.adapter_id, req.instruction, req.examples, "adapter_id")
        done = await self._complete(request, adapter_id, [instance_text(x) for x in req.inputs], req.max_new_tokens,
                                    req.decoding())
        return {"adapter_id": adapter_id, "outputs": [c.text for c in done]}

    @app.post("/v1/completions")
    async def completions(self, req: CompletionRequest, request: Request):
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        raise_if(req.unsupported_errors() + stop_errors(req.stop)
                 + inputs_errors(prompts, req.max_tokens, self.limits, names=("prompt", "max_tokens")))
        adapter_id = await self._adapter(request, req.model, None, [], "model")
        head = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
                "model": adapter_id}
        prompts = [instance_text(p) for p in prompts]
        if req.stream:
            return await self._stream(request, adapter_id, prompts, req.max_tokens, req.decoding(), lambda i, text, why: {
                **head, "choices": [{"index": i, "text": text, "logprobs": None, "finish_reason": why}]})
        done = await self._complete(request, adapter_id, prompts, req.max_tokens, req.decoding())
        return {**head, "choices": [{"index": i, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason}
                                    for i, c in enumerate(done)], "usage": _usage(done)}

    @app.post("/v1/chat/completions")
    async def chat_completions(self, req: ChatRequest, request: Request):
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        messages = [m.plain() for m in req.messages]
        named = req.model not in ("", self.base_name)
        instruction = req.instruction
        if not named and instruction is None:
            instruction, messages = split_instruction(messages)
        if not named and instruction is None:
            raise_if([{"loc": ["body", "model"], "type": "missing", "msg": "model: name an adapter id, or give an "
                       "`instruction` or a leading system message to generate the adapter from"}])
        raise_if(req.unsupported_errors() + stop_errors(req.stop)
                 + instruction_errors(None if named else instruction, req.examples, self.limits)
                 + inputs_errors([m["content"] for m in messages], max_tokens, self.limits,
                                 names=("messages", "max_tokens")))
        prompt = await self.inference.chat_prompt.remote(messages)
        if prompt is None:
            raise_if([{"loc": ["body", "messages"], "type": "unsupported", "msg": "messages: this server's base has no "
                       "chat template (serve.chat_template); use /v1/completions"}])
        adapter_id = await self._adapter(request, req.model if named else None, instruction, req.examples, "model")
        head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": adapter_id}
        if req.stream:
            def chunk(i: int, text: str, why: str | None) -> dict:
                delta = {"role": "assistant", "content": text} if text else {}
                return {**head, "object": "chat.completion.chunk",
                        "choices": [{"index": i, "delta": delta, "logprobs": None, "finish_reason": why}]}
            return await self._stream(request, adapter_id, [prompt], max_tokens, req.decoding(), chunk)
        done = await self._complete(request, adapter_id, [prompt], max_tokens, req.decoding())
        return {**head, "object": "chat.completion", "usage": _usage(done),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": done[0].text},
                             "logprobs": None, "finish_reason": done[0].finish_reason}]}

    @app.get("/v1/models")
    async def models(self) -> dict:
        """OpenAI list format: the base and every adapter of the shared store."""
        return {"object": "list", "data": await self.generator.models.remote()}

    @app.get("/v1/stats")
    async def stats(self) -> dict:
        gen, inf = await asyncio.gather(self.generator.stats.remote(), self.inference.stats.remote())
        return {"adapter_generator": gen, "instance_inference": inf}
