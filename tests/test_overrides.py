"""Every documented override, shown by its effect on what the run produced: outputs, per-pass figures,
the profile trace, the environment block. Reading the composed config back proves only that Hydra parsed
the key; these tests prove the runner used it.

Each run goes through the runner's own path in-process (Hydra's compose of ``conf/``, ``load_config``,
``prepare``, ``run_passes``, ``metrics.request_rows``): what ``python -m rosebench`` does between
parsing the command line and writing files, minus a subprocess's seconds of imports. ``test_cli.py``
covers the command line itself. Keys covered elsewhere: ``engine.weights`` (test_cli, greedy equal to
transformers), ``engine.compile`` (test_cli), ``sampling.ignore_eos`` (test_cli), ``profile.detail``
(test_profile_engine, test_cli), ``tracking.*`` (test_tracking*), ``workload=jsonl`` (test_cli), and the
CUDA effects of ``engine.device``/``engine.cuda_graphs`` (test_static_decode's ``cuda`` tests).
"""

from __future__ import annotations

import collections
import gzip
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
from hydra import compose, initialize_config_dir

from rosebench import metrics
from rosebench.conf_dir import conf_dir
from rosebench.config import ConfigError, RunConfig, load_config, register_configs
from rosebench.engine.config import MODEL_PRESETS
from rosebench.engine.kv_cache import SlotKVCache
from rosebench.engine.tokenizer import load_tokenizer
from rosebench.runner.benchmark import Outcome, Setup, prepare, run_passes
from rosebench.runner.environment import environment
from rosebench.scheduler.offline import OfflineScheduler
from rosebench.scheduler.records import PassResult

register_configs()

# The tiny model with a few requests and tokens, so that batching shows.
BASE = ("engine=tiny", "tracking=off", "num_requests=4", "max_new_tokens=6")
ONE_PASS = ("warmup=0", "repeat=1")  # unless a test runs the default passes
SHARED_PREFIX = ("workload=shared_prefix", "workload.num_prefixes=1", "workload.prefix_len=32")


@dataclass
class Produced:
    """What one run produced, as the CLI would write it."""

    setup: Setup
    outcome: Outcome
    folder: Path

    @property
    def last_pass(self) -> PassResult:
        return self.outcome.passes[-1]

    @property
    def rows(self) -> list[dict[str, Any]]:
        """outputs.jsonl."""
        return metrics.request_rows(self.last_pass, self.setup.detokenize)

    @property
    def outputs(self) -> list[list[int]]:
        return [row["output_token_ids"] for row in self.rows]

    @property
    def figures(self) -> dict[str, float]:
        """results.json's ``metrics``."""
        return self.outcome.aggregate()[0]

    def trace_events(self) -> list[dict[str, Any]]:
        """The profiled pass's trace (profile/trace_0.json.gz)."""
        with gzip.open(self.folder / "profile" / "trace_0.json.gz", "rt") as f:
            return json.load(f)["traceEvents"]

    def trace_ops(self) -> collections.Counter[str]:
        return collections.Counter(e["name"] for e in self.trace_events() if e.get("cat") == "cpu_op")


def compose_config(*overrides: str, passes: tuple[str, ...] = ONE_PASS) -> RunConfig:
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return load_config(compose("config", overrides=[*BASE, *passes, *overrides]))


def run(tmp_path: Path, *overrides: str, passes: tuple[str, ...] = ONE_PASS) -> Produced:
    folder = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
    folder.mkdir()
    setup = prepare(compose_config(*overrides, passes=passes))
    outcome = run_passes(setup, folder)
    assert outcome.interrupted is None and outcome.profile_error is None
    return Produced(setup, outcome, folder)


@pytest.fixture(autouse=True)
def _keep_one_thread():
    """engine.num_threads sets the process's thread count: give the other tests back their single thread."""
    yield
    torch.set_num_threads(1)


# -- the run's shape ------------------------------------------------------------------------------------


