"""The Llama family (Llama, Mistral, Qwen2) against transformers with the same random weights.

Tiny random configs are saved as Hugging Face folders and loaded by the engine: every K/V-group ratio from
multi-head (4 K/V heads for 4 query heads) through grouped (2) to multi-query (1), with and without q/k/v
biases, tied and untied heads, and Llama 3's RoPE scaling. Greedy tokens must be identical over 32 tokens
(eager, the static decode step and the compiled step), logits within float32 rounding, bf16 and fp16 within
the rounding rule of the GPT-2 tests, and preemption and prefix hits must change no token.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from cli_helpers import FAST, describe, run_cli

from rosebench.engine import Engine, EngineConfig, KVCacheConfig, SamplingParams, Sequence
from rosebench.engine.attention import StepBatch
from rosebench.engine.config import MODEL_PRESETS
from rosebench.engine.cpu_linear import PackedLinear
from rosebench.engine.kv_cache import SlotKVCache
from rosebench.engine.weights import WeightsError, build_model
from rosebench.scheduler import OfflineScheduler, SchedulerConfig
from rosebench.workload import Request

VOCAB = 512
NEW_TOKENS = 32
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,  # below the prompts' positions, so the scaling matters
}
# name -> (model_type, config overrides). 4 query heads throughout; num_key_value_heads sets the group.
CASES = {
    "llama-mha-tied": ("llama", {"num_key_value_heads": 4, "tie_word_embeddings": True}),
    "llama-gqa-bias": ("llama", {"num_key_value_heads": 2, "attention_bias": True, "mlp_bias": True}),
    "llama-mqa-llama3-rope": ("llama", {"num_key_value_heads": 1, "rope_parameters": LLAMA3_ROPE}),
    "mistral-gqa": ("mistral", {"num_key_value_heads": 2, "sliding_window": None}),
    "qwen2-gqa": ("qwen2", {"num_key_value_heads": 2, "eos_token_id": 2}),
    "qwen2-mqa-tied": ("qwen2", {"num_key_value_heads": 1, "tie_word_embeddings": True, "eos_token_id": 2}),
}
PROMPTS = [[5, 77, 300, 2, 9], [1, 2, 3], [400, 401, 10, 20, 30, 40, 50, 60, 70, 80, 90]]


def hf_classes(model_type: str):
    import transformers

    name = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}[model_type]
    return getattr(transformers, f"{name}Config"), getattr(transformers, f"{name}ForCausalLM")


def save_hf_model(model_type: str, overrides: dict, folder: Path):
    """A tiny random model saved with save_pretrained. Weights are drawn wider than the stock init so that
    greedy continuations vary from token to token (a tiny model at init repeats one token)."""
    config_class, model_class = hf_classes(model_type)
    torch.manual_seed(1234)
    config = config_class(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        **({"vocab_size": VOCAB} | overrides),  # a folder with a tokenizer matches its vocabulary
    )
    model = model_class(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.3)
            elif "norm" not in name:
                param.normal_(0.0, 0.1)
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="module", params=list(CASES))
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    model_type, overrides = CASES[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    return folder, save_hf_model(model_type, overrides, folder)


@pytest.fixture(scope="module")
def gqa_case(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("gqa")
    return folder, save_hf_model("llama", CASES["llama-gqa-bias"][1], folder)


def make_engine(folder: Path, static_decode: bool = False, **overrides) -> Engine:
    config = EngineConfig(
        weights=str(folder),
        device="cpu",
        dtype=overrides.pop("dtype", "float32"),
        attention=overrides.pop("attention", "slot"),
        prepack=overrides.pop("prepack", True),
        compile=overrides.pop("compile", False),
        prefix_cache=overrides.pop("prefix_cache", True),
        max_num_seqs=overrides.pop("max_num_seqs", 4),
        kv_cache=KVCacheConfig(block_size=4, num_blocks=overrides.pop("num_blocks", None)),
    )
    assert not overrides, overrides
    return Engine(config, static_decode=static_decode)


def hf_greedy(model, prompt: list[int], max_new_tokens: int = NEW_TOKENS) -> list[int]:
    """transformers' greedy continuation of ``prompt`` alone; it stops at the config's EOS, as the engine."""
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=0,
        )
    return out[0, len(prompt) :].tolist()


def run_batch(engine: Engine, prompts: list[list[int]], first_id: int = 0) -> list[Sequence]:
    seqs = [
        Sequence(first_id + i, p, SamplingParams(max_new_tokens=NEW_TOKENS)) for i, p in enumerate(prompts)
    ]
    for seq in seqs:
        assert engine.admit(seq)
    engine.prefill(seqs)
    while live := [s for s in seqs if not s.is_finished]:
        engine.decode(live)
    return seqs


def engine_logits(engine: Engine, prompts: list[list[int]], slots: list[int]) -> torch.Tensor:
    """Logits ``[B, T, V]`` at every position of a padded batch of fresh prompts, in ``slots``."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([p + [0] * (width - len(p)) for p in prompts])
    positions = torch.arange(width).expand(len(prompts), width)
    batch = StepBatch.build(slots, [0] * len(prompts), [len(p) for p in prompts], engine.device)
    with torch.inference_mode():
        return engine.model.logits(engine.model(ids, positions, engine._attention(engine.cache, batch)))


