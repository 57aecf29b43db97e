"""The engine against transformers' GPT2LMHeadModel with the same random weights (float32, exact greedy).

Covers full-sequence prefill logits (batched, padded, both attention variants, prepacked or not), greedy
continuations for single and batched requests, prefix-cache hits (kept in place, copied from another
slot, served from decoded output blocks, a whole-prompt hit), and decode with non-dense slots
(compaction moving a sequence, and the gather path when only part of the running batch decodes).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rosebench.engine import Engine, EngineConfig, KVCacheConfig, SamplingParams, Sequence
from rosebench.engine.attention import ATTENTION_CLASSES, StepBatch
from rosebench.engine.cpu_linear import PackedLinear

BLOCK_SIZE = 4
NEW_TOKENS = 8
VARIANTS = [
    pytest.param(attention, prepack, id=f"{attention}-{'prepack' if prepack else 'plain'}")
    for attention in ("slot", "naive")
    for prepack in (True, False)
]

# Distinct prompts of different lengths (ids spread over the vocabulary).
A = [464, 2068, 7586, 21831, 18045]
B1 = [15496, 11, 616, 1438, 318, 257, 1332, 13, 383, 2068, 373]  # 11 tokens: 2 full blocks + 3
B2 = [40, 588, 257, 3797, 286, 49020, 351, 1257]  # 8 tokens: exactly 2 full blocks
B3 = [4342, 318, 1223]  # 3 tokens: no full block


def make_engine(
    hf_dir: Path,
    attention: str = "slot",
    prepack: bool = True,
    static_decode: bool = False,
    dtype: str = "float32",
    **overrides,
) -> Engine:
    config = EngineConfig(
        weights=str(hf_dir),
        device="cpu",
        dtype=dtype,
        attention=attention,
        prepack=prepack,
        max_num_seqs=overrides.pop("max_num_seqs", 4),
        prefix_cache=overrides.pop("prefix_cache", True),
        kv_cache=KVCacheConfig(block_size=overrides.pop("block_size", BLOCK_SIZE)),
    )
    assert not overrides, overrides
    engine = Engine(config, static_decode=static_decode)
    # The -prepack cases must run the packed linears (float32 on a CPU always can), the -plain ones not.
    packed = sum(isinstance(m, PackedLinear) for m in engine.model.modules())
    if dtype == "float32":
        assert packed == (4 * engine.model_config.n_layer + 1 if prepack else 0)
    return engine


_HF_CACHE: dict[tuple[tuple[int, ...], int], list[int]] = {}


def hf_greedy(hf_model, prompt: list[int], max_new_tokens: int) -> list[int]:
    """transformers' own greedy generation of ``prompt`` alone (memoised: it is the slow part)."""
    key = (tuple(prompt), max_new_tokens)
    if key not in _HF_CACHE:
        with torch.no_grad():
            out = hf_model.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=hf_model.config.eos_token_id,
            )
        _HF_CACHE[key] = out[0, len(prompt) :].tolist()
    return _HF_CACHE[key]


def run_batch(engine: Engine, prompts: list[list[int]], max_new: list[int], first_id: int) -> list[Sequence]:
    """Admit all, prefill them together, then decode the whole running batch until every one finishes."""
    seqs = [
        Sequence(first_id + i, p, SamplingParams(max_new_tokens=n))
        for i, (p, n) in enumerate(zip(prompts, max_new))
    ]
    for seq in seqs:
        assert engine.admit(seq), f"admission failed for {seq}"
    engine.prefill(seqs)
    while live := [s for s in seqs if not s.is_finished]:
        engine.decode(live)
    return seqs