def test_mode_offline_ignores_arrivals_and_online_replays_them(tmp_path: Path) -> None:
    offline = run(tmp_path, "mode=offline", "scheduler.request_rate=200")
    online = run(tmp_path, "mode=online", "scheduler.request_rate=200")
    assert [r["arrival_s"] for r in offline.rows] == [0.0] * 4
    sent = [r.arrival_s for r in online.setup.requests]
    assert [r["arrival_s"] for r in online.rows] == sent and sent[-1] > 0
    assert all(r["first_token_s"] >= r["arrival_s"] for r in online.rows)


def test_num_requests_and_max_new_tokens(tmp_path: Path) -> None:
    produced = run(tmp_path, "num_requests=3", "max_new_tokens=5", "sampling.ignore_eos=true")
    assert [r["request_id"] for r in produced.rows] == [0, 1, 2]
    assert [len(out) for out in produced.outputs] == [5, 5, 5]
    assert produced.figures["completion_tokens"] == 15


def test_sampling_max_new_tokens_overrides_the_runs_default(tmp_path: Path) -> None:
    produced = run(tmp_path, "max_new_tokens=8", "sampling.max_new_tokens=3", "sampling.ignore_eos=true")
    assert [len(out) for out in produced.outputs] == [3] * 4


@pytest.mark.parametrize(("overrides", "runs", "passes"), [((), 4, 3), (("warmup=2", "repeat=1"), 3, 1)])
def test_warmup_and_repeat_count_the_scheduler_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overrides: tuple[str, ...], runs: int, passes: int
) -> None:
    """The defaults (warmup=1, repeat=3, nothing overridden) and an override: every scheduler pass the
    runner starts is counted by a pass-through wrapper around the real ``run``."""
    started = []
    real_run = OfflineScheduler.run

    def counted(self: OfflineScheduler, requests: list) -> PassResult:
        started.append(len(requests))
        return real_run(self, requests)

    monkeypatch.setattr(OfflineScheduler, "run", counted)
    produced = run(tmp_path, *overrides, passes=())
    assert started == [4] * runs
    assert len(produced.outcome.passes) == passes


def test_trial_is_a_label_that_changes_nothing(tmp_path: Path) -> None:
    sampled = ("sampling=top_k_top_p", "workload=random", "workload.input_len=5")
    first, second = run(tmp_path, *sampled), run(tmp_path, *sampled, "trial=3")
    assert second.setup.config.trial == 3
    assert first.outputs == second.outputs
    assert [r["prompt_token_ids"] for r in first.rows] == [r["prompt_token_ids"] for r in second.rows]


# -- seeds ----------------------------------------------------------------------------------------------


def weights(produced: Produced) -> dict[str, torch.Tensor]:
    return produced.setup.engine.model.state_dict()


def same_weights(a: Produced, b: Produced) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_the_same_seed_gives_the_same_weights_prompts_and_tokens(tmp_path: Path) -> None:
    random_prompts = ("workload=random", "workload.input_len=6", "sampling=top_k_top_p")
    first, again, other = (run(tmp_path, *random_prompts, f"seed={s}") for s in (7, 7, 8))
    assert same_weights(first, again) and not same_weights(first, other)
    assert untimed(first.rows) == untimed(again.rows)
    prompts = [[r["prompt_token_ids"] for r in p.rows] for p in (first, other)]
    assert prompts[0] != prompts[1] and first.outputs != other.outputs


def untimed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """outputs.jsonl without its clock readings: what equal seeds must reproduce exactly."""
    clock = {"arrival_s", "first_token_s", "finish_s", "ttft_ms", "tpot_ms", "e2e_ms"}
    return [{k: v for k, v in row.items() if k not in clock} for row in rows]


