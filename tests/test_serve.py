"""``python -m rosebench.serve`` as its clients see it: a real uvicorn server on 127.0.0.1, the official
``openai`` package as an independent client, raw HTTP for what that client hides (status codes, error
bodies, a connection dropped mid-stream), real signals to the real process.

Correctness: greedy tokens through the server equal the in-process engine's (``rosebench.generate``)
and transformers' on the same weights; seeded sampling equals the in-process engine's.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import time
from pathlib import Path

import httpx
import openai
import psutil
import pytest
from safetensors.torch import load_file, save_file
from serve_helpers import Server, start_server
from test_engine_correctness import hf_greedy

from rosebench import generate
from rosebench.engine import Engine, EngineConfig, SamplingParams
from rosebench.engine.tokenizer import load_tokenizer

pytestmark = pytest.mark.slow

PROMPTS = ["The quick brown fox", "Hello, my name is", "In 1905, Einstein", "def main():"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, hf_tiny_dir: Path):
    """One server for the tests that only talk to it: transformers' tiny GPT-2 weights, 16 sequences."""
    running = start_server(
        tmp_path_factory.mktemp("serve"), f"engine.weights={hf_tiny_dir}", "engine.num_threads=1"
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def engine(hf_tiny_dir: Path) -> Engine:
    """The in-process reference: the same weights, the same engine."""
    return Engine(EngineConfig(weights=str(hf_tiny_dir), max_num_seqs=8))


def tokens(text: str) -> list[int]:
    return load_tokenizer().encode(text)


# -- the official client ------------------------------------------------------------------------------
def test_completion_greedy_tokens_equal_the_in_process_engine_and_transformers(
    client: openai.OpenAI, engine: Engine, hf_tiny_model
) -> None:
    expected = generate(engine, PROMPTS, SamplingParams(max_new_tokens=12, ignore_eos=True))
    for prompt, want in zip(PROMPTS, expected):
        assert want == hf_greedy(hf_tiny_model, tokens(prompt), 12)  # the reference agrees with itself
        reply = client.completions.create(
            model="ignored", prompt=prompt, max_tokens=12, temperature=0, extra_body={"ignore_eos": True,
                                                                                     "return_token_ids": True}
        )  # fmt: skip
        choice = reply.choices[0]
        assert choice.model_extra["token_ids"] == want
        assert choice.text == load_tokenizer().decode(want)
        assert choice.finish_reason == "length"
        assert reply.usage.prompt_tokens == len(tokens(prompt))
        assert reply.usage.completion_tokens == 12
        assert reply.usage.total_tokens == len(tokens(prompt)) + 12


def test_seeded_sampling_through_the_server_equals_in_process(client: openai.OpenAI, engine: Engine) -> None:
    params = SamplingParams(max_new_tokens=10, temperature=0.9, top_k=40, top_p=0.95, seed=7, ignore_eos=True)
    [expected] = generate(engine, [PROMPTS[0]], params)
    reply = client.completions.create(
        model="m", prompt=PROMPTS[0], max_tokens=10, temperature=0.9, top_p=0.95, seed=7,
        extra_body={"top_k": 40, "ignore_eos": True, "return_token_ids": True},
    )  # fmt: skip
    assert reply.choices[0].model_extra["token_ids"] == expected
    greedy = generate(engine, [PROMPTS[0]], SamplingParams(max_new_tokens=10, ignore_eos=True))[0]
    assert expected != greedy  # the premise: the seed and temperature changed the draw


def test_prompt_as_token_ids_and_streamed_text_with_usage(client: openai.OpenAI, engine: Engine) -> None:
    ids = tokens(PROMPTS[1])
    [expected] = generate(engine, [ids], SamplingParams(max_new_tokens=9, ignore_eos=True))
    stream = client.completions.create(
        model="m", prompt=ids, max_tokens=9, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    chunks = list(stream)
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(texts) == load_tokenizer().decode(expected)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    usage = chunks[-1].usage
    assert not chunks[-1].choices and usage.completion_tokens == 9 and usage.prompt_tokens == len(ids)


def test_chat_completion_streamed_and_whole_agree(client: openai.OpenAI, engine: Engine) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
    whole = client.chat.completions.create(model="m", messages=messages, max_tokens=8)
    stream = client.chat.completions.create(
        model="m", messages=messages, max_tokens=8, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content
    # The documented template, in-process: the same text.
    template = "system: Be brief.\nuser: Name a colour.\nassistant:"
    [expected] = generate(engine, [template], SamplingParams(max_new_tokens=8))
    assert whole.choices[0].message.content == load_tokenizer().decode(expected)
    assert whole.usage.prompt_tokens == len(tokens(template))
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == len(expected)


def test_stop_string_ends_the_text_before_it(client: openai.OpenAI, engine: Engine) -> None:
    [expected] = generate(engine, [PROMPTS[2]], SamplingParams(max_new_tokens=16, ignore_eos=True))
    text = load_tokenizer().decode(expected)
    stop = text[5:8]  # a stop string that the greedy text reaches, in the middle of a token or across two
    reply = client.completions.create(model="m", prompt=PROMPTS[2], max_tokens=16, stop=[stop],
                                      extra_body={"ignore_eos": True})  # fmt: skip
    assert reply.choices[0].text == text[: text.index(stop)]
    assert reply.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model="m", prompt=PROMPTS[2], max_tokens=16, stop=stop, stream=True,
                                         extra_body={"ignore_eos": True})  # fmt: skip
    assert "".join(c.choices[0].text for c in streamed) == text[: text.index(stop)]


def test_32_concurrent_streams_each_get_their_own_greedy_tokens(server: Server, engine: Engine) -> None:
    prompts = [tokens(f"Request number {i} says") for i in range(32)]
    lengths = [4 + i % 9 for i in range(32)]
    expected = [
        generate(engine, [p], SamplingParams(max_new_tokens=n, ignore_eos=True))[0]
        for p, n in zip(prompts, lengths)
    ]

    async def one(client: openai.AsyncOpenAI, prompt: list[int], n: int) -> list[int]:
        stream = await client.completions.create(
            model="m",
            prompt=prompt,
            max_tokens=n,
            stream=True,
            extra_body={"ignore_eos": True, "return_token_ids": True},
        )
        return [t async for chunk in stream for t in chunk.choices[0].model_extra["token_ids"]]

    async def all_of_them() -> list[list[int]]:
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        return await asyncio.gather(*(one(client, p, n) for p, n in zip(prompts, lengths)))

    assert asyncio.run(all_of_them()) == expected
    assert server.metric("rosebench:kv_blocks_used") == 0  # every finished request gave its blocks back


def test_models_health_and_metric_names(client: openai.OpenAI, server: Server, hf_tiny_dir: Path) -> None:
    [model] = client.models.list().data
    assert model.id == str(hf_tiny_dir) and model.model_extra["max_model_len"] == 256
    assert httpx.get(f"{server.url}/health").status_code == 200
    client.completions.create(model="m", prompt="x", max_tokens=1)  # a request has ended, by some reason
    text = httpx.get(f"{server.url}/metrics").text
    for name in (
        "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
        "rosebench:kv_blocks_used", "rosebench:kv_blocks_total", "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total", "vllm:num_preemptions_total", "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total", "vllm:request_success_total",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:inter_token_latency_seconds_bucket", "vllm:e2e_request_latency_seconds_bucket",
        "vllm:request_queue_time_seconds_bucket",
    ):  # fmt: skip
        assert f"\n{name}{{" in text, name
    before = server.metric("vllm:generation_tokens_total")
    client.completions.create(model="m", prompt="x", max_tokens=5, extra_body={"ignore_eos": True})
    assert server.metric("vllm:generation_tokens_total") == before + 5


# -- what the official client hides: statuses, error bodies, a dropped connection ---------------------
BAD_REQUESTS = {
    "malformed JSON": ("/v1/completions", b'{"prompt": "x",', None),
    "not an object": ("/v1/completions", b"[1, 2]", None),
    "wrong type": ("/v1/completions", {"prompt": "x", "max_tokens": "ten"}, "max_tokens"),
    "max_tokens 0": ("/v1/completions", {"prompt": "x", "max_tokens": 0}, "max_tokens"),
    "temperature < 0": ("/v1/completions", {"prompt": "x", "temperature": -0.5}, "temperature"),
    "top_p 0": ("/v1/completions", {"prompt": "x", "top_p": 0}, "top_p"),
    "seed 2**32": ("/v1/completions", {"prompt": "x", "seed": 2**32}, "seed"),
    "no prompt": ("/v1/completions", {"max_tokens": 3}, "prompt"),
    "empty prompt": ("/v1/completions", {"prompt": ""}, "prompt"),
    "token id past the vocabulary": ("/v1/completions", {"prompt": [1, 50257]}, "prompt"),
    "a batch of prompts": ("/v1/completions", {"prompt": ["a", "b"]}, "prompt"),
    "n=2": ("/v1/completions", {"prompt": "x", "n": 2}, "n"),
    "logprobs": ("/v1/completions", {"prompt": "x", "logprobs": 5}, "logprobs"),
    "min_tokens > max_tokens": (
        "/v1/completions",
        {"prompt": "x", "max_tokens": 3, "min_tokens": 4},
        "min_tokens",
    ),
    "max_tokens one past the context": (
        "/v1/completions",
        {"prompt": [5] * 6, "max_tokens": 251},
        "max_tokens",
    ),
    "prompt filling the context": ("/v1/completions", {"prompt": [5] * 256, "max_tokens": 1}, "prompt"),
    "chat: unknown role": (
        "/v1/chat/completions",
        {"messages": [{"role": "bot", "content": "x"}]},
        "messages.0.role",
    ),
    "chat: no messages": ("/v1/chat/completions", {"messages": []}, "messages"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_request_is_a_400_with_openais_error_body_naming_the_field(server: Server, case: str) -> None:
    path, body, param = BAD_REQUESTS[case]
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply = httpx.post(f"{server.url}{path}", content=content, headers={"Content-Type": "application/json"})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["code"] == 400 and error["param"] == param
    assert param is None or error["message"].startswith(f"{param}")
    assert "Traceback" not in server.log_text()


def test_the_last_token_that_fits_the_context_is_served(client: openai.OpenAI) -> None:
    """One below the limit of the case above: 6 prompt tokens + 250 = 256 positions."""
    reply = client.completions.create(
        model="m", prompt=[5] * 6, max_tokens=250, extra_body={"ignore_eos": True}
    )
    assert reply.usage.completion_tokens == 250


def test_a_client_that_disconnects_mid_stream_frees_its_blocks(server: Server) -> None:
    body = {"prompt": "Once upon a time", "max_tokens": 240, "stream": True, "ignore_eos": True}
    aborted_before = _aborted(server)
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body) as reply:
        lines = reply.iter_lines()
        while not next(lines).startswith("data:"):
            pass
        assert server.metric("rosebench:kv_blocks_used") > 0  # it holds blocks while it streams
    # the connection is closed: within a step or so the request is gone and its blocks are free
    deadline = time.monotonic() + 10
    while server.metric("rosebench:kv_blocks_used") > 0 or server.metric("vllm:num_requests_running") > 0:
        assert time.monotonic() < deadline, "the disconnected request still holds KV blocks"
        time.sleep(0.02)
    assert _aborted(server) == aborted_before + 1
    assert server.metric("vllm:generation_tokens_total") > 0


def _aborted(server: Server) -> float:
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith("vllm:request_success_total{") and 'finished_reason="abort"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_profile_switches_write_a_trace_and_its_summary(server: Server, client: openai.OpenAI) -> None:
    assert httpx.post(f"{server.url}/stop_profile").status_code == 400  # nothing to stop yet
    started = httpx.post(f"{server.url}/start_profile")
    assert started.status_code == 200, started.text
    assert httpx.post(f"{server.url}/start_profile").status_code == 400  # one at a time
    client.completions.create(model="m", prompt="profile me", max_tokens=8, extra_body={"ignore_eos": True})
    stopped = httpx.post(f"{server.url}/stop_profile", timeout=60).json()
    assert stopped["steps"] >= 8
    assert stopped["traces"] and all(Path(p).is_file() for p in stopped["traces"])
    summary = json.loads(Path(stopped["summary"]).read_text())
    assert summary["steps"] >= 1
    assert "rosebench.engine.decode" in Path(stopped["key_averages"]).read_text()


# -- servers of their own: keys, a full queue, NaN rows, signals ------------------------------------------
def test_api_key_is_required_and_never_written(tmp_path: Path) -> None:
    key = "sk-test-7Hq2"
    server = start_server(tmp_path / "s", "engine=tiny", f"serve.api_key={key}")
    try:
        body = {"prompt": "x", "max_tokens": 2}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": key}):
            reply = httpx.post(f"{server.url}/v1/completions", json=body, headers=headers)
            assert reply.status_code == 401 and reply.json()["error"]["type"] == "authentication_error"
        assert httpx.get(f"{server.url}/v1/models").status_code == 401
        ok = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key).completions.create(
            model="m", prompt="x", max_tokens=2
        )
        assert ok.usage.completion_tokens == 2
        assert httpx.get(f"{server.url}/health").status_code == 200  # probes need no key, as vLLM's
    finally:
        server.stop()
    written = [p for p in (tmp_path / "s").rglob("*") if p.is_file() and key in p.read_text(errors="replace")]
    assert written == []
    assert "api_key=***" in (tmp_path / "s" / ".hydra" / "overrides.yaml").read_text()


def test_a_full_queue_answers_503_with_retry_after(tmp_path: Path) -> None:
    """One sequence at a time, one request may wait: the third at once is refused, the first two finish."""
    server = start_server(
        tmp_path / "s",
        "engine=gpt2",
        "engine.max_model_len=160",
        "scheduler.max_batch_size=1",
        "serve.max_queued=1",
    )
    try:
        body = {"prompt": "x", "max_tokens": 150, "ignore_eos": True, "stream": True}

        async def three() -> list[int]:
            async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:

                async def streamed() -> int:
                    async with http.stream("POST", "/v1/completions", json=body) as reply:
                        await reply.aread()
                        return reply.status_code

                running = asyncio.create_task(streamed())
                while server.metric("vllm:num_requests_running") < 1:
                    await asyncio.sleep(0.01)
                waiting = asyncio.create_task(streamed())
                while server.metric("vllm:num_requests_waiting") < 1:
                    await asyncio.sleep(0.01)
                refused = await http.post("/v1/completions", json=body)
                assert refused.headers["Retry-After"] == "1"
                assert refused.json()["error"]["code"] == 503
                return [await running, await waiting, refused.status_code]

        assert asyncio.run(three()) == [200, 200, 503]
    finally:
        server.stop()


def test_a_request_with_non_finite_logits_fails_alone(tmp_path: Path, hf_tiny_dir: Path) -> None:
    """Positions from 20 on are NaN: a prompt that reaches them fails with 500, a short one beside it is
    served, and the server goes on."""
    weights = tmp_path / "nan-positions"
    shutil.copytree(hf_tiny_dir, weights)
    state = load_file(weights / "model.safetensors")
    state["transformer.wpe.weight"][20:] = float("nan")
    save_file(state, weights / "model.safetensors", metadata={"format": "pt"})
    server = start_server(tmp_path / "s", f"engine.weights={weights}")
    try:

        async def both() -> tuple[httpx.Response, httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
                long = {"prompt": [7] * 30, "max_tokens": 4}
                short = {"prompt": [7] * 5, "max_tokens": 4, "ignore_eos": True}
                return await asyncio.gather(http.post("/v1/completions", json=long),
                                            http.post("/v1/completions", json=short))  # fmt: skip

        failed, served = asyncio.run(both())
        assert failed.status_code == 500, failed.text
        assert "non-finite logits" in failed.json()["error"]["message"]
        assert served.status_code == 200 and served.json()["usage"]["completion_tokens"] == 4
        again = httpx.post(
            f"{server.url}/v1/completions", json={"prompt": [7] * 5, "max_tokens": 2, "ignore_eos": True}
        )
        assert again.status_code == 200
        assert server.metric("rosebench:kv_blocks_used") == 0
    finally:
        server.stop()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_lets_an_open_stream_finish_within_the_grace_period(
    tmp_path: Path, signum: int
) -> None:
    server = start_server(tmp_path / "s", "engine=gpt2", "engine.max_model_len=64", "serve.grace_s=60")
    try:
        body = {"prompt": "x", "max_tokens": 60, "ignore_eos": True, "stream": True, "return_token_ids": True}
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=120) as reply:
            lines = reply.iter_lines()
            first = next(line for line in lines if line.startswith("data:"))
            server.process.send_signal(signum)
            rest = [line for line in lines if line.startswith("data:")]
        events = [json.loads(line[5:]) for line in [first, *rest[:-1]]]
        assert rest[-1] == "data: [DONE]"
        assert sum(len(e["choices"][0]["token_ids"]) for e in events) == 60
        assert events[-1]["choices"][0]["finish_reason"] == "length"
        assert server.process.wait(60) == 128 + signum
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/health")
    finally:
        server.stop()


def test_a_stream_longer_than_the_grace_period_ends_with_an_error_event(tmp_path: Path) -> None:
    server = start_server(tmp_path / "s", "engine=gpt2", "engine.max_model_len=160", "serve.grace_s=0.5")
    children = psutil.Process(server.process.pid).children(recursive=True)
    try:
        body = {"prompt": "x", "max_tokens": 150, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=120) as reply:
            lines = reply.iter_lines()
            next(line for line in lines if line.startswith("data:"))
            server.process.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line.startswith("data:")]
        assert rest[-1] == "data: [DONE]"
        error = json.loads(rest[-2][5:])["error"]
        assert "shutting down" in error["message"] and error["code"] == 503
        assert server.process.wait(60) == 143
        assert not any(child.is_running() for child in children)  # no orphan
    finally:
        server.stop()


# -- config errors: one line, exit 1, before the engine is built ---------------------------------------
@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("serve.port=65536", "serve.port=65536: must be in [0, 65535]"),
        ("serve.max_queued=0", "serve.max_queued=0: must be >= 1"),
        ("serve.grace_s=-1", "serve.grace_s=-1.0: must be finite and >= 0"),
        ("serve.prot=1", "Key 'prot' not in 'ServeSettings'"),  # Hydra's own message for a typo
        ("+serve.prot=1", "serve.prot: no such key in serve"),  # a key added with +: nothing would read it
        ("engine.model=gpt5", "engine.model=gpt5: allowed values are"),
    ],
)
def test_a_bad_setting_is_one_line_and_exit_1(tmp_path: Path, override: str, says: str) -> None:
    with pytest.raises(RuntimeError) as failed:
        start_server(tmp_path / "s", "engine=tiny", override)
    log = (tmp_path / "s" / "server.log").read_text()
    assert "exit 1" in str(failed.value)
    assert says in log and "Traceback" not in log


