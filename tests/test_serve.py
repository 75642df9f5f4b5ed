"""Ray Serve app over real HTTP on loopback: adapters, generation equal to the library's,
PEFT archives and uploads, the OpenAI client (completions and chat, streamed and not), input
validation, cross-adapter batching, disconnects, and per-adapter Prometheus metrics."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import torch

from tagi_ray.batching import instruction_batch
from tagi_ray.checkpoint import load_checkpoint
from tagi_ray.data.prompts import instance_text, instruction_text
from tagi_ray.inference import generate_with_instructions
from tagi_ray.checkpoint import save_checkpoint
from tagi_ray.models.base import load_base
from tagi_ray.ports import free_ports
from tagi_ray.tagi import TagiModel
from tests.conftest import tiny_test_config

TASKS = [
    ("Reverse the order of the words.", [{"input": "a b c", "output": "c b a"}]),
    ("Count the words in the input.", []),
    ("Write the first word of the input.", [{"input": "x y", "output": "x"}, {"input": "p q r", "output": "p"}]),
    ("Answer yes if the input contains the word cat, else no.", []),
]
INPUTS = ["red green blue", "one two", "the cat sat on the mat", "alpha"]
MAX_NEW = 12
# the tiny base's ByT5 tokenizer has no chat template: the test server is given one
CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny TAGI checkpoint whose answers differ by adapter and input: a seeded random
    hypernetwork. (A tiny model meta-trained for the few steps a test affords answers '' to
    everything, so "served equals the library" would compare empty strings.)"""
    cfg = tiny_test_config()
    bundle = load_base(cfg.model)
    torch.manual_seed(0)  # the hypernetwork's init draws from the global RNG: same weights whatever ran before
    model = TagiModel(bundle, cfg.lora, cfg.hypernet, cfg.instruction)
    noise = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.hypernet.parameters():
            p.add_(torch.randn(p.shape, generator=noise) * 0.02)
    return save_checkpoint(model, bundle.tokenizer, cfg, tmp_path_factory.mktemp("serve_ckpt") / "hypernet")


@pytest.fixture(scope="module")
def server(ray_cluster, checkpoint, tmp_path_factory):
    from ray import serve

    from tagi_ray.serve.main import start

    store = tmp_path_factory.mktemp("adapter_store")
    url = start(str(checkpoint), "127.0.0.1", free_ports()[0], num_cpus=0.25,
                overrides={"batch_wait_timeout_s": 0.2, "max_inputs": 8, "adapter_store": str(store),
                           "chat_template": CHAT_TEMPLATE, "max_upload_bytes": 1 << 20})
    yield url
    serve.shutdown()


@pytest.fixture(scope="module")
def library(checkpoint):
    model, tokenizer, cfg = load_checkpoint(checkpoint)

    def answers(definition: str, examples: list[dict], inputs: list[str], max_new: int = MAX_NEW) -> list[str]:
        text = instruction_text(definition, examples, len(examples))
        return generate_with_instructions(model, tokenizer, cfg.model, [text] * len(inputs),
                                          [instance_text(x) for x in inputs], max_new)

    return model, tokenizer, cfg, answers


def _post(url: str, path: str, body) -> requests.Response:
    return requests.post(url + path, json=body, timeout=60)


