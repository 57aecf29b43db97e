"""The static-shape decode step: buckets, padding, on-device sampling, compilation, and (on a GPU) graphs.

Everything but the CUDA graph capture runs here on the CPU: the static step eagerly (``static_decode=True``)
and under ``torch.compile``. The tests marked ``cuda`` run on a machine with a GPU
(``benchmarks/gpu_check.sh``) and skip elsewhere.
"""

from __future__ import annotations

import pytest
import torch

from rosebench.engine import Engine, EngineConfig, KVCacheConfig, SamplingParams
from rosebench.engine.sampler import Sampler, candidate_count, sample_on_device
from rosebench.engine.static_decode import batch_buckets, context_buckets
from rosebench.scheduler import OfflineScheduler, SchedulerConfig
from rosebench.workload import Request

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

MIXED = [  # one request of each sampling kind, repeated over the batch
    SamplingParams(max_new_tokens=12, ignore_eos=True),
    SamplingParams(max_new_tokens=12, temperature=0.8, ignore_eos=True),
    SamplingParams(max_new_tokens=12, temperature=1.0, top_k=20, ignore_eos=True),
    SamplingParams(max_new_tokens=12, temperature=0.7, top_p=0.8, ignore_eos=True),
    SamplingParams(max_new_tokens=12, temperature=1.3, top_k=50, top_p=0.9, seed=7, ignore_eos=True),
]


def test_batch_buckets():
    assert batch_buckets(1) == [1]
    assert batch_buckets(5) == [1, 2, 4, 5]
    assert batch_buckets(8) == [1, 2, 4, 8]
    assert batch_buckets(64) == [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64]
    assert batch_buckets(100) == [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 100]


def test_context_buckets():
    assert context_buckets(10) == [10]
    assert context_buckets(64) == [64]
    assert context_buckets(100) == [64, 100]
    assert context_buckets(1024) == [64, 128, 256, 512, 1024]


@pytest.mark.parametrize("trial", range(4))
def test_sample_on_device_draws_what_the_sampler_draws(trial):
    """Same logits, parameters, seeds and positions: the branch-free device sampler picks the tokens the
    host-branching ``Sampler`` picks, row by row (greedy rows included)."""
    generator = torch.Generator().manual_seed(trial)
    vocab, params = 2000, MIXED * 3
    logits = torch.randn(len(params), vocab, generator=generator) * 3
    seeds = [1000 * trial + i for i in range(len(params))]
    positions = [5 + i for i in range(len(params))]
    expected = Sampler()(logits, params, seeds, positions)
    got = sample_on_device(
        logits,
        torch.tensor([p.temperature for p in params]),
        torch.tensor([candidate_count(p, vocab) for p in params]),
        torch.tensor([p.top_p for p in params]),
        torch.tensor(seeds),
        torch.tensor(positions),
    )
    assert got.tolist() == expected.tolist()


def generate(engine: Engine, params: list[SamplingParams], num_requests: int) -> list[list[int]]:
    """Outputs of the offline scheduler over ``num_requests`` prompts of different lengths."""
    requests = [
        Request(i, [100 + 7 * i + j for j in range(3 + i % 6)], params[i % len(params)], arrival_s=0.0)
        for i in range(num_requests)
    ]
    result = OfflineScheduler(engine, SchedulerConfig(max_batch_size=engine.max_num_seqs)).run(requests)
    assert engine.num_running == 0
    records = sorted(result.records, key=lambda r: r.request_id)
    return [r.output_token_ids for r in records]


def tiny(**overrides) -> EngineConfig:
    return EngineConfig(model="tiny", device="cpu", max_num_seqs=6, max_model_len=40, **overrides)


@pytest.mark.parametrize("num_blocks", [None, 12], ids=["roomy", "preempting"])
def test_static_step_matches_eager_sampled_and_greedy(num_blocks):
    """Mixed greedy and sampled requests, with a shared-prefix-free workload and (with a 12-block budget)
    recompute preemptions: the static step's tokens are the eager step's, seed for seed."""
    config = tiny(kv_cache=KVCacheConfig(block_size=4, num_blocks=num_blocks))
    eager = generate(Engine(config), MIXED, 11)
    static = generate(Engine(config, static_decode=True), MIXED, 11)
    assert static == eager
    assert len({tuple(out) for out in eager}) > 5  # the draws differ between requests: a real comparison


def test_padding_rows_touch_no_slot_but_the_scratch_slot():
    """3 running sequences pad to a bucket of 4: row 3 reads free slot 3, and writes only to the scratch
    slot. Free slots keep prefix-cached content, so a write there would corrupt a later hit."""
    engine = Engine(tiny(), static_decode=True)
    cache = engine.cache
    free = slice(3, engine.max_num_seqs)
    cache.k[:, free] = 7.0
    cache.v[:, free] = -7.0
    scratch_before = cache.k[:, cache.scratch_slot].clone()
    outputs = generate(engine, MIXED[:1], 3)
    assert all(len(out) == 12 for out in outputs)
    assert bool((cache.k[:, free] == 7.0).all()) and bool((cache.v[:, free] == -7.0).all())
    assert not torch.equal(cache.k[:, cache.scratch_slot], scratch_before)