def test_a_port_in_use_is_one_line(tmp_path: Path, server: Server) -> None:
    port = server.url.rsplit(":", 1)[1]
    with pytest.raises(RuntimeError):
        start_server(tmp_path / "s", "engine=tiny", f"serve.port={port}")
    log = (tmp_path / "s" / "server.log").read_text()
    assert f"serve.port={port}: cannot listen there" in log and "Traceback" not in log


def test_text_streams_in_whole_characters() -> None:
    """GPT-2's byte-level BPE splits multi-byte characters over tokens: no chunk may carry half of one."""
    from rosebench.serve.text import TextStream

    text = "naïve café — 日本語のテキスト 🎉🧪 Ω≈ç√"
    ids = load_tokenizer().encode(text)
    stream = TextStream(load_tokenizer(), stop=[])
    chunks = [stream.push([t]) for t in ids] + [stream.finish()]
    assert "".join(chunks) == text
    assert not any("\ufffd" in c for c in chunks)
    assert len(ids) > len(text.split())  # the premise: characters did span tokens
    with_stop = TextStream(load_tokenizer(), stop=["テキ"])
    assert "".join([with_stop.push([t]) for t in ids] + [with_stop.finish()]) == "naïve café — 日本語の"
    assert with_stop.stopped


def test_reset_prefix_cache_empties_it_when_idle(server: Server, client: openai.OpenAI) -> None:
    prompt = [11] * 40  # two full blocks of 16
    client.completions.create(model="m", prompt=prompt, max_tokens=2)
    hits = server.metric("vllm:prefix_cache_hits_total")
    client.completions.create(model="m", prompt=prompt, max_tokens=2)
    assert server.metric("vllm:prefix_cache_hits_total") == hits + 32  # the premise: it was cached
    assert httpx.post(f"{server.url}/reset_prefix_cache").status_code == 200
    client.completions.create(model="m", prompt=prompt, max_tokens=2)
    assert server.metric("vllm:prefix_cache_hits_total") == hits + 32  # nothing hit after the reset