@pytest.mark.parametrize(("attention", "prepack"), [("slot", True), ("naive", False)])
def test_prefill_logits_match_hf(case, attention: str, prepack: bool) -> None:
    folder, hf_model = case
    engine = make_engine(folder, attention=attention, prepack=prepack)
    if prepack:  # qkv, o, gate_up and down in each layer, and the head (tied or not)
        assert sum(isinstance(m, PackedLinear) for m in engine.model.modules()) == 4 * 2 + 1
    for slots in ([0, 1, 2], [2, 0, 1]):  # a dense view, and the gather of a slot order
        logits = engine_logits(engine, PROMPTS, slots)
        for row, prompt in enumerate(PROMPTS):
            with torch.no_grad():
                want = hf_model(torch.tensor([prompt])).logits[0]
            torch.testing.assert_close(logits[row, : len(prompt)], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("static_decode", [False, True], ids=["eager", "static"])
def test_greedy_32_tokens_match_hf(case, static_decode: bool) -> None:
    folder, hf_model = case
    engine = make_engine(folder, static_decode=static_decode)
    for seq in run_batch(engine, PROMPTS):
        assert seq.output_token_ids == hf_greedy(hf_model, seq.prompt_token_ids), seq
    assert engine.kv_stats().used_blocks == 0


def test_kv_cache_stores_kv_heads(gqa_case) -> None:
    """The cache holds 2 K/V heads for 4 query heads: half the bytes of a multi-head cache, and the
    capacity figures follow (SmolLM2-135M: 3 K/V heads of 64, 30 layers, 2 * 30 * 3 * 64 float32 values)."""
    folder, _ = gqa_case
    engine = make_engine(folder)
    assert engine.cache.k.shape[2] == 2 and engine.cache.k.shape[-1] == 16
    shape = engine.model_config
    assert SlotKVCache.bytes_per_token(shape, torch.float32) == 2 * 2 * 2 * 16 * 4
    smollm2 = MODEL_PRESETS["smollm2-135m"]
    assert SlotKVCache.bytes_per_token(smollm2, torch.float32) == 2 * 30 * 3 * 64 * 4
    assert (
        SlotKVCache.bytes_per_token(replace(smollm2, n_kv_head=None), torch.float32)
        == 3 * 2 * 30 * 3 * 64 * 4
    )


def test_compiled_step_matches_eager(gqa_case) -> None:
    """``torch.compile`` of the static step (RoPE, RMSNorm, grouped attention) gives the eager tokens."""
    folder, _ = gqa_case
    eager = [s.output_token_ids for s in run_batch(make_engine(folder), PROMPTS)]
    compiled = make_engine(folder, static_decode=True, compile=True)
    assert compiled.startup_metrics()["engine_compile_s"] > 0
    assert [s.output_token_ids for s in run_batch(compiled, PROMPTS)] == eager


def scheduler_outputs(engine: Engine, prompts: list[list[int]]) -> tuple[dict[int, list[int]], int, int]:
    requests = [
        Request(
            request_id=i,
            prompt_token_ids=p,
            params=SamplingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True),
        )
        for i, p in enumerate(prompts)
    ]
    result = OfflineScheduler(engine, SchedulerConfig()).run(requests)
    outputs = {r.request_id: r.output_token_ids for r in result.records}
    return outputs, result.stats.preemptions, engine.kv_stats().prefix_hits