def test_adapter_generate_peft_and_completions(server, library, tmp_path):
    model, tokenizer, cfg, answers = library
    # the task whose adapter answers most inputs with text (a random tiny model answers some with '')
    definition, examples = max(TASKS, key=lambda t: sum(map(bool, answers(t[0], t[1], INPUTS))))
    created = _post(server, "/v1/adapters", {"instruction": definition, "examples": examples}).json()
    assert created["cached"] is False and created["rank"] == cfg.lora.rank
    assert sorted(created["modules"]) == sorted(t.name for t in model.targets)
    again = _post(server, "/v1/adapters", {"instruction": definition, "examples": examples}).json()
    assert again["adapter_id"] == created["adapter_id"] and again["cached"] is True
    aid = created["adapter_id"]
    assert requests.get(f"{server}/v1/adapters/{aid}", timeout=30).json()["adapter_id"] == aid

    expected = answers(definition, examples, INPUTS)
    by_id = _post(server, "/v1/generate", {"adapter_id": aid, "inputs": INPUTS, "max_new_tokens": MAX_NEW}).json()
    assert by_id == {"adapter_id": aid, "outputs": expected}
    by_instruction = _post(server, "/v1/generate", {"instruction": definition, "examples": examples,
                                                    "inputs": INPUTS, "max_new_tokens": MAX_NEW}).json()
    assert by_instruction == by_id

    # the PEFT archive loads with peft and holds exactly the generated adapter
    import peft
    from safetensors.torch import load_file

    archive = requests.get(f"{server}/v1/adapters/{aid}/peft", timeout=30)
    assert archive.status_code == 200 and archive.headers["content-type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(archive.content)) as tar:
        tar.extractall(tmp_path, filter="data")
    adapter_dir = tmp_path / aid
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["r"] == cfg.lora.rank
    peft_model = peft.PeftModel.from_pretrained(_fresh_base(cfg, adapter_dir), str(adapter_dir))
    ids, mask, _ = instruction_batch(tokenizer, True, [instruction_text(definition, examples, len(examples))],
                                     cfg.model.max_instruction_length)
    generated = model.generate_adapter(model.encode_instruction(ids, mask))
    stored = load_file(str(adapter_dir / "adapter_model.safetensors"))
    name = model.targets[0].name
    torch.testing.assert_close(stored[f"base_model.model.{name}.lora_A.weight"], generated.A[name][0])
    loaded = dict(peft_model.named_parameters())[f"base_model.model.{name}.lora_A.default.weight"]
    torch.testing.assert_close(loaded, generated.A[name][0])

    # OpenAI-style completions, with the openai client
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="not-needed")
    completion = client.completions.create(model=aid, prompt=INPUTS[:2], max_tokens=MAX_NEW)
    assert [c.text for c in completion.choices] == expected[:2]
    # sampling through the openai client: seeded = reproducible, other seeds differ, stop honoured
    sample = lambda seed: [c.text for c in client.completions.create(  # noqa: E731
        model=aid, prompt=INPUTS[:2], max_tokens=MAX_NEW, temperature=1.0, top_p=0.95, seed=seed).choices]
    assert sample(3) == sample(3) and len({tuple(sample(s)) for s in range(4)}) > 1
    # a one-character stop string whose first occurrence is past the start, after plain bytes only
    # (a byte-level tokenizer decodes a cut multi-byte character differently from the whole text)
    i, at = next((i, k) for i, text in enumerate(expected) for k in range(1, len(text))
                 if text.find(text[k]) == k and text[:k + 1].isascii())
    stop = expected[i][at]
    stopped = client.completions.create(model=aid, prompt=INPUTS[i], max_tokens=MAX_NEW, stop=[stop])
    assert stopped.choices[0].text == expected[i][:at]
    models = [m.id for m in client.models.list()]
    assert models[0] == library[2].model.name and aid in models
    with pytest.raises(openai.UnprocessableEntityError) as err:
        client.completions.create(model=aid, prompt="a", n=2)
    assert "n: 2 is not supported" in err.value.response.text


def _fresh_base(cfg, adapter_dir):
    from tagi_ray.models.base import load_pretrained

    base_path = json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    return load_pretrained(base_path, cfg.model.dtype).model


