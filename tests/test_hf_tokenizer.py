"""A Llama-family folder's ``tokenizer.json`` (Hugging Face ``tokenizers``) with its own EOS, and the
one-line refusal of text prompts by a random-weights preset that has no tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import FAST, assert_ok, describe, read_outputs, read_results, run_cli
from test_llama_parity import save_hf_model

from rosebench.engine.config import MODEL_PRESETS
from rosebench.engine.tokenizer import (
    HFTokenizer,
    NoTokenizer,
    StreamDetokenizer,
    detokenize,
    model_tokenizer,
)

TEXT = "Hello café 🙂 東京, the quick brown fox<|endoftext|>"


def save_tokenizer(folder: Path) -> None:
    """A byte-level BPE trained on a few sentences (as GPT-2's, SmolLM2's and Qwen2's are), whose
    tokenizer_config.json names its EOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|im_start|>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(
        ["Hello world, the quick brown fox jumps over the lazy dog. café 東京 🙂"] * 20, trainer
    )
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("llama_with_tokenizer")
    save_hf_model("llama", {"num_key_value_heads": 2, "eos_token_id": 0}, folder)
    save_tokenizer(folder)
    return folder


def test_folder_tokenizer_round_trips_and_streams(llama_folder: Path) -> None:
    from tokenizers import Tokenizer

    shape = MODEL_PRESETS["llama-tiny"]
    tokenizer = model_tokenizer(shape, str(llama_folder), "engine.weights=x")
    assert isinstance(tokenizer, HFTokenizer)
    ids = tokenizer.encode(TEXT)
    assert ids == Tokenizer.from_file(str(llama_folder / "tokenizer.json")).encode(TEXT).ids
    assert tokenizer.decode(ids) == TEXT
    stream = StreamDetokenizer(tokenizer)  # multi-byte characters split over tokens come out whole
    assert "".join(stream.push(t) for t in ids) + stream.flush() == TEXT
    assert tokenizer.eot_token == 1  # tokenizer_config.json's "<|endoftext|>", not the model's EOS (0)
    assert detokenize(tokenizer, [*ids, 400]) == TEXT + "<|unknown:400|>"


def test_gpt2_keeps_tiktoken_and_a_random_preset_has_no_tokenizer() -> None:
    assert model_tokenizer(MODEL_PRESETS["tiny"], None, "engine.model=tiny").name == "gpt2"
    none = model_tokenizer(MODEL_PRESETS["llama-tiny"], None, "engine.model=llama-tiny")
    assert isinstance(none, NoTokenizer) and none.decode([1, 2]) is None


def test_cli_runs_text_through_the_folder_tokenizer(llama_folder: Path, tmp_path: Path) -> None:
    proc = run_cli(
        tmp_path,
        *FAST,
        f"engine.weights={llama_folder}",
        "num_requests=1",
        "max_new_tokens=4",
        "workload.prompt='Hello café'",
    )
    assert_ok(proc)
    [row] = read_outputs(next(tmp_path.glob("outputs/*/*")))
    assert row["prompt_token_ids"] == HFTokenizer(llama_folder, MODEL_PRESETS["llama-tiny"]).encode(
        "Hello café"
    )
    assert isinstance(row["text"], str) and row["completion_tokens"] >= 1


def test_cli_random_preset_refuses_text_in_one_line(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "engine=llama-tiny", "tracking=off", "warmup=0", "repeat=1", "workload=fixed")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, describe(proc)
    assert len(lines) == 1 and lines[0].startswith("rosebench: error: engine.model=llama-tiny"), describe(
        proc
    )
    for word in ("no tokenizer", "engine.weights=", "tokenizer.json", "workload=random", "prompt_token_ids"):
        assert word in lines[0], describe(proc)
    assert not list(tmp_path.glob("outputs/*/*/results.json"))


def test_cli_random_preset_runs_token_ids(tmp_path: Path) -> None:
    proc = run_cli(
        tmp_path,
        "engine=llama-tiny",
        "tracking=off",
        "warmup=0",
        "repeat=1",
        "workload=random",
        "workload.input_len=8",
        "num_requests=2",
        "max_new_tokens=3",
        "sampling.ignore_eos=true",
    )
    assert_ok(proc)
    rows = read_outputs(next(tmp_path.glob("outputs/*/*")))
    assert [len(r["output_token_ids"]) for r in rows] == [3, 3] and all(r["text"] is None for r in rows)
    assert all(0 <= t < MODEL_PRESETS["llama-tiny"].vocab_size for r in rows for t in r["prompt_token_ids"])
    # The cache's figures count K/V heads: 2 (K and V) x 2 layers x 2 K/V heads (of 4) x 16 x 4 bytes.
    model = read_results(next(tmp_path.glob("outputs/*/*")))["model"]
    assert (model["n_head"], model["n_kv_head"], model["kv_bytes_per_token"]) == (4, 2, 2 * 2 * 2 * 16 * 4)