def test_engine_seed_reseeds_the_weights_alone(tmp_path: Path) -> None:
    """engine.seed defaults to ${seed}; set on its own it changes the weights and keeps the prompts."""
    random_prompts = ("workload=random", "workload.input_len=6")
    default, reseeded = run(tmp_path, *random_prompts), run(tmp_path, *random_prompts, "engine.seed=1")
    assert not same_weights(default, reseeded)
    prompts = [[r["prompt_token_ids"] for r in p.rows] for p in (default, reseeded)]
    assert prompts[0] == prompts[1] and default.outputs != reseeded.outputs


def test_sampling_seed_gives_request_i_the_seed_plus_i(tmp_path: Path) -> None:
    """The fixed workload sends one prompt four times, so with seeds s + i, the run with sampling.seed=5
    is the run with 6 shifted by one request."""
    sampled = ("sampling=top_k_top_p", "max_new_tokens=8")
    five, six = run(tmp_path, *sampled, "sampling.seed=5"), run(tmp_path, *sampled, "sampling.seed=6")
    assert five.outputs[1:] == six.outputs[:-1]
    assert five.outputs != six.outputs


# -- sampling -------------------------------------------------------------------------------------------


def test_sampling_options_reach_the_sampler(tmp_path: Path) -> None:
    """Top-k 40 / top-p 0.9 at temperature 1 draws other tokens than greedy on the tiny model. Each way of
    narrowing sampling to the top token gives greedy's tokens: temperature 0 (greedy itself), 1e-3 (the
    top logit's lead, divided by it, dwarfs the Gumbel noise; measured: still greedy at 0.01, not at 0.1),
    top-k 1 and a top-p no second token fits in."""
    greedy = run(tmp_path).outputs
    assert run(tmp_path, "sampling=top_k_top_p").outputs != greedy
    narrowed_options = ("temperature=0", "temperature=1e-3", "top_k=1", "top_p=1e-9")
    for narrowed in (f"sampling.{option}" for option in narrowed_options):
        assert run(tmp_path, "sampling=top_k_top_p", narrowed).outputs == greedy, narrowed


# -- engine ---------------------------------------------------------------------------------------------


def test_engine_model_picks_the_architecture(tmp_path: Path) -> None:
    config = compose_config("engine=gpt2", "engine.model=tiny", "num_requests=1", "max_new_tokens=1")
    model = prepare(config).model()
    tiny = MODEL_PRESETS["tiny"]
    assert (model["n_layer"], model["n_embd"], model["short"]) == (tiny.n_layer, tiny.n_embd, "tiny")


