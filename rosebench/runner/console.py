"""The summary printed at the end of a run: the original benchmark's lines, then serving figures."""

from __future__ import annotations

_LINES = [
    ("requests", "requests", "{:.0f}"),
    ("failed requests", "failed_requests", "{:.0f}"),
    ("prompt tokens", "prompt_tokens", "{:.0f}"),
    ("completion tokens", "completion_tokens", "{:.0f}"),
    ("total tokens", "total_tokens", "{:.0f}"),
    ("elapsed prefill (s)", "elapsed_prefill_s", "{:.3f}"),
    ("elapsed decode (s)", "elapsed_decode_s", "{:.3f}"),
    ("elapsed total (s)", "elapsed_total_s", "{:.3f}"),
    ("completion throughput (tok/s)", "throughput_completion_tok_s", "{:.1f}"),
    ("total throughput (tok/s)", "throughput_total_tok_s", "{:.1f}"),
    ("request throughput (req/s)", "request_throughput_req_s", "{:.2f}"),
    ("goodput (req/s)", "goodput_req_s", "{:.2f}"),
    ("SLO attainment", "slo_attainment", "{:.1%}"),
]
_LATENCIES = [("TTFT", "ttft_ms"), ("TPOT", "tpot_ms"), ("ITL", "itl_ms"), ("E2E", "e2e_ms")]
_ENGINE = [
    ("decode step p50 (ms)", "decode_step_ms_p50", "{:.2f}"),
    ("mean batch size", "mean_batch_size", "{:.1f}"),
    ("peak KV blocks", "peak_kv_blocks", "{:.0f}"),
    ("KV capacity (blocks)", "kv_capacity_blocks", "{:.0f}"),
    ("prefix-cache hit rate", "prefix_cache_hit_rate", "{:.3f}"),
    ("preemptions", "preemptions", "{:.0f}"),
    ("peak RSS (MB)", "peak_rss_mb", "{:.0f}"),
    ("CUDA max allocated (MB)", "cuda_max_allocated_mb", "{:.0f}"),
    ("CUDA max reserved (MB)", "cuda_max_reserved_mb", "{:.0f}"),
    ("CUDA graph pool (MB)", "cuda_graph_pool_mb", "{:.0f}"),
    ("engine compile (s)", "engine_compile_s", "{:.1f}"),
    ("engine graph capture (s)", "engine_capture_s", "{:.2f}"),
]

# What else ran on the machine meanwhile (runner/conditions.py): figures that cannot be trusted otherwise.
_CONDITIONS = [
    ("other processes' CPU (max)", "contention_max", "{:.0%}"),
    ("CPU steal", "cpu_steal", "{:.0%}"),
    ("load average (1 min)", "load_avg_1m", "{:.2f}"),
    ("torch intra-op threads", "torch_threads", "{:.0f}"),
]


UNMEASURED = "-"  # a figure with no samples (TPOT with one output token each): absent, never 0
# Goodput exists only under an SLO, CUDA figures only on CUDA, compile and capture figures only when they
# happened.
_NOT_APPLICABLE_WHEN_ABSENT = {
    "goodput_req_s",
    "slo_attainment",
    "cuda_max_allocated_mb",
    "cuda_max_reserved_mb",
    "cuda_graph_pool_mb",
    "engine_compile_s",
    "engine_capture_s",
}


def summary_table(title: str, mean: dict[str, float], std: dict[str, float], repeat: int) -> str:
    width = 32
    out = [f"=== {title} ==="]

    def line(label: str, key: str, fmt: str) -> None:
        if key not in mean and key in _NOT_APPLICABLE_WHEN_ABSENT:
            return
        text = fmt.format(mean[key]) if key in mean else UNMEASURED
        if repeat > 1 and std.get(key):
            text += f"  ± {fmt.format(std[key])}"
        out.append(f"{label:<{width}}{text}")

    for label, key, fmt in _LINES:
        line(label, key, fmt)
    out.append(f"{'latency (ms)':<{width}}{'mean':>10}{'p50':>10}{'p90':>10}{'p99':>10}")
    for label, key in _LATENCIES:
        values = [mean.get(f"{key}_{stat}") for stat in ("mean", "p50", "p90", "p99")]
        cells = "".join(f"{UNMEASURED:>10}" if v is None else f"{v:>10.2f}" for v in values)
        out.append(f"{label:<{width}}{cells}")
    for label, key, fmt in _ENGINE:
        line(label, key, fmt)
    for label, key, fmt in _CONDITIONS:
        line(label, key, fmt)
    if repeat > 1:
        out.append(f"(mean of {repeat} timed passes; ± is their standard deviation)")
    return "\n".join(out)
