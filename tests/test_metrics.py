import pytest
from hypothesis import given
from hypothesis import strategies as st

from rosebench.metrics import aggregate, pass_metrics, percentile, request_rows
from rosebench.scheduler.records import PassResult, PassStats, RequestRecord

LATENCIES = ("ttft", "tpot", "itl", "e2e")
INTERFACE = {
    "requests", "failed_requests", "prompt_tokens", "completion_tokens", "total_tokens",
    "elapsed_prefill_s", "elapsed_decode_s", "elapsed_total_s",
    "throughput_completion_tok_s", "throughput_total_tok_s", "request_throughput_req_s",
    *(f"{name}_ms_{stat}" for name in LATENCIES for stat in ("mean", "p50", "p90", "p99")),
    "decode_step_ms_p50", "decode_step_ms_mean", "mean_batch_size",
    "peak_kv_blocks", "kv_capacity_blocks", "prefix_cache_hit_rate", "preemptions", "peak_rss_mb",
}  # fmt: skip


def records():
    # Times in seconds from the start of the pass; finish = last token time.
    def record(request_id, prompt, arrival_s, outputs, times, **kw):
        return RequestRecord(request_id, prompt, arrival_s, outputs, times, finish_s=times[-1], **kw)

    return [
        record(0, [1, 2, 3], 0.0, [5, 6, 7], [0.1, 0.3, 0.6], finish_reason="length", num_cached_tokens=2),
        record(1, [1, 2], 0.2, [8, 9], [0.5, 0.9], finish_reason="stop"),
        record(2, [4], 0.4, [10], [0.8]),
    ]


def stats(**overrides):
    values = dict(
        elapsed_total_s=2.0, elapsed_prefill_s=0.5, elapsed_decode_s=1.5,
        decode_step_s=[0.01, 0.04, 0.02], decode_batch_sizes=[2, 1, 1],
        preemptions=1, peak_kv_blocks=5, kv_capacity_blocks=100,
        prefix_cache_queries=40, prefix_cache_hits=30, peak_rss_mb=123.5,
    )  # fmt: skip
    return PassStats(**{**values, **overrides})


def test_metric_names_are_the_interface():
    m = pass_metrics(PassResult(records(), stats()))
    assert set(m) == INTERFACE
    assert all(isinstance(v, float) for v in m.values())


def test_counts_and_throughput():
    m = pass_metrics(PassResult(records(), stats()))
    assert (m["requests"], m["prompt_tokens"], m["completion_tokens"], m["total_tokens"]) == (3, 6, 6, 12)
    assert m["failed_requests"] == 0
    assert m["throughput_completion_tok_s"] == pytest.approx(6 / 2.0)
    assert m["throughput_total_tok_s"] == pytest.approx(12 / 2.0)
    assert m["request_throughput_req_s"] == pytest.approx(3 / 2.0)
    assert (m["elapsed_prefill_s"], m["elapsed_decode_s"], m["elapsed_total_s"]) == (0.5, 1.5, 2.0)


# Hand-computed from records() (values in ms; percentiles interpolate between sorted values):
# TTFT: 0.1-0.0, 0.5-0.2, 0.8-0.4          -> [100, 300, 400]; p90 at rank 1.8 -> 300 + 0.8*100
# TPOT: (0.6-0.1)/2, (0.9-0.5)/1; req 2 has 1 token, excluded -> [250, 400]; p90 at rank 0.9
# ITL:  0.2, 0.3 (req 0), 0.4 (req 1)     -> [200, 300, 400]
# E2E:  0.6-0.0, 0.9-0.2, 0.8-0.4          -> [600, 700, 400]
EXPECTED = {
    "ttft": {"mean": 800 / 3, "p50": 300, "p90": 380, "p99": 398},
    "tpot": {"mean": 325, "p50": 325, "p90": 385, "p99": 398.5},
    "itl": {"mean": 300, "p50": 300, "p90": 380, "p99": 398},
    "e2e": {"mean": 1700 / 3, "p50": 600, "p90": 680, "p99": 698},
}


@pytest.mark.parametrize("name", LATENCIES)
def test_latency_mean_and_percentiles(name):
    m = pass_metrics(PassResult(records(), stats()))
    for stat, value in EXPECTED[name].items():
        assert m[f"{name}_ms_{stat}"] == pytest.approx(value), stat


def test_ttft_counts_from_arrival_not_from_pass_start():
    late = RequestRecord(0, [1], arrival_s=5.0, output_token_ids=[2], token_times_s=[5.25], finish_s=5.25)
    m = pass_metrics(PassResult([late], stats()))
    assert m["ttft_ms_mean"] == pytest.approx(250) and m["e2e_ms_mean"] == pytest.approx(250)


def test_engine_figures():
    m = pass_metrics(PassResult(records(), stats()))
    assert m["decode_step_ms_p50"] == pytest.approx(20)
    assert m["decode_step_ms_mean"] == pytest.approx(70 / 3)
    assert m["mean_batch_size"] == pytest.approx(4 / 3)
    assert m["prefix_cache_hit_rate"] == pytest.approx(0.75)
    assert (m["peak_kv_blocks"], m["kv_capacity_blocks"], m["preemptions"]) == (5, 100, 1)
    assert m["peak_rss_mb"] == 123.5