@pytest.mark.parametrize("static_decode", [False, True], ids=["eager", "static"])
def test_preemption_and_prefix_hits_match_an_unconstrained_run(gqa_case, static_decode: bool) -> None:
    """Shared 8-token prefixes hit the prefix cache; a 24-block budget for four 40-token requests forces
    recompute preemptions. Neither changes a token."""
    folder, _ = gqa_case
    shared = [11, 12, 13, 14, 15, 16, 17, 18]
    prompts = [shared + [100 + i, 200 + i] for i in range(4)]
    alone = {
        i: scheduler_outputs(make_engine(folder, max_num_seqs=1, prefix_cache=False), [p])[0][0]
        for i, p in enumerate(prompts)
    }
    roomy, preemptions, hits = scheduler_outputs(make_engine(folder, static_decode), prompts)
    assert preemptions == 0 and hits > 0 and roomy == alone
    tight, preemptions, hits = scheduler_outputs(make_engine(folder, static_decode, num_blocks=24), prompts)
    assert preemptions > 0 and hits > 0 and tight == alone


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_graphs_and_compile_match_eager(gqa_case, dtype: str) -> None:
    """On a GPU (benchmarks/gpu_check.sh): graph replays give the eager static step's tokens in every
    dtype; graphs with the compiled step, and the float32 eager step, give transformers' tokens."""
    folder, hf_model = gqa_case

    def outputs(**overrides) -> list[list[int]]:
        config = EngineConfig(
            weights=str(folder),
            device="cuda",
            dtype=dtype,
            max_num_seqs=4,
            kv_cache=KVCacheConfig(block_size=4),
            **overrides,
        )
        return [s.output_token_ids for s in run_batch(Engine(config, static_decode=True), PROMPTS)]

    eager = outputs(cuda_graphs="false")
    graphs = outputs(cuda_graphs="true")
    assert graphs == eager
    if dtype == "float32":
        assert outputs(cuda_graphs="true", compile=True) == eager
        assert eager == [hf_greedy(hf_model, p) for p in PROMPTS]


UNIT_ROUNDOFF = {"bfloat16": 2**-8, "float16": 2**-11}
ROUNDOFFS = 32  # test_engine_correctness's rule: logits within 32 roundoffs of the largest logit


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_stays_within_rounding_of_float32(gqa_case, dtype: str) -> None:
    folder, hf_model = gqa_case
    engine = make_engine(folder, dtype=dtype)
    seqs = run_batch(engine, PROMPTS)
    tolerance_unit = UNIT_ROUNDOFF[dtype]
    for seq in seqs:
        ids = seq.prompt_token_ids + seq.output_token_ids
        with torch.no_grad():
            want = hf_model(torch.tensor([ids])).logits[0]
        got = engine_logits(engine, [ids], [0])[0].float()
        tolerance = ROUNDOFFS * tolerance_unit * want.abs().max().item()
        assert (got - want).abs().max().item() <= tolerance
        chosen = want[len(seq.prompt_token_ids) - 1 : -1]
        picked = chosen.gather(1, torch.tensor(seq.output_token_ids).unsqueeze(1)).squeeze(1)
        assert (chosen.max(-1).values - picked).max().item() <= 2 * tolerance


# -- what the engine refuses, in one line -------------------------------------------------------------------
def edited_folder(source: Path, folder: Path, **changes) -> Path:
    shutil.copytree(source, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


REFUSALS = {
    "sliding-window": ({"model_type": "mistral", "sliding_window": 64}, ("sliding_window=64", "allowed")),
    "yarn-rope": (
        {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}},
        ("rope_type='yarn'", "allowed: default, llama3"),
    ),
    "unknown-model-type": (
        {"model_type": "gemma"},
        ("model_type='gemma'", "allowed: gpt2, llama, mistral, qwen2"),
    ),
}


@pytest.mark.parametrize("name", list(REFUSALS))
def test_unsupported_configs_are_refused_by_name(gqa_case, tmp_path: Path, name: str) -> None:
    changes, words = REFUSALS[name]
    folder = edited_folder(gqa_case[0], tmp_path / name, **changes)
    with pytest.raises(WeightsError) as info:
        build_model("gpt2", str(folder), 0)
    message = str(info.value)
    assert str(folder / "config.json") in message and "\n" not in message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("name", list(REFUSALS))
def test_cli_refuses_unsupported_configs_in_one_line(gqa_case, tmp_path: Path, name: str) -> None:
    changes, words = REFUSALS[name]
    folder = edited_folder(gqa_case[0], tmp_path / name, **changes)
    proc = run_cli(tmp_path, *FAST, "workload=random", f"engine.weights={folder}")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, describe(proc)
    assert len(lines) == 1 and lines[0].startswith("rosebench: error:"), describe(proc)
    for word in words:
        assert word in lines[0], describe(proc)
    assert not list(tmp_path.glob("outputs/*/*/results.json"))
