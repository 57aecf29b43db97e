"""From a scheduler pass to flat, named figures (the names are an interface: snake_case, unit last).

Latency definitions follow vLLM's ``bench serve``: TTFT = first token - arrival; TPOT per request =
(finish - first token) / (output tokens - 1), over requests with more than one output token; ITL = every
gap between consecutive tokens of a request, pooled over requests; E2E = finish - arrival. Over HTTP a
"token" time is a content chunk's (a chunk may carry several tokens: ITL is between chunks, TPOT divides by
the server's token count) and arrival is when the request was sent.

A failed request (over HTTP: an error status, a broken connection, a timeout) is counted in
``failed_requests`` and adds nothing to the token counts, throughputs and latencies, which are over the
requests that succeeded; in-process none fails.

Goodput (DistServe's, as vLLM's ``--goodput``): the requests that met every bound of the run's SLO
(``rosebench.slo``) per second of the pass; ``slo_attainment`` is their share of all the requests (a failed
one met none).
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any

from rosebench.scheduler.records import PassResult, RequestRecord
from rosebench.slo import SloConfig

PERCENTILES = (50, 90, 99)


def pass_metrics(result: PassResult, slo: SloConfig | None = None) -> dict[str, float]:
    """Every figure of one pass; ``cuda_*`` and ``peak_rss_mb`` only when the pass measured them, and
    ``goodput_req_s`` and ``slo_attainment`` only under an SLO with a bound."""
    records, stats = result.records, result.stats
    succeeded = [r for r in records if r.error is None]
    prompt_tokens = sum(len(r.prompt_token_ids) for r in succeeded)
    completion_tokens = sum(r.num_completion_tokens for r in succeeded)
    elapsed = stats.elapsed_total_s
    metrics: dict[str, float] = {
        "requests": float(len(records)),
        "failed_requests": float(len(records) - len(succeeded)),
        "prompt_tokens": float(prompt_tokens),
        "completion_tokens": float(completion_tokens),
        "total_tokens": float(prompt_tokens + completion_tokens),
    }
    metrics.update(
        _present({"elapsed_prefill_s": stats.elapsed_prefill_s, "elapsed_decode_s": stats.elapsed_decode_s})
    )
    metrics.update(
        {
            "elapsed_total_s": elapsed,
            "throughput_completion_tok_s": _per_second(completion_tokens, elapsed),
            "throughput_total_tok_s": _per_second(prompt_tokens + completion_tokens, elapsed),
            "request_throughput_req_s": _per_second(len(succeeded), elapsed),
        }
    )
    if slo is not None and slo.bounded:
        met = sum(slo_met(r, slo) for r in records)
        metrics["goodput_req_s"] = _per_second(met, elapsed)
        metrics["slo_attainment"] = met / len(records) if records else 0.0
    answered = [r for r in succeeded if r.token_times_s]
    per_request_ms = [_latencies_ms(r) for r in answered]
    latencies_ms = {
        "ttft": [ttft for ttft, _, _ in per_request_ms],
        "tpot": [tpot for _, tpot, _ in per_request_ms if tpot is not None],
        "itl": [(b - a) * 1e3 for r in answered for a, b in itertools.pairwise(r.token_times_s)],
        "e2e": [e2e for _, _, e2e in per_request_ms],
    }
    # A figure with no samples (TPOT and ITL with one output token each, decode steps when every
    # request ends at its prefill) is left out, never reported as 0.
    for name, values_ms in latencies_ms.items():
        if values_ms:
            metrics[f"{name}_ms_mean"] = statistics.fmean(values_ms)
            metrics.update({f"{name}_ms_p{q}": percentile(values_ms, q) for q in PERCENTILES})
    if stats.decode_step_s:
        step_ms = [s * 1e3 for s in stats.decode_step_s]
        metrics["decode_step_ms_p50"] = percentile(step_ms, 50)
        metrics["decode_step_ms_mean"] = statistics.fmean(step_ms)
        metrics["mean_batch_size"] = statistics.fmean(stats.decode_batch_sizes)
    queries, hits = stats.prefix_cache_queries, stats.prefix_cache_hits
    hit_rate = None if queries is None or hits is None else hits / queries if queries else 0.0
    optional = {
        "peak_kv_blocks": stats.peak_kv_blocks,
        "kv_capacity_blocks": stats.kv_capacity_blocks,
        "prefix_cache_hit_rate": hit_rate,
        "preemptions": stats.preemptions,
        "peak_rss_mb": stats.peak_rss_mb,
        "cuda_max_allocated_mb": stats.cuda_max_allocated_mb,
        "cuda_max_reserved_mb": stats.cuda_max_reserved_mb,
    }
    metrics.update(_present(optional))
    return metrics


def _present(figures: dict[str, float | int | None]) -> dict[str, float]:
    """The figures that were measured, as floats; None (not seen: the engine's own over HTTP) is left out."""
    return {name: float(value) for name, value in figures.items() if value is not None}


def aggregate(passes: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and population standard deviation of each metric over repeated passes."""
    if not passes:
        raise ValueError("aggregate: no passes to aggregate")
    keys = passes[0].keys()
    if any(p.keys() != keys for p in passes):
        raise ValueError("aggregate: passes report different metrics; they must come from the same config")
    mean = {k: statistics.fmean(p[k] for p in passes) for k in keys}
    std = {k: statistics.pstdev(p[k] for p in passes) for k in keys}
    return mean, std


def slo_met(record: RequestRecord, slo: SloConfig) -> bool:
    """Whether a request met every bound of ``slo``; a failed or unanswered request did not."""
    if record.error is not None or not record.token_times_s:
        return False
    ttft_ms, tpot_ms, e2e_ms = _latencies_ms(record)
    return slo.met(ttft_ms, tpot_ms, e2e_ms)


def _latencies_ms(r: RequestRecord) -> tuple[float, float | None, float]:
    """An answered request's TTFT, TPOT (None with one output token) and E2E in ms, as pass_metrics's."""
    first, finish = r.token_times_s[0], _finish_s(r)
    tpot = (finish - first) / (r.num_completion_tokens - 1) * 1e3 if r.num_completion_tokens > 1 else None
    return (first - r.arrival_s) * 1e3, tpot, (finish - r.arrival_s) * 1e3


def request_rows(
    result: PassResult, detokenize: Callable[[list[int]], str | None], slo: SloConfig | None = None
) -> list[dict[str, Any]]:
    """One JSON-ready row per request (for outputs.jsonl); latencies in ms, ``None`` where not reached;
    ``text`` is ``None`` for a model without a tokenizer; under an SLO with a bound, whether the request
    met it (``slo_met``, what goodput counts)."""
    rows = []
    for r in result.records:
        first, finish = r.first_token_s, r.finish_s
        answered = r.error is None and bool(r.token_times_s)
        rows.append(
            {
                "request_id": r.request_id,
                "prompt_token_ids": list(r.prompt_token_ids),
                "output_token_ids": list(r.output_token_ids),
                "text": detokenize(r.output_token_ids),
                "arrival_s": r.arrival_s,
                "first_token_s": first,
                "finish_s": finish,
                "ttft_ms": None if first is None else (first - r.arrival_s) * 1e3,
                "tpot_ms": _latencies_ms(r)[1] if answered else None,
                "e2e_ms": None if finish is None else (finish - r.arrival_s) * 1e3,
                "finish_reason": r.finish_reason,
                "num_cached_tokens": r.num_cached_tokens,
                "num_preemptions": r.num_preemptions,
                "completion_tokens": r.num_completion_tokens,  # over HTTP: the server's usage
                "error": r.error,
            }
        )
        if slo is not None and slo.bounded:
            rows[-1]["slo_met"] = slo_met(r, slo)
    return rows


def percentile(values: Sequence[float], q: float) -> float:
    """``numpy.percentile``'s default (linear interpolation between order statistics)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _per_second(count: int, elapsed_s: float) -> float:
    return count / elapsed_s if elapsed_s > 0 else 0.0


def _finish_s(r: RequestRecord) -> float:
    # The finish time is the last token's; fall back to it if the scheduler left finish_s unset.
    return r.token_times_s[-1] if r.finish_s is None else r.finish_s
