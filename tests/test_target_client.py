"""The streaming HTTP client (rosebench.target.client) against GuideLLM's mock-server, a server nobody here
wrote whose latencies the test sets: the client's TTFT and ITL must be what was set, its token counts what
the server's usage says, and every failure counted with its status and body.

Bounds are generous on purpose: a loaded 2-core machine only delays chunks (a figure can come out later
than set, never earlier), so each lower bound is what was set minus clock slack, and each upper bound
leaves hundreds of milliseconds for a busy machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from guidellm_mock import MockServer, free_port, mock_server
from test_architecture import modules, offending

from rosebench import metrics
from rosebench.engine.sequence import SamplingParams
from rosebench.engine.tokenizer import load_tokenizer
from rosebench.target.client import (
    Connection,
    RequestFormat,
    TargetError,
    api_root,
    model_ids,
    probe,
    prometheus_values,
    request_body,
    run_pass,
)
from rosebench.workload.request import Request

TTFT_MS, ITL_MS = 200.0, 20.0
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockServer]:
    # --output-tokens far above max_tokens: every request generates exactly its max_tokens.
    folder = tmp_path_factory.mktemp("mock")
    with mock_server(
        folder, "--ttft-ms", str(TTFT_MS), "--itl-ms", str(ITL_MS), "--output-tokens", "1000"
    ) as m:
        yield m


def requests(count: int, arrivals: list[float] | None = None, new_tokens: int = NEW_TOKENS) -> list[Request]:
    tokenizer = load_tokenizer()
    ids = tokenizer.encode("Hello world")
    return [
        Request(
            request_id=i,
            prompt_token_ids=ids,
            params=SamplingParams(max_new_tokens=new_tokens),
            arrival_s=0.0 if arrivals is None else arrivals[i],
            prompt_text="Hello world",
        )
        for i in range(count)
    ]


def text_format(endpoint: str = "completions") -> RequestFormat:
    return RequestFormat("mock", endpoint, send_token_ids=False, tokenizer=load_tokenizer())


@pytest.mark.slow  # starts GuideLLM's mock-server
@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_ttft_and_itl_are_what_the_server_was_set_to(mock: MockServer, endpoint: str) -> None:
    sent = run_pass(
        Connection(mock.url), text_format(endpoint), requests(4), replay_arrivals=False, max_concurrency=None
    )
    assert sent.failures == []
    m = metrics.pass_metrics(sent.result)
    assert TTFT_MS - 2 <= m["ttft_ms_p50"] <= TTFT_MS + 300, m
    assert ITL_MS - 5 <= m["itl_ms_p50"] <= ITL_MS + 60, m
    assert ITL_MS - 5 <= m["tpot_ms_p50"] <= ITL_MS + 60, m
    # E2E: the first chunk after TTFT, then NEW_TOKENS - 1 gaps (and the finish chunk right after the last)
    assert m["e2e_ms_p50"] >= TTFT_MS + (NEW_TOKENS - 1) * ITL_MS - 10, m
    # Counts are the server's usage: max_tokens each; one content chunk per token with this server.
    assert m["completion_tokens"] == 4 * NEW_TOKENS
    assert sent.counted_by_server == 4 and sent.counted_by_tokenizer == 0
    for record in sent.result.records:
        assert record.completion_tokens == NEW_TOKENS and len(record.token_times_s) == NEW_TOKENS
        assert record.finish_reason == "stop" and record.error is None
        assert record.finish_s >= record.token_times_s[-1] >= record.token_times_s[0] > record.arrival_s
    # No return_token_ids from this server: the ids in outputs.jsonl are re-tokenized, and flagged so.
    assert sent.ids_from_tokenizer == 4 and sent.ids_from_server == 0
    assert not any(metric in m for metric in ("elapsed_prefill_s", "mean_batch_size", "preemptions"))


@pytest.mark.slow  # starts GuideLLM's mock-server
def test_arrivals_are_replayed_and_max_concurrency_holds_requests_back(mock: MockServer) -> None:
    arrivals = [0.0, 0.3, 0.6]
    sent = run_pass(Connection(mock.url), text_format(), requests(3, arrivals), replay_arrivals=True,
                    max_concurrency=None)  # fmt: skip
    sends = [r.arrival_s for r in sent.result.records]
    for due, send in zip(arrivals, sends, strict=True):
        assert due <= send <= due + 0.2, sends
    # One place: each request is sent only when the one before it has finished, as vLLM's semaphore does.
    sent = run_pass(
        Connection(mock.url), text_format(), requests(3), replay_arrivals=False, max_concurrency=1
    )
    records = sent.result.records
    for before, after in zip(records, records[1:]):
        assert after.arrival_s >= before.finish_s
    assert sent.result.stats.elapsed_total_s >= 3 * TTFT_MS / 1e3


@pytest.mark.slow  # starts GuideLLM's mock-server
def test_a_server_refusing_token_ids_answers_4xx_to_the_probe(mock: MockServer) -> None:
    ids = RequestFormat("mock", "completions", send_token_ids=True, tokenizer=load_tokenizer())
    failure = probe(Connection(mock.url), ids, requests(1)[0])
    assert failure is not None and failure.status == 400 and "prompt" in failure.body
    assert probe(Connection(mock.url), text_format(), requests(1)[0]) is None


@pytest.mark.slow  # starts GuideLLM's mock-server
def test_failed_requests_are_counted_with_their_status_and_body(tmp_path: Path) -> None:
    with mock_server(tmp_path, "--ttft-ms", "10", "--itl-ms", "1", "--fail-after-requests", "2") as failing:
        sent = run_pass(Connection(failing.url), text_format(), requests(5, new_tokens=3),
                        replay_arrivals=True, max_concurrency=1)  # fmt: skip
    assert [f.request_id for f in sent.failures] == [2, 3, 4]
    assert all(f.status == 500 and "fail_after_requests" in f.body for f in sent.failures)
    assert all(f.error.startswith("HTTP 500: ") for f in sent.failures)
    m = metrics.pass_metrics(sent.result)
    assert (m["requests"], m["failed_requests"], m["completion_tokens"]) == (5, 3, 6)
    assert m["request_throughput_req_s"] == pytest.approx(2 / m["elapsed_total_s"])


@pytest.mark.slow  # starts GuideLLM's mock-server
def test_a_timeout_is_a_failed_request_not_a_hang(mock: MockServer) -> None:
    connection = Connection(mock.url, timeout_s=0.05)  # the server waits TTFT_MS before its first chunk
    sent = run_pass(connection, text_format(), requests(2), replay_arrivals=False, max_concurrency=None)
    assert len(sent.failures) == 2 and all("within 0.05 s" in f.error for f in sent.failures)
    assert metrics.pass_metrics(sent.result)["failed_requests"] == 2


@pytest.mark.slow  # starts GuideLLM's mock-server
def test_models_and_unreachable_servers(mock: MockServer) -> None:
    assert model_ids(Connection(api_root(mock.url + "/v1/"))) == ["llama-3.1-8b-instruct"]
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TargetError, match=r"^GET http://127\.0\.0\.1:\d+/v1/models: cannot reach the server"):
        model_ids(Connection(closed))


def test_request_body_sampling_and_prompt_forms() -> None:
    tokenizer = load_tokenizer()
    greedy = Request(0, [15496], SamplingParams(max_new_tokens=5, ignore_eos=True), prompt_text="Hello")
    body = request_body(greedy, RequestFormat("m", "completions", True, tokenizer), "Hello")
    assert body["prompt"] == [15496] and body["temperature"] == 0.0 and body["max_tokens"] == 5
    assert body["stream"] and body["stream_options"] == {"include_usage": True} and body["ignore_eos"]
    assert body["return_token_ids"] and not {"top_p", "top_k", "seed", "min_tokens"} & body.keys()
    sampled = Request(
        1,
        [15496],
        SamplingParams(max_new_tokens=5, temperature=0.8, top_k=40, top_p=0.9, seed=7, min_tokens=2),
    )
    body = request_body(sampled, RequestFormat("m", "chat", False, tokenizer), "Hello")
    assert body["messages"] == [{"role": "user", "content": "Hello"}] and "prompt" not in body
    assert (body["top_k"], body["top_p"], body["seed"], body["min_tokens"]) == (40, 0.9, 7, 2)


def test_prometheus_values_sum_label_sets() -> None:
    text = (
        "# HELP vllm:num_preemptions_total Requests preempted.\n"
        "# TYPE vllm:num_preemptions_total counter\n"
        'vllm:num_preemptions_total{model_name="tiny"} 3.0\n'
        'vllm:request_success_total{finished_reason="stop",model_name="tiny"} 2.0\n'
        'vllm:request_success_total{finished_reason="length",model_name="tiny"} 5.0\n'
    )
    assert prometheus_values(text) == {"vllm:num_preemptions_total": 3.0, "vllm:request_success_total": 7.0}


def test_the_client_talks_to_servers_only_over_http() -> None:
    # The runner uses rosebench.target; the target knows neither the runner nor rosebench's own server.
    assert offending(modules("target"), ("rosebench.serve", "rosebench.runner", "rosebench.__main__")) == {}