def test_cuda_graphs_true_without_cuda_is_an_error():
    """(The CLI's one-line form of these errors is in test_cli.py's bad values.)"""
    with pytest.raises(ValueError, match=r"^engine\.cuda_graphs=true: CUDA graphs need a CUDA device"):
        Engine(tiny(cuda_graphs="true"))
    assert Engine(tiny(cuda_graphs="auto")).config.cuda_graphs == "false"  # auto: off on the CPU
    with pytest.raises(
        ValueError, match=r"engine\.cuda_graphs=sometimes: allowed values are auto, true, false"
    ):
        tiny(cuda_graphs="sometimes")


def test_naive_attention_stays_eager():
    """The static step reads the slots itself: asking it of the naive baseline is an error, not a silent
    switch to the fast path."""
    with pytest.raises(
        ValueError, match=r"^engine\.compile=true runs the static decode step.*attention=naive"
    ):
        Engine(tiny(attention="naive", compile=True))
    engine = Engine(tiny(attention="naive"))
    assert engine.config.cuda_graphs == "false" and engine.startup_metrics() == {}


# Prompts whose first decode step sits on each side of each context bucket boundary (64, 128, and on to 200):
# every request runs to max_model_len, so each crosses every boundary after its start, in batches whose
# rows sit in different buckets.
CROSSING_LEN = 200  # context buckets 64, 128, 200
CROSSING_PROMPTS = [3, 30, 61, 63, 64, 65, 40, 126, 127, 128, 129]


def crossing_requests(params: list[SamplingParams]) -> list[Request]:
    return [
        Request(
            i,
            [200 + 11 * i + j for j in range(n)],
            SamplingParams(
                max_new_tokens=CROSSING_LEN - n,
                temperature=p.temperature,
                top_k=p.top_k,
                top_p=p.top_p,
                seed=p.seed,
                ignore_eos=True,
            ),
            arrival_s=0.0,
        )
        for i, (n, p) in enumerate(zip(CROSSING_PROMPTS, params * len(CROSSING_PROMPTS), strict=False))
    ]


def crossing_engine(hf_dir, static: bool, **overrides) -> Engine:
    config = EngineConfig(
        weights=str(hf_dir),
        device="cpu",
        max_num_seqs=4,
        max_model_len=CROSSING_LEN,
        kv_cache=KVCacheConfig(block_size=8),
        **overrides,
    )
    return Engine(config, static_decode=static)


def crossing_outputs(engine: Engine, requests: list[Request]) -> list[list[int]]:
    result = OfflineScheduler(engine, SchedulerConfig(max_batch_size=engine.max_num_seqs)).run(requests)
    assert engine.num_running == 0
    return [r.output_token_ids for r in sorted(result.records, key=lambda r: r.request_id)]


@pytest.mark.parametrize(
    "params",
    [[SamplingParams()], MIXED],
    ids=["greedy", "mixed"],
)
def test_static_step_matches_eager_across_every_context_bucket(hf_tiny_dir, params):
    """The step's context bucket holds position + 1 keys: a row fed at position 64 attends to 65 of them.
    Sequences run from every side of each boundary (63/64/65, 127/128/129) to max_model_len, four at a
    time at different positions, greedy and sampled with and without seeds: the static step's tokens are
    the eager step's."""
    requests = crossing_requests(params)
    eager = crossing_outputs(crossing_engine(hf_tiny_dir, static=False), requests)
    engine = crossing_engine(hf_tiny_dir, static=True)
    steps: list[list[int]] = []  # the positions fed at each static step
    run = engine._static.run

    def recording_run(**kwargs):
        steps.append(list(kwargs["positions"]))
        return run(**kwargs)

    engine._static.run = recording_run
    assert crossing_outputs(engine, requests) == eager
    assert all(len(out) == CROSSING_LEN - n for out, n in zip(eager, CROSSING_PROMPTS, strict=True))
    # What the comparison covered: the static step's longest row on and around each boundary, ...
    longest = {max(positions) for positions in steps}
    assert {63, 64, 65, 127, 128, 129, CROSSING_LEN - 2} <= longest
    # ... and steps whose rows sit in different buckets (each row alone would need another context).
    buckets = context_buckets(CROSSING_LEN)
    assert any(len({next(b for b in buckets if b > p) for p in positions}) == 3 for positions in steps)
    assert len({tuple(out[:20]) for out in eager}) > 5


@pytest.mark.slow
def test_compiled_step_matches_eager_across_every_context_bucket(hf_tiny_dir):
    """The same crossing under ``torch.compile`` (greedy and sampled rows): one compilation serves every
    context bucket, and each bucket's tokens are the eager step's."""
    requests = crossing_requests(MIXED)
    eager = crossing_outputs(crossing_engine(hf_tiny_dir, static=False), requests)
    assert crossing_outputs(crossing_engine(hf_tiny_dir, static=True, compile=True), requests) == eager


