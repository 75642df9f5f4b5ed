"""Per-adapter Prometheus metrics through Ray Serve's metrics API (exported by every Ray node's
metrics agent, e.g. `ray start --metrics-export-port=8080`, as `ray_tagi_*`; Serve adds the
deployment, replica and application tags).

    tagi_requests_total{route, adapter_id, status}          HTTP requests by final status code
    tagi_request_latency_s{route, adapter_id}               seconds to the full response (streams:
                                                            to the last chunk)
    tagi_input_tokens_total / tagi_output_tokens_total{route, adapter_id}
    tagi_adapter_cache_total{adapter_id, result}            per replica: hit (resident), load (read
                                                            from the shared store), miss (unknown id)
    tagi_batch_size / tagi_batch_adapters                   per forward batch: instances, distinct
                                                            adapters (the BatchQueue's batching)

adapter_id is "-" when a request named none that exists, so malformed ids cannot grow the
label set. Objects are created lazily inside the replica (Ray metrics need its worker).
"""
from __future__ import annotations

from functools import cache

LATENCY_BOUNDARIES_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128]


@cache
def request_metrics() -> dict:
    from ray.serve.metrics import Counter, Histogram

    tags = ("route", "adapter_id")
    return {
        "requests": Counter("tagi_requests", description="HTTP requests by route, adapter and status code",
                            tag_keys=tags + ("status",)),
        "latency": Histogram("tagi_request_latency_s", description="request latency (streams: to the last chunk)",
                             boundaries=LATENCY_BOUNDARIES_S, tag_keys=tags),
        "input_tokens": Counter("tagi_input_tokens", description="prompt tokens", tag_keys=tags),
        "output_tokens": Counter("tagi_output_tokens", description="generated tokens", tag_keys=tags),
    }


@cache
def cache_metrics():
    from ray.serve.metrics import Counter

    return Counter("tagi_adapter_cache", description="adapter lookups in a replica: hit, load (from the shared "
                   "store) or miss (unknown id)", tag_keys=("adapter_id", "result"))


@cache
def batch_metrics() -> dict:
    from ray.serve.metrics import Histogram

    return {"size": Histogram("tagi_batch_size", description="instances per forward batch",
                              boundaries=BATCH_BOUNDARIES),
            "adapters": Histogram("tagi_batch_adapters", description="distinct adapters per forward batch",
                                  boundaries=BATCH_BOUNDARIES)}


def observe_batch(instances: int, adapters: int) -> None:
    m = batch_metrics()
    m["size"].observe(instances)
    m["adapters"].observe(adapters)


def observe_request(route: str, adapter_id: str, status: int, latency_s: float) -> None:
    m = request_metrics()
    tags = {"route": route, "adapter_id": adapter_id or "-"}
    m["requests"].inc(tags={**tags, "status": str(status)})
    m["latency"].observe(latency_s, tags=tags)


def observe_tokens(route: str, adapter_id: str, input_tokens: int, output_tokens: int) -> None:
    m = request_metrics()
    tags = {"route": route, "adapter_id": adapter_id}
    if input_tokens:
        m["input_tokens"].inc(input_tokens, tags=tags)
    if output_tokens:
        m["output_tokens"].inc(output_tokens, tags=tags)


def observe_lookup(adapter_id: str, result: str) -> None:
    cache_metrics().inc(tags={"adapter_id": adapter_id if result != "miss" else "-", "result": result})
