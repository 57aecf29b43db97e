"""rosebench.serve and target=serve with a Llama-family model: a real uvicorn server decodes with the
model's own tokenizer and stops at the model's own EOS (as the engine in-process does); a random-weights
preset without a tokenizer serves token ids only and refuses text with a 400 that says how to give one;
``target=serve`` runs such a preset end to end on token ids and refuses a text workload before timing."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest
from cli_helpers import assert_ok, describe, read_outputs, read_results, run_cli
from serve_helpers import start_server
from test_hf_tokenizer import save_tokenizer
from test_llama_parity import save_hf_model

from rosebench import generate
from rosebench.engine import Engine, EngineConfig, SamplingParams

pytestmark = pytest.mark.slow

PROMPT = "Hello world, the quick brown"
MAX_TOKENS = 24
LLAMA_TINY = ("engine=llama-tiny", "engine.num_threads=1", "engine.max_num_seqs=4")


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with a byte-level tokenizer.json (its vocabulary the model's), whose config.json
    EOS is a token its greedy continuation of PROMPT reaches: generation must stop there. That EOS is not
    the tokenizer's own (tokenizer_config.json's <|endoftext|>), which the engine does not stop at."""
    from tokenizers import Tokenizer

    folder = tmp_path_factory.mktemp("llama_served")
    save_tokenizer(folder)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    save_hf_model("llama", {"num_key_value_heads": 2, "eos_token_id": 0, "vocab_size": vocab}, folder)
    engine = Engine(EngineConfig(weights=str(folder), max_num_seqs=1))
    [free] = generate(engine, [PROMPT], SamplingParams(max_new_tokens=MAX_TOKENS, ignore_eos=True))
    own_eos = tokenizer.token_to_id("<|endoftext|>")
    eos = next(t for i, t in enumerate(free) if i >= 3 and t not in free[:i] and t not in (0, own_eos))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "eos_token_id": eos}))
    return folder


def test_a_folder_streams_its_own_tokenizers_text_and_stops_at_its_own_eos(
    llama_folder: Path, tmp_path: Path
) -> None:
    from tokenizers import Tokenizer

    engine = Engine(EngineConfig(weights=str(llama_folder), max_num_seqs=1))
    [expected] = generate(engine, [PROMPT], SamplingParams(max_new_tokens=MAX_TOKENS))
    eos = json.loads((llama_folder / "config.json").read_text())["eos_token_id"]
    assert expected[-1] == eos and len(expected) < MAX_TOKENS  # the reference stops at the model's EOS
    server = start_server(tmp_path / "server", f"engine.weights={llama_folder}", "engine.num_threads=1")
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        stream = client.completions.create(
            model="ignored", prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0, stream=True,
            extra_body={"return_token_ids": True},
        )  # fmt: skip
        chunks = list(stream)
    finally:
        server.stop()
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    ids = [t for c in chunks if c.choices for t in c.choices[0].model_extra.get("token_ids") or []]
    assert ids == expected
    assert text == Tokenizer.from_file(str(llama_folder / "tokenizer.json")).decode(expected)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory: pytest.TempPathFactory):
    running = start_server(tmp_path_factory.mktemp("serve_llama_tiny"), *LLAMA_TINY)
    yield running
    running.stop()


def test_a_preset_without_tokenizer_serves_token_ids_with_empty_text(tiny_server) -> None:
    prompt = [5, 17, 300, 4096, 49000]
    engine = Engine(EngineConfig(model="llama-tiny", max_num_seqs=1))
    [expected] = generate(engine, [prompt], SamplingParams(max_new_tokens=6, ignore_eos=True))
    client = openai.OpenAI(base_url=f"{tiny_server.url}/v1", api_key="unused", max_retries=0)
    chunks = list(
        client.completions.create(
            model="ignored",
            prompt=prompt,
            max_tokens=6,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},  # no return_token_ids: without text, the ids come anyway
        )  # fmt: skip
    )
    choices = [c.choices[0] for c in chunks if c.choices]
    assert [t for c in choices for t in c.model_extra["token_ids"]] == expected
    assert all(c.text == "" for c in choices) and choices[-1].finish_reason == "length"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"prompt": "Hello", "max_tokens": 4}, "prompt"),
        ("/v1/completions", {"prompt": [1, 2], "max_tokens": 4, "stop": "x"}, "stop"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]}, "messages"),
    ],
)
def test_a_preset_without_tokenizer_refuses_text_with_a_400_that_says_how(
    tiny_server, path: str, body: dict, param: str
) -> None:
    answer = httpx.post(f"{tiny_server.url}{path}", json={"model": "m", **body}, timeout=60)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    for words in ("llama-tiny has random weights and no tokenizer", "token ids", "engine.weights="):
        assert words in error["message"], error["message"]