MALFORMED = [
    ("/v1/adapters", {}, "instruction"),
    ("/v1/adapters", {"instruction": ""}, "instruction"),
    ("/v1/adapters", {"instruction": "   "}, "instruction"),
    ("/v1/adapters", {"instruction": "x" * 9000}, "instruction"),
    ("/v1/adapters", {"instruction": 5}, "instruction"),
    ("/v1/adapters", {"instruction": ["a"]}, "instruction"),
    ("/v1/adapters", {"instruction": "ok", "examples": "abc"}, "examples"),
    ("/v1/adapters", {"instruction": "ok", "examples": [{"input": "a"}]}, "output"),
    ("/v1/adapters", {"instruction": "ok", "examples": [{"input": "a", "output": 3}]}, "output"),
    ("/v1/adapters", {"instruction": "ok", "examples": [{"input": "a", "output": "b"}] * 9}, "examples"),
    ("/v1/adapters", {"instruction": "ok", "unknown_field": 1}, "unknown_field"),
    ("/v1/adapters", "not an object", "body"),
    ("/v1/generate", {"inputs": ["a"]}, "adapter_id"),
    ("/v1/generate", {"adapter_id": "tagi-nope", "inputs": ["a"]}, "adapter_id"),
    ("/v1/generate", {"adapter_id": "x", "instruction": "y", "inputs": ["a"]}, "adapter_id"),
    ("/v1/generate", {"instruction": "ok"}, "inputs"),
    ("/v1/generate", {"instruction": "ok", "inputs": []}, "inputs"),
    ("/v1/generate", {"instruction": "ok", "inputs": "a"}, "inputs"),
    ("/v1/generate", {"instruction": "ok", "inputs": [1, 2]}, "inputs"),
    ("/v1/generate", {"instruction": "ok", "inputs": ["a"] * 9}, "inputs"),
    ("/v1/generate", {"instruction": "ok", "inputs": ["x" * 5000]}, "inputs.0"),
    ("/v1/generate", {"instruction": "ok", "inputs": ["a"], "max_new_tokens": 0}, "max_new_tokens"),
    ("/v1/generate", {"instruction": "ok", "inputs": ["a"], "max_new_tokens": 100000}, "max_new_tokens"),
    ("/v1/generate", {"instruction": "ok", "inputs": ["a"], "max_new_tokens": "ten"}, "max_new_tokens"),
    ("/v1/generate", {"instruction": "ok", "inputs": ["a"], "max_new_tokens": 2.5}, "max_new_tokens"),
    ("/v1/generate", {"instruction": "", "inputs": ["a"]}, "instruction"),
    ("/v1/generate", {"adapter_id": "x", "examples": [{"input": "a", "output": "b"}], "inputs": ["a"]}, "examples"),
    ("/v1/completions", {"prompt": "a"}, "model"),
    ("/v1/completions", {"model": "tagi-nope", "prompt": "a"}, "model"),
    ("/v1/completions", {"model": "x", "prompt": 7}, "prompt"),
    ("/v1/completions", {"model": "x", "prompt": []}, "prompt"),
    ("/v1/completions", {"model": "x", "prompt": "a", "max_tokens": -1}, "max_tokens"),
    ("/v1/completions", {"model": "x", "prompt": ["a"] * 9}, "prompt"),
    ("/v1/completions", {"model": "x", "prompt": "a", "logprobs": 3}, "logprobs"),
    ("/v1/completions", {"model": "x", "prompt": "a", "presence_penalty": 0.5}, "presence_penalty"),
    ("/v1/completions", {"model": "x", "prompt": "a", "frobnicate": 1}, "frobnicate"),
    ("/v1/completions", {"model": "x", "prompt": "a", "temperature": 3}, "temperature"),
    ("/v1/completions", {"model": "x", "prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ("/v1/generate", {"instruction": "ok", "inputs": ["a"], "top_p": 0}, "top_p"),
    ("/v1/generate", {"instruction": "ok", "inputs": ["a"], "top_k": -1}, "top_k"),
    ("/v1/generate", {"instruction": "ok", "inputs": ["a"], "n": 2}, "n"),
]


def test_malformed_requests_get_4xx_naming_the_field(server, library):
    assert len(MALFORMED) >= 30
    for path, body, field in MALFORMED:
        if isinstance(body, str):
            r = requests.post(server + path, data=body, headers={"content-type": "application/json"}, timeout=30)
        else:
            r = _post(server, path, body)
        assert 400 <= r.status_code < 500, (path, body, r.status_code, r.text)
        assert field.split(".")[-1] in r.text, (path, body, r.text)
    for bad in ["/v1/adapters/tagi-nope", "/v1/adapters/tagi-nope/peft"]:
        r = requests.get(server + bad, timeout=30)
        assert r.status_code == 404 and "unknown adapter" in r.text
    assert requests.get(f"{server}/healthz", timeout=30).json() == {"status": "ok"}
    definition, examples = TASKS[0]
    ok = _post(server, "/v1/generate", {"instruction": definition, "examples": examples, "inputs": ["a b"],
                                        "max_new_tokens": MAX_NEW})
    assert ok.status_code == 200 and ok.json()["outputs"] == library[3](definition, examples, ["a b"])


def test_concurrent_requests_with_distinct_adapters_share_forward_batches(server, library):
    answers = library[3]
    ids = [_post(server, "/v1/adapters", {"instruction": d, "examples": e}).json()["adapter_id"] for d, e in TASKS]
    jobs = [(t, x) for t in range(len(TASKS)) for x in INPUTS]  # 16 requests, 4 adapters
    before = requests.get(f"{server}/v1/stats", timeout=30).json()["instance_inference"]

    def call(job):
        t, x = job
        return _post(server, "/v1/generate", {"adapter_id": ids[t], "inputs": [x], "max_new_tokens": MAX_NEW}).json()

    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(call, jobs))
    after = requests.get(f"{server}/v1/stats", timeout=30).json()["instance_inference"]
    batches = after["forward_batches"] - before["forward_batches"]
    assert after["instances"] - before["instances"] == len(jobs)
    assert batches < len(jobs), f"{len(jobs)} requests took {batches} forward batches"
    assert after["most_adapters_in_batch"] >= 2
    for (t, x), result in zip(jobs, results):
        assert result["outputs"] == answers(*TASKS[t], [x]), (TASKS[t][0], x)
    print(f"\n{len(jobs)} concurrent requests, {len(TASKS)} adapters -> {batches} forward batches "
          f"(largest {after['largest_batch']}, up to {after['most_adapters_in_batch']} adapters in one)")


def _library_chat(library, definition: str, messages: list[dict], max_new: int = MAX_NEW) -> str:
    """The library's answer: the adapter generated from `definition`, the messages in the chat template."""
    from tagi_ray.chat import chat_prompt
    from tagi_ray.serving import AdapterFactory, complete_mixed

    model, tokenizer, cfg, _ = library
    entry = AdapterFactory(model, tokenizer, cfg, "library").create(definition)
    prompt = chat_prompt(tokenizer, messages, CHAT_TEMPLATE)
    return complete_mixed(model, tokenizer, cfg, [entry], [prompt], [max_new])[0].text


def test_streaming_and_chat_through_the_openai_client(server, library):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="not-needed")
    answers = {d: library[3](d, [], INPUTS) for d, _ in TASKS}  # a task whose adapter answers with text
    definition = max(answers, key=lambda d: sum(map(bool, answers[d])))
    inputs = [x for x, a in zip(INPUTS, answers[definition]) if a][:2]
    assert len(inputs) == 2, answers
    aid = _post(server, "/v1/adapters", {"instruction": definition}).json()["adapter_id"]

    # completions: the streamed pieces add up to the plain answer; the last chunk says why it ended
    plain = client.completions.create(model=aid, prompt=inputs, max_tokens=MAX_NEW)
    chunks = list(client.completions.create(model=aid, prompt=inputs, max_tokens=MAX_NEW, stream=True))
    for i in range(2):
        mine = [c.choices[0] for c in chunks if c.choices[0].index == i]
        assert "".join(c.text for c in mine) == plain.choices[i].text == library[3](definition, [], [inputs[i]])[0]
        assert mine[-1].finish_reason == plain.choices[i].finish_reason in ("stop", "length")
    assert plain.usage.completion_tokens > 0 and plain.usage.prompt_tokens > 0

    # chat: the system message is the instruction (the same adapter as POST /v1/adapters makes)
    messages = [{"role": "system", "content": definition}, {"role": "user", "content": inputs[0]}]
    expected = _library_chat(library, definition, messages[1:])
    assert expected
    chat = client.chat.completions.create(model=library[2].model.name, messages=messages, max_tokens=MAX_NEW)
    assert chat.model == aid and chat.choices[0].message.content == expected and chat.choices[0].message.role == "assistant"
    streamed = list(client.chat.completions.create(model=library[2].model.name, messages=messages,
                                                   max_tokens=MAX_NEW, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == expected
    assert streamed[-1].choices[0].finish_reason == chat.choices[0].finish_reason
    # or the adapter by id / from an `instruction` field
    by_id = client.chat.completions.create(model=aid, messages=messages[1:], max_tokens=MAX_NEW)
    by_field = client.chat.completions.create(model="", messages=messages[1:], max_tokens=MAX_NEW,
                                              extra_body={"instruction": definition})
    assert by_id.choices[0].message.content == by_field.choices[0].message.content == expected
    with pytest.raises(openai.UnprocessableEntityError) as err:  # no adapter named, no instruction
        client.chat.completions.create(model="", messages=messages[1:])
    assert "model: name an adapter id" in err.value.response.text
    with pytest.raises(openai.UnprocessableEntityError) as err:
        client.chat.completions.create(model=aid, messages=messages[1:], tools=[{"type": "function", "function": {
            "name": "f", "parameters": {}}}])
    assert "tools" in err.value.response.text


def test_a_client_that_disconnects_mid_stream_frees_its_row(server):
    aid = _post(server, "/v1/adapters", {"instruction": TASKS[0][0]}).json()["adapter_id"]
    stats = lambda: requests.get(f"{server}/v1/stats", timeout=30).json()["instance_inference"]  # noqa: E731
    before = stats()["cancelled_rows"]
    body = {"model": aid, "prompt": "a long answer please", "max_tokens": 128, "stream": True}
    with requests.post(f"{server}/v1/completions", json=body, stream=True, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        first = next(line for line in r.iter_lines() if line)
        assert first.startswith(b"data: {")
    deadline = time.monotonic() + 30  # the connection is closed: the row is cancelled downstream
    while stats()["cancelled_rows"] == before:
        assert time.monotonic() < deadline, "the disconnected stream's row was never cancelled"
        time.sleep(0.5)
    ok = _post(server, "/v1/completions", {"model": aid, "prompt": "a", "max_tokens": 4})
    assert ok.status_code == 200


def test_an_uploaded_peft_adapter_serves_as_peft_model_generates(server, library, tmp_path):
    """Upload the PEFT archive of an adapter: served without the instruction's fusion, its outputs
    are PeftModel.from_pretrained's greedy ones; bad uploads get a 4xx naming what is wrong."""
    import peft

    model, tokenizer, cfg, _ = library
    source = _post(server, "/v1/adapters", {"instruction": TASKS[3][0]}).json()["adapter_id"]
    archive = requests.get(f"{server}/v1/adapters/{source}/peft", timeout=30).content
    up = requests.post(f"{server}/v1/adapters/upload", data=archive, timeout=60)
    assert up.status_code == 200, up.text
    uploaded = up.json()
    assert uploaded["adapter_id"].startswith("peft-") and uploaded["source"] == "peft"
    assert requests.post(f"{server}/v1/adapters/upload", data=archive, timeout=60).json()["cached"] is True

    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tmp_path, filter="data")
    adapter_dir = tmp_path / source
    peft_model = peft.PeftModel.from_pretrained(_fresh_base(cfg, adapter_dir), str(adapter_dir)).eval()
    from tagi_ray.batching import prompt_batch

    ids, mask = prompt_batch(tokenizer, model.is_encoder_decoder, [instance_text(x) for x in INPUTS],
                             cfg.model.max_source_length)
    out = peft_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    rows = [r.tolist() for r in (out[:, 1:] if model.is_encoder_decoder else out[:, ids.shape[1]:])]
    expected = [tokenizer.decode(r[: r.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in r else r,
                                 skip_special_tokens=True) for r in rows]
    served = _post(server, "/v1/generate", {"adapter_id": uploaded["adapter_id"], "inputs": INPUTS,
                                            "max_new_tokens": MAX_NEW}).json()["outputs"]
    assert served == expected
    assert uploaded["adapter_id"] in [m["id"] for m in requests.get(f"{server}/v1/models", timeout=30).json()["data"]]

    def tar_of(files: dict[str, bytes]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    good = {n: (adapter_dir / n).read_bytes() for n in ("adapter_config.json", "adapter_model.safetensors")}
    bad = [(tar_of({"../../x/adapter_config.json": good["adapter_config.json"]}), 422, "outside the archive"),
           (tar_of({**good, "adapter_model.bin": b"pickle"}), 422, "pickle"),
           (tar_of({"adapter_config.json": b"{}", "adapter_model.safetensors": good["adapter_model.safetensors"]}),
            422, "peft_type"),
           (b"plain bytes", 422, "archive"),
           (b"x" * ((1 << 20) + 1), 413, "archive")]
    for data, status, words in bad:
        r = requests.post(f"{server}/v1/adapters/upload", data=data, timeout=60)
        assert r.status_code == status and words in r.text, (status, r.status_code, r.text)


def test_per_adapter_metrics_reach_prometheus(server):
    """Ray's metrics export (the node's Prometheus endpoint) has requests, tokens, latency and
    cache lookups per adapter and route, and the size of every forward batch."""
    aid = _post(server, "/v1/adapters", {"instruction": TASKS[2][0]}).json()["adapter_id"]
    for _ in range(2):
        assert _post(server, "/v1/completions", {"model": aid, "prompt": "x y", "max_tokens": 4}).status_code == 200
    url = f"http://127.0.0.1:{os.environ['TAGI_TEST_METRICS_PORT']}/metrics"
    wanted = ['ray_tagi_requests_total{', 'ray_tagi_output_tokens_total{', 'ray_tagi_request_latency_s_bucket{',
              'ray_tagi_adapter_cache_total{']
    deadline, text = time.monotonic() + 90, ""
    while time.monotonic() < deadline:  # Ray exports metrics every few seconds
        text = requests.get(url, timeout=10).text
        lines = [line for line in text.splitlines() if aid in line]
        if all(any(line.startswith(w) for line in lines) for w in wanted) and "ray_tagi_batch_size_count{" in text:
            break
        time.sleep(2)
    lines = [line for line in text.splitlines() if aid in line]
    for w in wanted:
        assert any(line.startswith(w) for line in lines), (w, lines[:10])
    batches = [line for line in text.splitlines() if line.startswith("ray_tagi_batch_size_count{")]
    assert batches and sum(float(line.rsplit(" ", 1)[1]) for line in batches) >= 2, batches  # per forward batch
    request_lines = [line for line in lines if line.startswith("ray_tagi_requests_total{")]
    assert any('route="/v1/completions"' in line and 'status="200"' in line for line in request_lines), request_lines


def _checkpoint_on_free_port(checkpoint: Path, out: Path) -> tuple[Path, int]:
    """A copy of the checkpoint whose config serves on a free port (the README's command has no --port)."""
    import yaml

    shutil.copytree(checkpoint, out)
    config = yaml.safe_load((out / "config.yaml").read_text())
    port = free_ports()[0]
    config["serve"]["port"] = port
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    return out, port


def _tagi(*args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local cluster, as a user's
    return subprocess.Popen([str(Path(sys.executable).parent / "tagi"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)  # its own process group: killable with its cluster


def test_tagi_serve_as_the_readme_says_is_healthy_within_60s(checkpoint, tmp_path):
    """`tagi serve --checkpoint DIR`, no other flags, on this machine: /healthz answers in 60 s."""
    ckpt, port = _checkpoint_on_free_port(checkpoint, tmp_path / "hypernet")
    start = time.monotonic()
    proc = _tagi("serve", "--checkpoint", str(ckpt))
    healthy = None
    try:
        while time.monotonic() - start < 60 and proc.poll() is None:
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json() == {"status": "ok"}:
                    healthy = time.monotonic() - start
                    break
            except requests.RequestException:
                time.sleep(1)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            output = proc.communicate(timeout=120)[0]
        except subprocess.TimeoutExpired:  # never leave a serving cluster behind for later tests
            os.killpg(proc.pid, signal.SIGKILL)
            output = proc.communicate()[0] + "\n(killed: SIGTERM did not stop it in 120 s)"
    assert healthy is not None, output[-3000:]
    print(f"tagi serve healthy after {healthy:.1f} s")
    assert proc.returncode == 0, output[-3000:]  # SIGTERM stops Serve and its local cluster cleanly


def test_serve_that_cannot_place_its_replicas_fails_in_bounded_time_naming_the_cpus(server, checkpoint):
    """On the session's 2-CPU cluster (where `server` already runs): replicas asking 8 CPUs each."""
    from ray import serve

    from tagi_ray.serve.main import ServeStartError, start

    begin = time.monotonic()
    with pytest.raises(ServeStartError) as err:
        start(str(checkpoint), overrides={"start_timeout_s": 5}, num_cpus=8, app_name="too_big", route_prefix="/big")
    message = str(err.value)
    assert message.startswith("Serve app 'too_big' not running after 5 s:") and time.monotonic() - begin < 60, message
    assert "needs {'CPU': 8}" in message and "CPUs free" in message, message
    deadline = time.monotonic() + 30
    while "too_big" in serve.status().applications and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "too_big" not in serve.status().applications  # removed, nothing left waiting for CPUs
    assert requests.get(f"{server}/healthz", timeout=30).json() == {"status": "ok"}  # the other app unharmed


def test_adapters_live_in_a_store_every_replica_shares_and_a_restarted_replica_finds(server, checkpoint, library,
                                                                                     tmp_path):
    """Two apps over one adapter store: an adapter created through app a's generator serves
    through app b (its own generator and 2 InstanceInference replicas never created it), also
    after b's inference replicas are killed and restarted by Serve."""
    import ray
    from ray import serve

    def inference_replicas() -> set[str]:
        return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                if a["namespace"] == "serve" and "b#InstanceInference" in a["name"]}

    from tagi_ray.serve.main import start

    port = int(server.rsplit(":", 1)[1])
    overrides = {"adapter_store": str(tmp_path / "store"), "batch_wait_timeout_s": 0.05,
                 "start_timeout_s": 240}  # 4 more replicas on a loaded 2-core machine
    try:
        start(str(checkpoint), "127.0.0.1", port, overrides, num_cpus=0.1, app_name="a", route_prefix="/a")
        start(str(checkpoint), "127.0.0.1", port, overrides, num_cpus=0.1, app_name="b", route_prefix="/b",
              num_replicas={"InstanceInference": 2})
        definition, examples = TASKS[0]
        created = _post(server, "/a/v1/adapters", {"instruction": definition, "examples": examples}).json()
        aid = created["adapter_id"]
        assert (tmp_path / "store" / aid / "adapter.safetensors").is_file()
        assert requests.get(f"{server}/b/v1/adapters/{aid}", timeout=60).json()["adapter_id"] == aid
        listed = [m["id"] for m in requests.get(f"{server}/b/v1/models", timeout=60).json()["data"]]
        assert aid in listed and listed == [m["id"] for m in requests.get(f"{server}/a/v1/models", timeout=60).json()["data"]]
        expected = library[3](definition, examples, INPUTS)
        body = {"adapter_id": aid, "inputs": INPUTS, "max_new_tokens": MAX_NEW}
        assert _post(server, "/b/v1/generate", body).json()["outputs"] == expected
        no_chat = _post(server, "/b/v1/chat/completions", {"model": aid, "messages": [{"role": "user", "content": "a"}]})
        assert no_chat.status_code == 422 and "no chat template" in no_chat.text  # b's base has none
        replicas = inference_replicas()
        assert len(replicas) == 2, replicas
        for name in replicas:
            ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
        deadline = time.monotonic() + 90
        while True:  # Serve replaces the dead replicas; they load the adapter from the store
            try:
                r = _post(server, "/b/v1/generate", body)
                if r.status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "b did not recover"
            time.sleep(1)
        assert r.json()["outputs"] == expected
        assert inference_replicas().isdisjoint(replicas)  # new replicas, not the killed ones
    finally:
        for app in ("a", "b"):
            serve.delete(app)
