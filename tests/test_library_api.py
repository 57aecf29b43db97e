"""The README's library API: ``rosebench.generate`` with the engine, no Hydra, against transformers' own
greedy generation on the same weights."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_engine_correctness import hf_greedy

import rosebench
from rosebench import Engine, EngineConfig, KVCacheConfig, SamplingParams, generate, load_tokenizer

PROMPTS = ["Hello world", "The", "A longer prompt, of several tokens, than the others"]
NEW_TOKENS = 6


def test_generate_gives_each_prompt_its_own_greedy_continuation_in_order(hf_tiny_dir: Path, hf_tiny_model):
    assert set(rosebench.__all__) >= {
        "Engine",
        "EngineConfig",
        "SamplingParams",
        "generate",
        "load_tokenizer",
    }
    engine = Engine(EngineConfig(weights=str(hf_tiny_dir), device="cpu", max_num_seqs=4))
    tokenizer = load_tokenizer()
    encoded = [tokenizer.encode(text) for text in PROMPTS]
    expected = [hf_greedy(hf_tiny_model, ids, NEW_TOKENS) for ids in encoded]
    assert all(len(ids) == NEW_TOKENS for ids in expected)  # no early end-of-text hides a length bug
    assert len({tuple(ids) for ids in expected}) == len(PROMPTS)  # distinct: a mix-up would show

    from_text = generate(engine, PROMPTS, SamplingParams(max_new_tokens=NEW_TOKENS))
    assert from_text == expected
    assert generate(engine, encoded, SamplingParams(max_new_tokens=NEW_TOKENS)) == expected  # token ids
    one_at_a_time = generate(engine, encoded, SamplingParams(max_new_tokens=NEW_TOKENS), max_batch_size=1)
    assert one_at_a_time == expected
    assert isinstance(tokenizer.decode(from_text[0]), str)  # the README's last line


def test_generate_defaults_to_sixteen_greedy_tokens_and_takes_no_prompt(hf_tiny_dir: Path, hf_tiny_model):
    engine = Engine(EngineConfig(weights=str(hf_tiny_dir), device="cpu", max_num_seqs=2))
    prompt = load_tokenizer().encode("Hello world")
    assert generate(engine, [prompt]) == [hf_greedy(hf_tiny_model, prompt, 16)]
    assert generate(engine, []) == []


class _Memory:
    available = 10 * 2**20  # what the engine reads of psutil.virtual_memory() on a CPU


def test_memory_fraction_sizes_the_slots_and_refuses_one_that_holds_no_sequence(monkeypatch):
    """engine.kv_cache.memory_fraction on a CPU with 10 MiB free (patched: this machine's free memory moves):
    a tiny float32 slot of 256 positions is 2 (K, V) x 2 layers x 64 wide x 4 bytes x 256 = 256 KiB."""
    import rosebench.engine.engine as engine_module

    monkeypatch.setattr(engine_module.psutil, "virtual_memory", _Memory)
    slot = 2 * 2 * 64 * 4 * 256

    def engine(fraction: float, **kwargs) -> Engine:
        kv = KVCacheConfig(memory_fraction=fraction)
        return Engine(EngineConfig(model="tiny", device="cpu", max_num_seqs=8, kv_cache=kv), **kwargs)

    assert engine(3.5 * slot / _Memory.available).max_num_seqs == 3  # whole slots only
    assert engine(1.0).max_num_seqs == 8  # never more than max_num_seqs
    with pytest.raises(ValueError) as refused:
        engine(0.9 * slot / _Memory.available)
    message = str(refused.value)
    assert message.startswith(f"engine.kv_cache.memory_fraction={0.9 * slot / _Memory.available}: ")
    assert "holds no sequence of max_model_len=256 (0 MiB each)" in message, message
    with pytest.raises(ValueError, match="holds no sequence"):  # one slot, taken by the static decode's
        engine(1.5 * slot / _Memory.available, static_decode=True)