@pytest.mark.slow
def test_compiled_step_matches_eager_and_compiles_only_before_timing():
    """``engine.compile=true`` on the CPU: the same tokens as the eager engine, greedy and sampled, and no
    compilation once the engine is built (every bucket was compiled then)."""
    eager = generate(Engine(tiny()), MIXED, 8)
    engine = Engine(tiny(compile=True))
    figures = engine.startup_metrics()
    assert figures["engine_compile_s"] > 0 and "engine_capture_s" not in figures
    frames_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert generate(engine, MIXED, 8) == eager
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == frames_before


# -- on a GPU (benchmarks/gpu_check.sh) -----------------------------------------------------------------
DTYPES = ["float32", "bfloat16", "float16"]


def cuda_engine(hf_dir, dtype: str, **overrides) -> Engine:
    config = EngineConfig(
        weights=str(hf_dir),
        device="cuda",
        dtype=dtype,
        max_num_seqs=overrides.pop("max_num_seqs", 6),
        max_model_len=overrides.pop("max_model_len", 64),
        kv_cache=KVCacheConfig(block_size=4, num_blocks=overrides.pop("num_blocks", None)),
        **overrides,
    )
    return Engine(config, static_decode=True)


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_graphs_match_eager_static_and_compiled(hf_tiny_dir, dtype):
    """Graph replays run the kernels the static step runs eagerly: identical tokens in every dtype, sampled
    too; the compiled step's kernels differ (fused), so it is held to the eager tokens in float32 only."""
    eager = generate(cuda_engine(hf_tiny_dir, dtype, cuda_graphs="false"), MIXED, 9)
    graphs = cuda_engine(hf_tiny_dir, dtype, cuda_graphs="true")
    assert graphs.startup_metrics()["engine_capture_s"] > 0
    assert graphs.startup_metrics()["cuda_graph_pool_mb"] >= 0
    assert generate(graphs, MIXED, 9) == eager
    compiled = cuda_engine(hf_tiny_dir, dtype, cuda_graphs="true", compile=True)
    if dtype == "float32":
        assert generate(compiled, MIXED, 9) == eager
    else:
        assert all(len(out) == 12 for out in generate(compiled, MIXED, 9))


@cuda
@pytest.mark.cuda
def test_cuda_graphs_greedy_match_transformers(hf_tiny_dir, hf_tiny_model):
    """float32 greedy under graphs, against transformers generating each prompt alone."""
    engine = cuda_engine(hf_tiny_dir, "float32", cuda_graphs="true")
    greedy = SamplingParams(max_new_tokens=12)
    outputs = generate(engine, [greedy], 5)
    for i, out in enumerate(outputs):
        prompt = [100 + 7 * i + j for j in range(3 + i % 6)]
        with torch.no_grad():
            expected = hf_tiny_model.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                max_new_tokens=12,
                do_sample=False,
                pad_token_id=hf_tiny_model.config.eos_token_id,
            )[0, len(prompt) :].tolist()
        assert out[: len(expected)] == expected


@cuda
@pytest.mark.cuda
def test_cuda_graphs_under_preemption_and_prefix_cache(hf_tiny_dir):
    """A 12-block budget forces recompute preemptions; shared prompts hit the prefix cache."""
    eager = cuda_engine(hf_tiny_dir, "float32", cuda_graphs="false", num_blocks=12)
    graphs = cuda_engine(hf_tiny_dir, "float32", cuda_graphs="true", num_blocks=12)
    assert generate(graphs, MIXED, 11) == generate(eager, MIXED, 11)
    shared = [Request(i, [5, 6, 7, 8, 9, 10, 11, 12, 40 + i], MIXED[i % 5], arrival_s=0.0) for i in range(6)]
    runs = [OfflineScheduler(e, SchedulerConfig(max_batch_size=6)).run(shared) for e in (eager, graphs)]
    assert [r.output_token_ids for r in runs[1].records] == [r.output_token_ids for r in runs[0].records]
    assert graphs.kv_stats().prefix_hits > 0


@cuda
@pytest.mark.cuda
def test_cuda_memory_fraction_sizes_the_slots(hf_tiny_dir):
    """``engine.kv_cache.memory_fraction`` against the device's free memory, measured the same way."""
    free = torch.cuda.mem_get_info()[0]
    fraction = 1e-4  # about 14 MiB of an H200: some hundred slots, under max_num_seqs
    config = EngineConfig(
        weights=str(hf_tiny_dir),
        device="cuda",
        max_num_seqs=100_000,
        max_model_len=64,
        cuda_graphs="false",
        kv_cache=KVCacheConfig(block_size=4, memory_fraction=fraction),
    )
    engine = Engine(config)
    per_slot = 2 * 2 * 64 * 64 * 4  # K and V, 2 layers, 64 positions, 64 wide, float32
    expected = fraction * free // per_slot
    assert 1 < expected < 100_000
    assert abs(engine.max_num_seqs - expected) <= 0.05 * expected + 1  # free memory moves a little