def test_engine_device_cpu_and_auto_run_on_the_cpu_here() -> None:
    for device in ("cpu", "auto"):
        engine = prepare(compose_config(f"engine.device={device}", "num_requests=1")).engine
        if device == "auto" and torch.cuda.is_available():
            continue  # auto picks CUDA there: test_static_decode's cuda tests cover it
        assert environment(engine.device)["device"] == "cpu"
        assert {p.device.type for p in engine.model.parameters()} == {"cpu"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_cuda_only_options_are_refused_on_a_cpu() -> None:
    for option in ("engine.device=cuda", "engine.cuda_graphs=true"):
        with pytest.raises(ConfigError, match=option.split("=")[0]):
            prepare(compose_config(option))


@pytest.mark.parametrize(("dtype", "aten_name"), [("bfloat16", "c10::BFloat16"), ("float16", "c10::Half")])
def test_engine_dtype_is_the_dtype_the_kernels_ran(tmp_path: Path, dtype: str, aten_name: str) -> None:
    """profile.record_shapes=true records each op's input types: the linears ran in the asked dtype."""
    produced = run(tmp_path, f"engine.dtype={dtype}", "profile.enabled=true", "profile.record_shapes=true")
    linears = [
        e["args"]["Input type"][0]
        for e in produced.trace_events()
        if e["name"] in ("aten::addmm", "aten::linear", "mkldnn::_linear_pointwise")
    ]
    assert linears and set(linears) == {aten_name}
    assert all(len(out) >= 1 for out in produced.outputs)


def test_engine_attention_naive_runs_the_gather_and_pad_baseline(tmp_path: Path) -> None:
    """The naive baseline pads every sequence's keys and values in every layer (aten::pad); the slot path
    never pads. Both give the same greedy tokens."""
    slot = run(tmp_path, "profile.enabled=true", "profile.active=2")
    naive = run(tmp_path, "engine.attention=naive", "profile.enabled=true", "profile.active=2")
    assert "aten::pad" not in slot.trace_ops()
    n_layer = MODEL_PRESETS["tiny"].n_layer
    # 2 steps (the prefill and one decode) x 4 sequences x n_layer layers x (keys, values)
    assert naive.trace_ops()["aten::pad"] == 2 * 4 * n_layer * 2
    assert naive.outputs == slot.outputs


@pytest.mark.parametrize("prepack", [True, False])
def test_engine_prepack_decides_which_linear_kernels_run(tmp_path: Path, prepack: bool) -> None:
    """Prepacked float32 linears run oneDNN's packed kernel (mkldnn::_linear_pointwise); plain ones addmm."""
    ops = run(tmp_path, f"engine.prepack={str(prepack).lower()}", "profile.enabled=true").trace_ops()
    assert (ops["mkldnn::_linear_pointwise"] > 0, ops["aten::addmm"] > 0) == (prepack, not prepack)


def test_engine_num_threads_is_the_count_the_run_used(tmp_path: Path) -> None:
    for threads in (2, 1):
        produced = run(tmp_path, f"engine.num_threads={threads}", "num_requests=1", "max_new_tokens=2")
        assert environment(produced.setup.engine.device)["cpu_threads"] == threads


def test_engine_prefix_cache_serves_shared_prefixes_only_when_on(tmp_path: Path) -> None:
    on = run(tmp_path, *SHARED_PREFIX)
    off = run(tmp_path, *SHARED_PREFIX, "engine.prefix_cache=false")
    # Offline prefill admits all four together; the three after the first find its 32 prefix tokens.
    assert [r["num_cached_tokens"] for r in on.rows] == [0, 32, 32, 32]
    assert [r["num_cached_tokens"] for r in off.rows] == [0, 0, 0, 0]
    assert off.figures["prefix_cache_hit_rate"] == 0 < on.figures["prefix_cache_hit_rate"]
    assert on.outputs == off.outputs


def test_max_num_seqs_and_max_batch_size_bound_the_decode_batch(tmp_path: Path) -> None:
    slots = run(tmp_path, "scheduler.max_batch_size=4", "engine.max_num_seqs=2")
    batch = run(tmp_path, "scheduler.max_batch_size=3", "engine.max_num_seqs=4")
    assert max(slots.last_pass.stats.decode_batch_sizes) == 2
    assert max(batch.last_pass.stats.decode_batch_sizes) == 3
    assert slots.figures["kv_capacity_blocks"] == 2  # 2 slots of one block (7 tokens, 16 per block)


@pytest.mark.parametrize(("block_size", "max_model_len"), [(4, 64), (16, 64), (4, None)])
def test_block_size_and_max_model_len_size_the_cache(
    tmp_path: Path, block_size: int, max_model_len: int | None
) -> None:
    """Capacity = 4 slots x blocks per slot; max_model_len=null sizes a slot for the longest request
    (1 prompt token + 6 new)."""
    length = "null" if max_model_len is None else max_model_len
    produced = run(
        tmp_path,
        "scheduler.max_batch_size=4",
        f"engine.kv_cache.block_size={block_size}",
        f"engine.max_model_len={length}",
    )
    per_slot = -(-(max_model_len or 7) // block_size)
    assert produced.figures["kv_capacity_blocks"] == 4 * per_slot
    # "Hello" + 6 tokens, of which the last is never written: 6 cached tokens per sequence at the peak.
    assert produced.figures["peak_kv_blocks"] == 4 * -(-6 // block_size)


def test_num_blocks_budget_forces_preemption_and_keeps_the_tokens(tmp_path: Path) -> None:
    roomy = run(tmp_path, "engine.kv_cache.block_size=2", "max_new_tokens=12", "sampling.ignore_eos=true")
    tight = run(
        tmp_path,
        "engine.kv_cache.block_size=2",
        "max_new_tokens=12",
        "sampling.ignore_eos=true",
        "engine.kv_cache.num_blocks=10",
    )
    assert tight.figures["kv_capacity_blocks"] == 10 and tight.figures["peak_kv_blocks"] <= 10
    assert tight.figures["preemptions"] > 0 == roomy.figures["preemptions"]
    assert tight.outputs == roomy.outputs


def test_memory_fraction_sizes_the_slots_from_free_memory(tmp_path: Path) -> None:
    """A fraction of available memory worth 3.5 slots gives 3 (available memory moves by far less than
    the 14% it would take to change that between this test's reading and the engine's)."""
    tiny = MODEL_PRESETS["tiny"]
    per_slot = SlotKVCache.bytes_per_token(tiny, torch.float32) * 16  # max_model_len 7: one 16-token block
    fraction = 3.5 * per_slot / psutil.virtual_memory().available
    produced = run(tmp_path, f"engine.kv_cache.memory_fraction={fraction}", "scheduler.max_batch_size=8")
    assert produced.setup.config.engine.max_num_seqs == 3
    assert produced.figures["kv_capacity_blocks"] == 3
    assert max(produced.last_pass.stats.decode_batch_sizes) == 3


# -- scheduler ------------------------------------------------------------------------------------------


def test_max_batched_tokens_splits_prefill(tmp_path: Path) -> None:
    prompts = ("workload=random", "workload.input_len=32")
    split = run(tmp_path, *prompts, "scheduler.max_batched_tokens=64")
    whole = run(tmp_path, *prompts, "scheduler.max_batched_tokens=128")
    assert (split.last_pass.stats.prefill_steps, whole.last_pass.stats.prefill_steps) == (2, 1)


def test_request_rate_and_burstiness_shape_the_arrivals(tmp_path: Path) -> None:
    """Gaps are gamma(shape=burstiness, mean=1/rate) from a seeded stream: a 10x rate divides every
    arrival by 10; a smaller shape spreads the gaps (coefficient of variation 1/sqrt(shape))."""
    many = ("mode=online", "num_requests=64", "max_new_tokens=1")

    def arrivals(*overrides: str) -> list[float]:
        return [r["arrival_s"] for r in run(tmp_path, *many, *overrides).rows]

    slow, fast = arrivals("scheduler.request_rate=2000"), arrivals("scheduler.request_rate=20000")
    assert fast == pytest.approx([t / 10 for t in slow], rel=1e-9) and fast[-1] > 0

    def variation(times: list[float]) -> float:
        gaps = [b - a for a, b in zip([0.0, *times], times)]
        return statistics.pstdev(gaps) / statistics.fmean(gaps)

    bursty = variation(arrivals("scheduler.request_rate=20000", "scheduler.burstiness=0.25"))
    even = variation(arrivals("scheduler.request_rate=20000", "scheduler.burstiness=16"))
    assert bursty > 1.3 and even < 0.5, (bursty, even)  # expected 2 and 0.25


def test_max_concurrency_holds_requests_back(tmp_path: Path) -> None:
    """With one request in flight at most, each is sent when the previous one finished."""
    produced = run(tmp_path, "mode=online", "scheduler.max_concurrency=1")
    rows = sorted(produced.rows, key=lambda r: r["arrival_s"])
    assert all(b["arrival_s"] >= a["finish_s"] for a, b in zip(rows, rows[1:]))
    assert max(produced.last_pass.stats.decode_batch_sizes) == 1


# -- workloads ------------------------------------------------------------------------------------------


def test_workload_options_shape_the_prompts(tmp_path: Path) -> None:
    tokenizer = load_tokenizer()
    fixed = run(tmp_path, "workload.prompt=The quick brown fox")
    assert {tuple(r["prompt_token_ids"]) for r in fixed.rows} == {
        tuple(tokenizer.encode("The quick brown fox"))
    }

    lengths = ("workload=random", "workload.input_len=8", "workload.range_ratio=0.5", "num_requests=16")
    spread = run(tmp_path, *lengths, "workload.output_len=3", "sampling.ignore_eos=true")
    prompt_lens = [len(r["prompt_token_ids"]) for r in spread.rows]
    assert all(4 <= n <= 12 for n in prompt_lens) and len(set(prompt_lens)) > 1
    output_lens = [len(out) for out in spread.outputs]  # output_len 3, spread by the same ratio
    assert all(1 <= n <= 5 for n in output_lens) and len(set(output_lens)) > 1

    shared = run(
        tmp_path,
        "workload=shared_prefix",
        "workload.num_prefixes=2",
        "workload.prefix_len=16",
        "workload.suffix_len=5",
    )
    prompts = [r["prompt_token_ids"] for r in shared.rows]
    assert {len(p) for p in prompts} == {21} and len({tuple(p[:16]) for p in prompts}) == 2
    assert len({tuple(p) for p in prompts}) == 4


# -- profile --------------------------------------------------------------------------------------------


def step_labels(events: list[dict[str, Any]]) -> int:
    return sum(e["name"] in ("rosebench.engine.prefill", "rosebench.engine.decode") for e in events)


def test_profile_schedule_sets_the_recorded_steps_and_cycles(tmp_path: Path) -> None:
    """16 steps (a prefill and 15 decodes), numbered from 0 by the profiler: skip step 0, then two cycles
    of wait 1, warmup 1, active 2 record steps 3-4 and 7-8."""
    produced = run(
        tmp_path,
        "max_new_tokens=16",
        "sampling.ignore_eos=true",
        "profile.enabled=true",
        "profile.skip_first=1",
        "profile.wait=1",
        "profile.warmup=1",
        "profile.active=2",
        "profile.repeat=2",
    )
    traces = sorted((produced.folder / "profile").glob("trace_*.json.gz"))
    assert [t.name for t in traces] == ["trace_0.json.gz", "trace_1.json.gz"]
    for trace, recorded in zip(traces, ([3, 4], [7, 8])):
        with gzip.open(trace, "rt") as f:
            events = json.load(f)["traceEvents"]
        steps = sorted(int(e["name"].split("#")[1]) for e in events if e["name"].startswith("ProfilerStep#"))
        assert steps == recorded and step_labels(events) == 2


def test_profile_recording_options_add_what_they_name(tmp_path: Path) -> None:
    plain = run(tmp_path, "profile.enabled=true").trace_events()
    assert not any("Input Dims" in e.get("args", {}) for e in plain)
    assert not any(e.get("cat") in ("cpu_instant_event", "python_function") for e in plain)
    shapes = run(tmp_path, "profile.enabled=true", "profile.record_shapes=true").trace_events()
    assert any("Input Dims" in e.get("args", {}) for e in shapes)
    memory = run(tmp_path, "profile.enabled=true", "profile.profile_memory=true").trace_events()
    assert any(e.get("cat") == "cpu_instant_event" and "Bytes" in e["args"] for e in memory)
    stacks = run(tmp_path, "profile.enabled=true", "profile.with_stack=true").trace_events()
    assert any(e.get("cat") == "python_function" for e in stacks)


def test_profile_row_limit_and_activities(tmp_path: Path) -> None:
    produced = run(tmp_path, "profile.enabled=true", "profile.row_limit=5", "profile.activities=cpu")
    table = (produced.folder / "profile" / "key_averages.txt").read_text().splitlines()
    rules = [
        i for i, line in enumerate(table) if line.startswith("---")
    ]  # above, below the header; below the rows
    assert len(table[rules[1] + 1 : rules[2]]) == 5, table
    assert not any(e.get("cat") in ("kernel", "gpu_memcpy", "cuda_runtime") for e in produced.trace_events())