def engine_logits(engine: Engine, prompts: list[list[int]], slots: list[int]) -> torch.Tensor:
    """Logits ``[B, T, V]`` for every position of a padded batch of fresh prompts, through the engine's
    model and KV attention exactly as ``Engine._forward_and_sample`` drives them (with ``slots`` free)."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([p + [0] * (width - len(p)) for p in prompts])
    positions = torch.arange(width).expand(len(prompts), width)
    batch = StepBatch.build(slots, [0] * len(prompts), [len(p) for p in prompts], engine.device)
    with torch.inference_mode():
        hidden = engine.model(ids, positions, engine._attention(engine.cache, batch))
        return engine.model.logits(hidden)


@pytest.mark.parametrize(("attention", "prepack"), VARIANTS)
def test_prefill_logits_match_hf(hf_tiny_dir, hf_tiny_model, attention, prepack):
    engine = make_engine(hf_tiny_dir, attention, prepack)
    prompts = [B1, A, B3, B2]
    # Non-dense slot order too, so the slot path's index_select is exercised as well as the view.
    for slots in ([0, 1, 2, 3], [3, 1, 0, 2]):
        logits = engine_logits(engine, prompts, slots)
        for row, prompt in enumerate(prompts):
            with torch.no_grad():
                expected = hf_tiny_model(torch.tensor([prompt])).logits[0]
            got = logits[row, : len(prompt)]
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
            # The position the engine samples from: the last real token of each padded row.
            assert got[-1].argmax().item() == expected[-1].argmax().item()


@pytest.mark.parametrize("prefix_cache", [True, False], ids=["prefix-on", "prefix-off"])
@pytest.mark.parametrize(
    ("attention", "prepack", "static_decode"),
    [
        *(pytest.param(*v.values, False, id=v.id) for v in VARIANTS),
        pytest.param("slot", True, True, id="static"),
    ],
)
def test_greedy_matches_hf(hf_tiny_dir, hf_tiny_model, attention, prepack, static_decode, prefix_cache):
    engine = make_engine(hf_tiny_dir, attention, prepack, static_decode, prefix_cache=prefix_cache)

    # A single request.
    (single,) = run_batch(engine, [A], [NEW_TOKENS], first_id=0)
    assert single.output_token_ids == hf_greedy(hf_tiny_model, A, NEW_TOKENS)
    assert single.finish_reason == "length"

    # A batch of different prompt lengths, each compared with HF generating that prompt alone.
    round1 = run_batch(engine, [B1, B2, B3], [NEW_TOKENS] * 3, first_id=10)
    for seq in round1:
        assert seq.output_token_ids == hf_greedy(hf_tiny_model, seq.prompt_token_ids, NEW_TOKENS), seq

    # A second round sharing prefixes with the first. Admission order makes every cache path run:
    # C1 lands in B1's old slot (blocks kept in place) and extends B1 with part of its *output*, so it
    # hits blocks registered during decode; C2 is exactly B2 and lands in B2's old slot: a whole-prompt
    # hit whose last block must still be computed; C3 lands in B3's old slot and shares B1's first
    # block, which is copied in from C1's slot.
    c1 = B1 + round1[0].output_token_ids[:5] + [999, 31337]
    c2 = list(B2)
    c3 = B1[:4] + [50, 60, 70]
    round2 = run_batch(engine, [c1, c2, c3], [NEW_TOKENS] * 3, first_id=20)
    for seq in round2:
        assert seq.output_token_ids == hf_greedy(hf_tiny_model, seq.prompt_token_ids, NEW_TOKENS), seq
    assert round2[1].output_token_ids == round1[1].output_token_ids
    cached = [s.num_cached_tokens for s in round2]
    if prefix_cache:
        assert cached == [16, 4, 4], cached
        assert engine.kv_stats().prefix_hits == sum(cached)
    else:
        assert cached == [0, 0, 0]
        assert engine.kv_stats().prefix_hits == 0
    assert engine.kv_stats().used_blocks == 0


@pytest.mark.parametrize(
    ("attention", "static_decode"),
    [("slot", False), ("naive", False), ("slot", True)],
    ids=["slot", "naive", "static"],
)
def test_decode_with_non_dense_slots(hf_tiny_dir, hf_tiny_model, attention, static_decode):
    """With ``static_decode`` the full-batch decodes run the static step and the partial ones fall back
    to the eager step: both kinds interleave on the same sequences."""
    engine = make_engine(hf_tiny_dir, attention, static_decode=static_decode)
    prompts, lengths = [B1, B3, A], [12, 3, 12]
    seqs = [
        Sequence(i, p, SamplingParams(max_new_tokens=n)) for i, (p, n) in enumerate(zip(prompts, lengths))
    ]
    for seq in seqs:
        assert engine.admit(seq)
    slot_of = engine.placement.slot_of
    assert [slot_of(s) for s in seqs] == [0, 1, 2]
    engine.prefill(seqs)
    while not seqs[1].is_finished:
        engine.decode([s for s in seqs if not s.is_finished])
    # The middle sequence finished and left slot 1 free: the next full-batch decode must move the
    # sequence in slot 2 down to slot 1 (its K/V copied) and read the batch as a dense view.
    assert slot_of(seqs[1]) is None
    engine.decode([seqs[2], seqs[0]])  # order differs from slot order on purpose
    assert [slot_of(seqs[0]), slot_of(seqs[2])] == [0, 1]

    # A fourth sequence joins; decoding only part of the running batch takes the gather path.
    extra = Sequence(3, B2, SamplingParams(max_new_tokens=10))
    assert engine.admit(extra)
    engine.prefill([extra])
    for _ in range(3):
        engine.decode([extra, seqs[0]])
    while live := [s for s in [*seqs, extra] if not s.is_finished]:
        engine.decode(live)

    for seq in [*seqs, extra]:
        expected = hf_greedy(hf_tiny_model, seq.prompt_token_ids, seq.params.max_new_tokens)
        assert seq.output_token_ids == expected, seq
    assert engine.kv_stats().used_blocks == 0


def test_logits_independent_of_padding_partner(hf_tiny_dir):
    """A row's logits do not depend on what else is in the batch (padding, longer rows)."""
    engine = make_engine(hf_tiny_dir, prepack=False)
    alone = engine_logits(engine, [B3], [0])[0]
    padded = engine_logits(engine, [B1, B3], [1, 0])[1, : len(B3)]
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-5)


