"""The server's Prometheus figures, under vLLM's names where the meaning is the same (dashboards and
scrapers made for vLLM read them unchanged); ``rosebench:`` names for what vLLM does not export."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

disable_created_metrics()  # the *_created series (process start times) are noise to a scraper of this server

# Seconds: from a millisecond step on a GPU to a long request on a busy CPU.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                    7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip


class ServerMetrics:
    """One registry per server (not prometheus_client's global one), so that tests may build several.
    Every figure carries the served model's name, as vLLM's do."""

    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        r, labels = self.registry, {"model_name": model_name}

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, list(labels), registry=r).labels(**labels)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, list(labels), registry=r).labels(**labels)

        def histogram(name: str, doc: str) -> Histogram:
            return Histogram(name, doc, list(labels), buckets=_LATENCY_BUCKETS, registry=r).labels(**labels)

        self.num_requests_running = gauge("vllm:num_requests_running", "Requests in the running batch.")
        self.num_requests_waiting = gauge("vllm:num_requests_waiting", "Requests waiting to be admitted.")
        self.kv_cache_usage = gauge("vllm:kv_cache_usage_perc", "Fraction of KV blocks in use (1 = full).")
        self.kv_blocks_used = gauge("rosebench:kv_blocks_used", "KV blocks held by running requests.")
        self.kv_blocks_total = gauge("rosebench:kv_blocks_total", "KV blocks in the cache's budget.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Prompt tokens of admitted requests.")
        self.generation_tokens = counter("vllm:generation_tokens", "Tokens generated.")
        self.preemptions = counter("vllm:num_preemptions", "Requests preempted (their KV recomputed).")
        self.prefix_cache_queries = counter("vllm:prefix_cache_queries", "Prompt tokens looked up.")
        self.prefix_cache_hits = counter("vllm:prefix_cache_hits", "Prompt tokens found in the prefix cache.")
        self._request_success = Counter(
            "vllm:request_success",
            "Requests ended, by finish reason (stop, length, abort, error).",
            [*labels, "finished_reason"],
            registry=r,
        )
        self._model_name = model_name
        self.time_to_first_token = histogram(
            "vllm:time_to_first_token_seconds", "From a request's arrival at the engine to its first token."
        )
        self.inter_token_latency = histogram(
            "vllm:inter_token_latency_seconds", "Between consecutive tokens of a request."
        )
        self.e2e_request_latency = histogram(
            "vllm:e2e_request_latency_seconds", "From a request's arrival at the engine to its last token."
        )
        self.request_queue_time = histogram(
            "vllm:request_queue_time_seconds", "From a request's arrival to its first admission."
        )

    def request_ended(self, finished_reason: str) -> None:
        self._request_success.labels(model_name=self._model_name, finished_reason=finished_reason).inc()

    def text(self) -> bytes:
        """The exposition text ``GET /metrics`` answers with."""
        return generate_latest(self.registry)