def test_target_serve_runs_a_preset_without_tokenizer_on_token_ids(tmp_path: Path) -> None:
    proc = run_cli(
        tmp_path, *LLAMA_TINY, "workload=random", "workload.input_len=12", "target=serve", "tracking=off",
        "num_requests=4", "max_new_tokens=8", "sampling.ignore_eos=true", "warmup=0", "repeat=1",
    )  # fmt: skip
    assert_ok(proc)
    run_dir = next(tmp_path.glob("outputs/*/*"))
    results, rows = read_results(run_dir), read_outputs(run_dir)
    assert results["target"]["prompt"] == "token_ids" and results["model"]["architecture"] == "llama"
    assert results["metrics"]["prompt_tokens"] == 4 * 12 and results["metrics"]["completion_tokens"] == 4 * 8
    assert all(r["text"] is None and len(r["output_token_ids"]) == 8 for r in rows)
    # drawn within the model's vocabulary, not GPT-2's
    assert max(t for r in rows for t in r["prompt_token_ids"]) < 49152


def test_target_http_draws_from_a_named_models_vocabulary(tiny_server, tmp_path: Path) -> None:
    """A server someone else started: naming its model (engine=llama-tiny) makes the client draw prompts
    from that model's vocabulary and count its token ids, not GPT-2's (192 ids drawn below GPT-2's 50256
    would all fall below 49152 with a chance of 1.4%)."""
    proc = run_cli(
        tmp_path, *LLAMA_TINY, "workload=random", "workload.input_len=64", "target=http",
        f"target.url={tiny_server.url}/v1", "tracking=off", "num_requests=3", "max_new_tokens=5",
        "sampling.ignore_eos=true", "warmup=0", "repeat=1",
    )  # fmt: skip
    assert_ok(proc)
    run_dir = next(tmp_path.glob("outputs/*/*"))
    results, rows = read_results(run_dir), read_outputs(run_dir)
    assert results["metrics"]["prompt_tokens"] == 3 * 64 and results["metrics"]["completion_tokens"] == 3 * 5
    assert all(len(r["output_token_ids"]) == 5 and r["text"] is None for r in rows)
    assert max(t for r in rows for t in r["prompt_token_ids"]) < 49152


def test_target_serve_refuses_a_text_workload_without_tokenizer_before_timing(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, *LLAMA_TINY, "workload=fixed", "target=serve", "tracking=off")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, describe(proc)
    assert len(lines) == 1, describe(proc)
    assert lines[0].startswith("rosebench: error: engine.model=llama-tiny"), describe(proc)
    assert "no tokenizer" in lines[0] and "engine.weights=" in lines[0], describe(proc)
    assert not list(tmp_path.glob("outputs/*/*/server.log"))  # refused before any server started


@pytest.mark.parametrize("asked", ["target.prompt=text", "target.endpoint=chat"])
def test_target_serve_refuses_text_prompts_without_tokenizer(tmp_path: Path, asked: str) -> None:
    proc = run_cli(tmp_path, *LLAMA_TINY, "workload=random", "target=serve", "tracking=off", asked)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, describe(proc)
    assert lines[0].startswith(f"rosebench: error: {asked}: engine.model=llama-tiny"), describe(proc)


def test_a_kv_cache_too_large_for_memory_says_to_set_max_model_len() -> None:
    with pytest.raises(ValueError, match="engine.max_model_len") as refused:
        Engine(EngineConfig(model="tiny", max_num_seqs=10**6))  # ~244 GiB of KV cache
    assert "the model's whole context, as none was set" in str(refused.value)