def test_attention_variants_registered():
    assert set(ATTENTION_CLASSES) == {"slot", "naive"}


# Unit roundoff: the relative error of one rounding (8 and 11 significant bits).
UNIT_ROUNDOFF = {"bfloat16": 2**-8, "float16": 2**-11}
# Logits may be off float32 by this many roundoffs of the largest logit. Measured on this model: 14 for
# bfloat16 and 12 for float16, each about the same multiple of its own roundoff, which is what rounding
# does (a wrong layout, cache or mask is off by the logits' own size, hundreds of roundoffs for bf16).
ROUNDOFFS = 32


@pytest.mark.parametrize("prepack", [True, False], ids=["prepack", "plain"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_generation_stays_within_rounding_of_float32(
    hf_tiny_dir, hf_tiny_model, dtype, prepack
):
    """bf16 and fp16 engines generate; each logit is within ROUNDOFFS roundoffs of transformers' float32
    logit for the same prefix, so each generated token is within twice that of float32's best token
    (exact agreement is not a fair test: where float32's top two are closer than rounding, either wins)."""
    engine = make_engine(hf_tiny_dir, prepack=prepack, dtype=dtype)
    prompts = [A, B1, B2, B3]
    seqs = run_batch(engine, prompts, [16] * 4, first_id=0)
    u = UNIT_ROUNDOFF[dtype]
    for prompt, seq in zip(prompts, seqs):
        assert len(seq.output_token_ids) == 16
        ids = prompt + seq.output_token_ids
        with torch.no_grad():
            want = hf_tiny_model(torch.tensor([ids])).logits[0]
        got = engine_logits(engine, [ids], [0])[0].float()
        tolerance = ROUNDOFFS * u * want.abs().max().item()
        assert (got - want).abs().max().item() <= tolerance
        chosen = want[len(prompt) - 1 : -1]  # the float32 logits each generated token was drawn from
        picked = chosen.gather(1, torch.tensor(seq.output_token_ids).unsqueeze(1)).squeeze(1)
        assert (chosen.max(-1).values - picked).max().item() <= 2 * tolerance