def test_figures_without_samples_are_absent_not_zero():
    single = [RequestRecord(0, [1], arrival_s=0.0, output_token_ids=[2], token_times_s=[0.1], finish_s=0.1)]
    m = pass_metrics(
        PassResult(
            single,
            stats(prefix_cache_queries=0, prefix_cache_hits=0, decode_step_s=[], decode_batch_sizes=[]),
        )
    )
    assert m["prefix_cache_hit_rate"] == 0.0  # nothing looked up, nothing hit
    absent = {k for k in m if k.startswith(("tpot_", "itl_", "decode_step_")) or k == "mean_batch_size"}
    assert absent == set(), f"figures with no samples reported: {absent}"
    assert m["ttft_ms_p50"] == pytest.approx(100.0) and m["e2e_ms_mean"] == pytest.approx(100.0)
    assert pass_metrics(PassResult(single, stats(elapsed_total_s=0.0)))["throughput_total_tok_s"] == 0.0


def test_optional_memory_figures_only_when_measured():
    m = pass_metrics(PassResult(records(), stats(cuda_max_allocated_mb=10.0, cuda_max_reserved_mb=12.0)))
    assert (m["cuda_max_allocated_mb"], m["cuda_max_reserved_mb"]) == (10.0, 12.0)
    assert "peak_rss_mb" not in pass_metrics(PassResult(records(), stats(peak_rss_mb=None)))


def test_percentile_by_hand():
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == pytest.approx(2.5)
    assert percentile([4.0, 1.0, 3.0, 2.0], 90) == pytest.approx(3.7)  # rank 2.7 -> 3 + 0.7
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)  # callers leave such a figure out instead


@given(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=30),
    st.floats(0, 100),
)
def test_percentile_matches_numpy(values, q):
    np = pytest.importorskip("numpy")
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), abs=1e-6)


def test_aggregate_mean_and_population_std():
    mean, std = aggregate([{"a": 1.0, "b": 10.0}, {"a": 3.0, "b": 10.0}, {"a": 8.0, "b": 10.0}])
    assert mean == {"a": pytest.approx(4.0), "b": pytest.approx(10.0)}
    # population std of [1, 3, 8]: deviations -3, -1, 4 -> sqrt(26 / 3)
    assert std == {"a": pytest.approx((26 / 3) ** 0.5), "b": 0.0}


def test_aggregate_rejects_empty_and_mismatched():
    with pytest.raises(ValueError, match="no passes"):
        aggregate([])
    with pytest.raises(ValueError, match="different metrics"):
        aggregate([{"a": 1.0}, {"b": 1.0}])


def test_request_rows():
    unfinished = RequestRecord(3, [1], arrival_s=1.0, num_preemptions=2)
    rows = request_rows(PassResult([*records(), unfinished], stats()), lambda ids: ",".join(map(str, ids)))
    assert [r["request_id"] for r in rows] == [0, 1, 2, 3]
    first = rows[0]
    assert first["text"] == "5,6,7"
    assert (first["prompt_token_ids"], first["output_token_ids"]) == ([1, 2, 3], [5, 6, 7])
    assert (first["arrival_s"], first["first_token_s"], first["finish_s"]) == (0.0, 0.1, 0.6)
    assert first["ttft_ms"] == pytest.approx(100) and first["e2e_ms"] == pytest.approx(600)
    assert (first["finish_reason"], first["num_cached_tokens"]) == ("length", 2)
    assert rows[1]["ttft_ms"] == pytest.approx(300) and rows[1]["finish_reason"] == "stop"
    assert rows[3]["ttft_ms"] is None and rows[3]["e2e_ms"] is None and rows[3]["text"] == ""
    assert [r["num_preemptions"] for r in rows] == [0, 0, 0, 2]


def test_a_failed_request_is_counted_and_adds_no_figure():
    failed = RequestRecord(3, [1, 2, 3, 4], 0.0, [11], [0.05], finish_s=0.05, error="HTTP 500: boom")
    with_failure = pass_metrics(PassResult([*records(), failed], stats()))
    without = pass_metrics(PassResult(records(), stats()))
    assert (with_failure["requests"], with_failure["failed_requests"]) == (4, 1)
    same = set(without) - {"requests", "failed_requests"}
    assert {k: with_failure[k] for k in same} == {k: without[k] for k in same}


def test_tpot_and_completion_tokens_use_the_servers_count_not_the_chunks():
    # Over HTTP one chunk may carry several tokens: 2 chunks carrying 5 tokens (the server's usage).
    chunked = RequestRecord(0, [1], 0.0, [5, 6, 7, 8, 9], [0.1, 0.5], finish_s=0.5, completion_tokens=5)
    m = pass_metrics(PassResult([chunked], stats()))
    assert m["completion_tokens"] == 5
    assert m["tpot_ms_mean"] == pytest.approx((0.5 - 0.1) / 4 * 1e3)
    assert m["itl_ms_mean"] == pytest.approx(400)  # between the two chunks


def test_engine_figures_not_seen_are_absent():
    unseen = dict.fromkeys(
        ("elapsed_prefill_s", "elapsed_decode_s", "preemptions", "peak_kv_blocks", "kv_capacity_blocks",
         "prefix_cache_queries", "prefix_cache_hits", "peak_rss_mb"),
    )  # fmt: skip
    m = pass_metrics(PassResult(records(), stats(**unseen, decode_step_s=[], decode_batch_sizes=[])))
    engine_only = {
        "elapsed_prefill_s", "elapsed_decode_s", "decode_step_ms_p50", "decode_step_ms_mean",
        "mean_batch_size", "peak_kv_blocks", "kv_capacity_blocks", "prefix_cache_hit_rate", "preemptions",
        "peak_rss_mb",
    }  # fmt: skip
    assert set(m) == INTERFACE - engine_only
