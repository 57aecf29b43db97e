"""The Hydra runner end to end: the real ``python -m rosebench`` in a subprocess, run in a temporary folder.

Each subprocess costs several seconds of imports, so the spellings a user may type are grouped into a
few runs whose results.json and outputs.jsonl show that every override took effect.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml
from cli_helpers import FAST, assert_ok, cli_env, describe, read_outputs, read_results, run_cli
from hydra import compose, initialize_config_dir

from rosebench.conf_dir import conf_dir
from rosebench.config import load_config, register_configs
from rosebench.engine.models.gpt2 import GPT2
from rosebench.engine.weights import model_config

EOS = 50256
ROW_KEYS = {
    "request_id",
    "prompt_token_ids",
    "output_token_ids",
    "text",
    "arrival_s",
    "first_token_s",
    "finish_s",
    "ttft_ms",
    "e2e_ms",
}
METRIC_KEYS = {
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "throughput_completion_tok_s",
    "throughput_total_tok_s",
    "request_throughput_req_s",
    "ttft_ms_p50",
    "ttft_ms_p99",
    "tpot_ms_mean",
    "itl_ms_p50",
    "e2e_ms_p90",
    "mean_batch_size",
    "prefix_cache_hit_rate",
}


def _tokenizer():
    from rosebench.engine.tokenizer import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="module")
def eos_weights_dir(hf_tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The HF tiny fixture with ln_f collapsed so that every position's argmax is <|endoftext|>."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path_factory.mktemp("hf_eos")
    shutil.copy(hf_tiny_dir / "config.json", folder / "config.json")
    state = load_file(hf_tiny_dir / "model.safetensors")
    width = state["transformer.ln_f.weight"].shape[0]
    direction = torch.ones(width) / math.sqrt(width)
    state["transformer.ln_f.weight"] = torch.zeros(width)
    state["transformer.ln_f.bias"] = direction.clone()
    wte = state["transformer.wte.weight"].clone()
    wte[EOS] = 50 * direction
    state["transformer.wte.weight"] = wte
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors", {"format": "pt"})
    return folder


# --------------------------------------------------------------------------------------------- runs


def test_default_shaped_run_writes_results_outputs_and_table(tmp_path: Path) -> None:
    proc = run_cli(
        tmp_path, "engine=tiny", "tracking=off", "num_requests=3", "max_new_tokens=4", "warmup=0", "repeat=2"
    )
    assert_ok(proc)
    found = list(tmp_path.glob("outputs/*/*/results.json"))
    assert len(found) == 1, f"expected one run folder under outputs/<date>/<time>/, got {found}"
    run_dir = found[0].parent
    results = read_results(run_dir)
    assert {"config", "metrics", "passes", "environment", "profile"} <= results.keys()

    config = results["config"]
    assert "${" not in json.dumps(config), "results.json config is not resolved"
    assert config["mode"] == "offline"
    assert config["num_requests"] == 3 and config["max_new_tokens"] == 4 and config["repeat"] == 2
    assert config["engine"]["model"] == "tiny"
    assert config["tracking"]["enabled"] is False

    metrics = results["metrics"]
    assert metrics.keys() >= METRIC_KEYS, sorted(METRIC_KEYS - metrics.keys())
    assert metrics["requests"] == 3
    assert metrics["prompt_tokens"] == 3  # "Hello" is one token
    assert metrics["throughput_completion_tok_s"] > 0 and metrics["ttft_ms_p50"] > 0
    assert len(results["passes"]) == 2
    assert all(p["requests"] == 3 for p in results["passes"])

    env = results["environment"]
    assert env["python"] and env["torch"] == torch.__version__ and env["device"] == "cpu"
    assert results["profile"] is None
    assert not (run_dir / "profile").exists()

    rows = read_outputs(run_dir)
    assert [r["request_id"] for r in rows] == [0, 1, 2]
    # Greedy: every pass generates the same tokens, so the mean equals the last pass's count.
    assert metrics["completion_tokens"] == sum(len(r["output_token_ids"]) for r in rows)
    hello = _tokenizer().encode("Hello")
    for row in rows:
        assert row.keys() >= ROW_KEYS, sorted(ROW_KEYS - row.keys())
        assert row["prompt_token_ids"] == hello
        # 4 tokens, or fewer ending in <|endoftext|> (greedy on random weights may pick it)
        out = row["output_token_ids"]
        assert (len(out), row["finish_reason"]) == (4, "length") or (out[-1], row["finish_reason"]) == (
            EOS,
            "stop",
        ), row
        assert row["text"] == _tokenizer().decode(row["output_token_ids"])
        assert row["ttft_ms"] > 0 and row["e2e_ms"] >= row["ttft_ms"]

    for line in ("requests", "completion throughput (tok/s)", "TTFT", "TPOT", "ITL", "E2E"):
        assert line in proc.stdout, f"summary table lacks {line!r}:\n{proc.stdout}"
    assert "mean of 2 timed passes" in proc.stdout
    assert str(run_dir / "results.json") in proc.stdout
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists(), "tracking=off logged"


def test_the_defaults_a_user_gets(tmp_path: Path) -> None:
    """Nothing but the model (the default gpt2 is slow on a test machine) and tracking: one warm-up and
    three timed passes of 16 requests x 64 tokens with the prefix cache on, every pass cold."""
    proc = run_cli(tmp_path, "engine=tiny", "tracking=off", "hydra.run.dir=run")
    assert_ok(proc)
    results = read_results(tmp_path / "run")
    config = results["config"]
    assert (config["warmup"], config["repeat"], config["engine"]["prefix_cache"]) == (1, 3, True)
    passes = results["passes"]
    assert len(passes) == 3 and "mean of 3 timed passes" in proc.stdout
    assert all(p["requests"] == 16 for p in passes)
    # Greedy on the same weights: each pass generates the same tokens and, starting cold, hits the cache
    # the same way (16 one-token prompts fill no block: nothing to hit).
    assert len({p["completion_tokens"] for p in passes}) == 1
    assert [p["prefix_cache_hit_rate"] for p in passes] == [0.0] * 3
    rows = read_outputs(tmp_path / "run")
    assert len(rows) == 16 and all(
        len(r["output_token_ids"]) == 64 or r["output_token_ids"][-1] == EOS for r in rows
    )


def test_online_spellings(tmp_path: Path) -> None:
    """mode=online, a finite request rate, naive attention, no prefix cache, one sequence at a time."""
    proc = run_cli(
        tmp_path,
        *FAST,
        "mode=online",
        "scheduler.request_rate=50",
        "engine.attention=naive",
        "engine.device=cpu",
        "engine.dtype=float32",
        "engine.prefix_cache=false",
        "engine.num_threads=1",
        "scheduler.max_batch_size=1",
        "sampling=top_k_top_p",
        "workload=shared_prefix",
        "workload.num_prefixes=1",
        "workload.prefix_len=32",
        "workload.suffix_len=4",
        "num_requests=3",
        "max_new_tokens=3",
        "hydra.run.dir=run",
    )
    assert_ok(proc)
    run_dir = tmp_path / "run"
    assert not (tmp_path / "outputs").exists(), "hydra.run.dir was ignored"
    results = read_results(run_dir)
    config, engine = results["config"], results["config"]["engine"]
    assert config["mode"] == "online"
    assert config["scheduler"]["request_rate"] == 50 and config["scheduler"]["max_batch_size"] == 1
    assert (engine["attention"], engine["device"], engine["dtype"], engine["prefix_cache"]) == (
        "naive",
        "cpu",
        "float32",
        False,
    )
    assert (config["sampling"]["top_k"], config["sampling"]["top_p"]) == (40, 0.9)
    # Only the chosen kind's keys, and the derived values that ran: slots from the batch size, the context
    # from the longest request (36 prompt + 3 new tokens), the block budget from both.
    assert config["workload"] == {
        "kind": "shared_prefix",
        "num_prefixes": 1,
        "prefix_len": 32,
        "suffix_len": 4,
    }
    assert (engine["max_num_seqs"], engine["max_model_len"], engine["kv_cache"]["num_blocks"]) == (1, 39, 3)
    assert config["sampling"]["max_new_tokens"] == 3 and engine["seed"] == config["seed"]
    assert results["environment"]["device"] == "cpu"
    assert engine["num_threads"] == 1 and results["environment"]["cpu_threads"] == 1

    metrics = results["metrics"]
    assert metrics["requests"] == 3
    assert metrics["mean_batch_size"] == 1.0
    assert metrics["prefix_cache_hit_rate"] == 0.0

    rows = read_outputs(run_dir)
    assert len(rows) == 3
    arrivals = [r["arrival_s"] for r in rows]
    assert arrivals[0] > 0 and arrivals == sorted(arrivals), f"no Poisson arrivals at rate 50: {arrivals}"
    prefixes = {tuple(r["prompt_token_ids"][:32]) for r in rows}
    assert len(prefixes) == 1 and all(len(r["prompt_token_ids"]) == 36 for r in rows)
    assert all(r["num_cached_tokens"] == 0 for r in rows), "engine.prefix_cache=false still hit the cache"
    assert all(1 <= len(r["output_token_ids"]) <= 3 for r in rows)


def test_offline_hf_weights_jsonl_greedy_matches_transformers(
    tmp_path: Path, hf_tiny_dir: Path, hf_tiny_model
) -> None:
    workload = tmp_path / "prompts.jsonl"
    workload.write_text(
        json.dumps({"prompt": "The quick brown fox"})
        + "\n\n"
        + json.dumps({"prompt_token_ids": [464, 2068, 7586], "max_new_tokens": 3})
        + "\n"
    )
    proc = run_cli(
        tmp_path,
        *FAST,
        "mode=offline",
        f"engine.weights={hf_tiny_dir}",
        "sampling=greedy",
        "scheduler.request_rate=inf",
        "workload=jsonl",
        f"workload.path={workload}",
        "num_requests=3",
        "max_new_tokens=5",
        "hydra.run.dir=run",
    )
    assert_ok(proc)
    run_dir = tmp_path / "run"
    results = read_results(run_dir)
    assert results["config"]["engine"]["weights"] == str(hf_tiny_dir)
    assert results["config"]["workload"]["kind"] == "jsonl"
    assert results["config"]["workload"]["path"] == str(workload)
    assert results["config"]["scheduler"]["request_rate"] == "inf"
    assert results["metrics"]["requests"] == 3
    # FAST picks engine=tiny, but what ran is the checkpoint: its architecture is what is recorded.
    model = results["model"]
    assert (model["n_layer"], model["n_embd"], model["n_head"], model["n_positions"]) == (2, 64, 4, 256)
    assert model["parameters"] == sum(p.numel() for p in hf_tiny_model.transformer.parameters())
    assert results["run"]["name"].endswith("-2L64d") and "2-layer 64-wide GPT-2" in proc.stdout

    rows = read_outputs(run_dir)
    fox = _tokenizer().encode("The quick brown fox")
    assert [r["prompt_token_ids"] for r in rows] == [fox, [464, 2068, 7586], fox]  # the file is cycled
    assert [len(r["output_token_ids"]) for r in rows] == [5, 3, 5]  # a line's max_new_tokens wins
    assert all(r["arrival_s"] == 0 for r in rows)
    for row in rows:
        ids = torch.tensor([row["prompt_token_ids"]])
        with torch.no_grad():
            for _ in row["output_token_ids"]:
                ids = torch.cat([ids, hf_tiny_model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        expected = ids[0, len(row["prompt_token_ids"]) :].tolist()
        assert row["output_token_ids"] == expected, "engine.weights=<HF folder> does not generate as HF does"


def test_ignore_eos_generates_exactly_max_new_tokens(tmp_path: Path, eos_weights_dir: Path) -> None:
    # A relative path keeps the job folder names flat (override_dirname does not escape "/").
    shutil.copytree(eos_weights_dir, tmp_path / "eos")
    proc = run_cli(
        tmp_path,
        "--multirun",
        *FAST,
        "engine.weights=eos",
        "workload=random",
        "workload.input_len=6",
        "num_requests=3",
        "max_new_tokens=4",
        "sampling.ignore_eos=false,true",
        "hydra.sweep.dir=sweep",
    )
    assert_ok(proc)
    by_flag = {}
    for path in (tmp_path / "sweep").glob("*/results.json"):
        results = read_results(path.parent)
        by_flag[results["config"]["sampling"]["ignore_eos"]] = read_outputs(path.parent)
    assert set(by_flag) == {False, True}, describe(proc)
    for row in by_flag[False]:  # the model only ever predicts <|endoftext|>: each request stops at once
        assert row["output_token_ids"] == [EOS] and row["finish_reason"] == "stop", row
    for row in by_flag[True]:
        assert len(row["prompt_token_ids"]) == 6
        assert row["output_token_ids"] == [EOS] * 4, row


@pytest.mark.parametrize(("workload", "hit_rate"), [("random", 0.0), ("shared_prefix", 1 / 3)])
def test_every_pass_starts_cold(tmp_path: Path, workload: str, hit_rate: float) -> None:
    """A warm-up never serves the timed passes' prompts: random prompts share nothing in any pass, and
    shared prefixes hit the same share in every pass: 4 prompts of 32 + 16 tokens over 2 prefixes, the
    last two hit 32 tokens each, 64 of 192 (a warm cache would serve all four: 128 of 192)."""
    options = {
        "random": ["workload.input_len=40"],
        "shared_prefix": ["workload.num_prefixes=2", "workload.prefix_len=32", "workload.suffix_len=16"],
    }[workload]
    proc = run_cli(
        tmp_path,
        "engine=tiny",
        "tracking=off",
        f"workload={workload}",
        *options,
        "num_requests=4",
        "max_new_tokens=4",
        "warmup=1",
        "repeat=2",
        "hydra.run.dir=run",
    )
    assert_ok(proc)
    passes = read_results(tmp_path / "run")["passes"]
    assert [p["prefix_cache_hit_rate"] for p in passes] == [pytest.approx(hit_rate)] * 2


def test_one_output_token_leaves_decode_figures_unmeasured(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, *FAST, "num_requests=2", "max_new_tokens=1", "hydra.run.dir=run")
    assert_ok(proc)
    metrics = read_results(tmp_path / "run")["metrics"]
    absent = ("tpot_ms_p50", "itl_ms_mean", "decode_step_ms_p50", "mean_batch_size")
    assert not set(absent) & set(metrics), metrics
    assert metrics["ttft_ms_p50"] > 0
    table = proc.stdout.splitlines()
    assert any(line.startswith("TPOT") and line.split()[1:] == ["-"] * 4 for line in table), proc.stdout
    assert any(line.startswith("mean batch size") and line.split()[-1] == "-" for line in table), proc.stdout


def test_slow_online_pass_is_never_silent(tmp_path: Path) -> None:
    """Off a terminal (a log file, Slurm) a long pass says how long its arrivals span, then reports every
    10 s: 3 requests at 0.15/s arrive over ~20 s."""
    proc = run_cli(
        tmp_path, *FAST, "mode=online", "scheduler.request_rate=0.15", "num_requests=3", "max_new_tokens=2"
    )
    assert_ok(proc)
    lines = proc.stderr.splitlines()
    [span] = [line for line in lines if "arriving over" in line]
    assert span.startswith("rosebench: each pass: 3 requests arriving over ") and "request_rate=0.15" in span
    progress = [
        line for line in lines if line.startswith("rosebench: pass 1/1: ") and "requests done" in line
    ]
    seconds = float(span.split("arriving over ")[1].split(" s")[0])
    assert len(progress) >= int(seconds // 10), proc.stderr


def test_failing_profiled_pass_keeps_the_timed_figures(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "profile").write_text("a file where the profile folder goes")
    proc = run_cli(
        tmp_path, *FAST, "num_requests=2", "max_new_tokens=4", "profile.enabled=true", "hydra.run.dir=run"
    )
    assert_ok(proc)
    results = read_results(tmp_path / "run")
    assert results["run"]["status"] == "FINISHED" and results["metrics"]["requests"] == 2
    assert results["profile"] is None and results["run"]["profile_error"].startswith("FileExistsError")
    assert "profiled pass failed (FileExistsError" in proc.stderr


def test_profile_enabled_writes_trace_and_profile_block(tmp_path: Path) -> None:
    proc = run_cli(
        tmp_path,
        *FAST,
        "profile.enabled=true",
        "mode=online",
        "scheduler.max_batch_size=2",
        "workload=shared_prefix",
        "workload.num_prefixes=1",
        "workload.prefix_len=32",
        "workload.suffix_len=4",
        "num_requests=4",
        "max_new_tokens=4",
        "hydra.run.dir=run",
    )
    assert_ok(proc)
    run_dir = tmp_path / "run"
    traces = list((run_dir / "profile").glob("*.json.gz"))
    assert traces, f"no .json.gz trace in {run_dir / 'profile'}"
    results = read_results(run_dir)
    assert results["config"]["profile"]["enabled"] is True
    assert results["profile"] is not None
    assert results["profile"]["traces"] and results["profile"]["summary"]
    assert len(results["passes"]) == 1  # the profiled pass is not one of the timed passes
    # Requests 2 and 3 start after 0 and 1 finish and reuse their 32-token prefix (prefix cache on).
    assert results["metrics"]["prefix_cache_hit_rate"] > 0
    assert results["metrics"]["mean_batch_size"] <= 2
    labels = results["profile"]["summary"]["labels"]
    assert "rosebench.engine.decode" in labels and "rosebench.attention.attend" not in labels  # detail=step


def test_profile_detail_layer_labels_every_layer(tmp_path: Path) -> None:
    proc = run_cli(
        tmp_path,
        *FAST,
        "profile.enabled=true",
        "profile.detail=layer",
        "num_requests=2",
        "max_new_tokens=4",
        "hydra.run.dir=run",
    )
    assert_ok(proc)
    summary = read_results(tmp_path / "run")["profile"]["summary"]
    # tiny has 2 layers; each of the 4 steps (1 prefill + 3 decodes) runs every layer once.
    assert summary["labels"]["rosebench.attention.attend"]["count"] == 2 * summary["steps"] == 8
    assert summary["labels"]["rosebench.attention.kv_write"]["count"] == 8


@pytest.mark.slow
def test_engine_compile_records_its_time_and_changes_no_token(tmp_path: Path) -> None:
    """engine.compile=true: compiled before timing (engine_compile_s, shown in the table), and the tokens
    are those of the eager engine for the same seeded, sampled workload."""
    common = (*FAST, "num_requests=3", "max_new_tokens=6", "sampling=top_k_top_p")
    eager = run_cli(tmp_path, *common, "hydra.run.dir=eager")
    compiled = run_cli(tmp_path, *common, "engine.compile=true", "hydra.run.dir=compiled")
    assert_ok(eager)
    assert_ok(compiled)
    metrics = read_results(tmp_path / "compiled")["metrics"]
    assert (
        metrics["engine_compile_s"] > 0
        and "engine_compile_s" not in read_results(tmp_path / "eager")["metrics"]
    )
    assert "engine compile (s)" in compiled.stdout and "engine compile (s)" not in eager.stdout
    tokens = [[r["output_token_ids"] for r in read_outputs(tmp_path / d)] for d in ("eager", "compiled")]
    assert tokens[0] == tokens[1] and len({tuple(t) for t in tokens[0]}) == 3


@pytest.mark.parametrize("engine", ["gpt2", "gpt2-medium"])
def test_big_engine_presets_compose(tmp_path: Path, engine: str) -> None:
    proc = run_cli(tmp_path, f"engine={engine}", "tracking=off", "--cfg", "job")
    assert_ok(proc)
    config = yaml.safe_load(proc.stdout)
    assert config["engine"]["model"] == engine
    assert config["engine"]["weights"] is None
    assert not (tmp_path / "outputs").exists(), "--cfg job ran the benchmark"


def test_tracking_uri(tmp_path: Path) -> None:
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    proc = run_cli(
        tmp_path,
        "engine=tiny",
        "warmup=0",
        "repeat=1",
        "num_requests=1",
        "max_new_tokens=2",
        f"tracking.uri=sqlite:///{db}",
        "hydra.run.dir=run",
    )
    assert_ok(proc)
    assert read_results(tmp_path / "run")["config"]["tracking"]["uri"] == f"sqlite:///{db}"
    assert db.is_file() and db.stat().st_size > 0, "tracking.uri was not used"
    assert not (tmp_path / "mlflow.db").exists(), "logged to the default store instead of tracking.uri"
    assert "mlflow:" in proc.stdout


# ------------------------------------------------------------------------------------------ bad values

_ONE_LINE = "rosebench: error: "
# id -> (overrides, words the message must contain, whether it is rosebench's own one-line message)
BAD = {
    "num_requests=0": (["num_requests=0"], ["num_requests", ">= 1"], True),
    "top_p=1.5": (["sampling.top_p=1.5"], ["sampling.top_p", "(0, 1]"], True),
    "max_batch_size=-1": (["scheduler.max_batch_size=-1"], ["scheduler.max_batch_size", ">= 1"], True),
    "jsonl-without-path": (["workload=jsonl"], ["workload.path", "required"], True),
    "jsonl-missing-file": (
        ["workload=jsonl", "workload.path=/nonexistent"],
        ["workload.path", "/nonexistent"],
        True,
    ),
    "device=cuda": (["engine.device=cuda"], ["engine.device", "cpu"], True),
    "dtype=float64": (["engine.dtype=float64"], ["engine.dtype", "float32", "bfloat16", "float16"], True),
    "attention=flash": (["engine.attention=flash"], ["engine.attention", "slot", "naive"], True),
    # 0 must be an error, not read as "unset" (null means: derive from the run).
    "max_num_seqs=0": (["engine.max_num_seqs=0"], ["engine.max_num_seqs=0", ">= 1"], True),
    "seed=2**64": (["seed=18446744073709551616"], ["seed=18446744073709551616", "[0, 2**32)"], True),
    "engine.seed=2**70": (
        ["engine.seed=1180591620717411303424"],
        ["engine.seed=1180591620717411303424"],
        True,
    ),
    "sampling.seed=-1": (["sampling.seed=-1"], ["sampling.seed=-1", "[0, 2**32)"], True),
    "temperature=inf": (["sampling.temperature=inf"], ["sampling.temperature=inf", "finite"], True),
    "temperature=nan": (["sampling.temperature=nan"], ["sampling.temperature=nan", "finite"], True),
    # one past each end: these runs have max_new_tokens=4
    "min_tokens=-1": (["sampling.min_tokens=-1"], ["sampling.min_tokens=-1", "[0, max_new_tokens=4]"], True),
    "min_tokens=5": (["sampling.min_tokens=5"], ["sampling.min_tokens=5", "[0, max_new_tokens=4]"], True),
    "burstiness=inf": (["scheduler.burstiness=inf"], ["scheduler.burstiness=inf", "finite"], True),
    "block_size=100000": (
        ["engine.kv_cache.block_size=100000"],
        ["engine.kv_cache.block_size", "[1, 256]"],
        True,
    ),
    "num_requests=10**9": (["num_requests=1000000000"], ["num_requests=1000000000", "<= 1000000"], True),
    "activities=cuda-on-cpu": (
        ["profile.enabled=true", "profile.activities=cuda"],
        ["profile.activities=cuda", "auto, cpu"],
        True,
    ),
    "num_threads=0": (["engine.num_threads=0"], ["engine.num_threads=0", ">= 1"], True),
    "cuda_graphs=true-on-cpu": (
        ["engine.cuda_graphs=true"],
        ["engine.cuda_graphs=true", "auto, false"],
        True,
    ),
    "cuda_graphs=sometimes": (
        ["engine.cuda_graphs=sometimes"],
        ["engine.cuda_graphs=sometimes", "auto"],
        True,
    ),
    "profile.detail=layers": (["profile.detail=layers"], ["profile.detail=layers", "step, layer"], True),
    "compile-naive": (
        ["engine.compile=true", "engine.attention=naive"],
        ["engine.compile=true", "engine.attention=naive", "allowed with it: engine.compile=false"],
        True,
    ),
    "num_blocks=0": (["engine.kv_cache.num_blocks=0"], ["engine.kv_cache.num_blocks=0", ">= 1"], True),
    "mode=sideways": (["mode=sideways"], ["mode=sideways", "offline", "online"], True),
    "device=tpu": (["engine.device=tpu"], ["engine.device=tpu", "cuda:N"], True),
    "max_model_len=257": (["engine.max_model_len=257"], ["engine.max_model_len=257", "[1, 256]"], True),
    "range_ratio=1": (
        ["workload=random", "workload.range_ratio=1"],
        ["workload.range_ratio", "[0, 1)"],
        True,
    ),
    # A kind's node holds only its own keys: Hydra rejects another kind's key, naming the kind's class.
    "fixed-with-input_len": (["workload.input_len=5"], ["workload.input_len", "FixedWorkload"], False),
    "random-with-prompt": (
        ["workload=random", "workload.prompt=hi"],
        ["workload.prompt", "RandomWorkload"],
        False,
    ),
    "kind-key": (["workload=random", "workload.kind=fixed"], ["workload.kind=fixed", "workload=fixed"], True),
    "unknown-key": (["engine.foo=1"], ["engine.foo"], False),
    "jsonl-malformed-line": (["workload=jsonl", "workload.path=bad.jsonl"], ["bad.jsonl:2"], True),
    # engine=tiny has 256 positions: the message must name the key to lower and the limit.
    "too-long-for-context": (["max_new_tokens=300"], ["max_new_tokens", "300", "256"], True),
}


def test_config_error_and_help_import_no_torch(tmp_path: Path) -> None:
    """--help and config errors answer without importing torch or MLflow (~4 s with torch, ~1 s without)."""
    for args, expected in (
        (["num_requests=0"], "rosebench: error: num_requests=0: must be >= 1"),
        (["--help"], ""),
    ):
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "rosebench", "tracking=off", *args],
            cwd=tmp_path,
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
        assert "omegaconf" in imported, f"-X importtime printed nothing to check\n{describe(proc)}"
        assert "torch" not in imported and "mlflow" not in imported, describe(proc)
        assert expected in proc.stderr, describe(proc)


_NEED_NO_GPU = {"device=cuda", "activities=cuda-on-cpu", "cuda_graphs=true-on-cpu"}


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    """Every bad-value run, two at a time: they fail early, so most of their cost is imports."""
    root = tmp_path_factory.mktemp("bad")

    def one(case: str) -> subprocess.CompletedProcess[str]:
        cwd = root / case.replace("=", "_")
        cwd.mkdir()
        (cwd / "bad.jsonl").write_text('{"prompt": "fine"}\n{"prompt": broken\n')
        overrides = BAD[case][0]
        return run_cli(cwd, *FAST, "num_requests=2", "max_new_tokens=4", *overrides)

    cases = [c for c in BAD if c not in _NEED_NO_GPU or not torch.cuda.is_available()]
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(cases, pool.map(one, cases)))


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(
            c,
            marks=pytest.mark.skipif(
                c in _NEED_NO_GPU and torch.cuda.is_available(), reason="CUDA is available here"
            ),
        )
        for c in BAD
    ],
)
def test_bad_value_is_one_clear_line(
    case: str, bad_runs: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    proc = bad_runs[case]
    _, words, own = BAD[case]
    assert proc.returncode == 1, describe(proc)
    assert "Traceback" not in proc.stderr, describe(proc)
    for word in words:
        assert word in proc.stderr, f"message lacks {word!r}\n{describe(proc)}"
    if own:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(_ONE_LINE), describe(proc)


def _damaged_weights(root: Path, hf_dir: Path) -> dict[str, tuple[Path, str]]:
    """Weights sources a user can hand over by mistake, with what the one-line error must name."""
    from safetensors.torch import load_file, save_file

    cases = {}
    truncated = root / "truncated"
    shutil.copytree(hf_dir, truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    cases["truncated-safetensors"] = (truncated, "model.safetensors: cannot be read as weights")
    garbage = root / "garbage-bin"
    garbage.mkdir()
    shutil.copy(hf_dir / "config.json", garbage / "config.json")
    (garbage / "pytorch_model.bin").write_bytes(b"not a checkpoint")
    cases["garbage-bin"] = (garbage, "pytorch_model.bin: cannot be read as weights")
    typed = root / "wrong-type-config"
    shutil.copytree(hf_dir, typed)
    config = json.loads((typed / "config.json").read_text())
    (typed / "config.json").write_text(json.dumps({**config, "n_layer": "two"}))
    cases["config-wrong-type"] = (typed, "config.json: 'n_layer' must be an integer >= 1, got 'two'")
    not_state = root / "not-a-state-dict.pt"
    torch.save({"model": [1, 2, 3], "config": {"n_layer": 2}}, not_state)
    cases["pt-model-not-state-dict"] = (not_state, "key 'model' must be a state_dict")
    nan = root / "nan-weights"
    shutil.copytree(hf_dir, nan)
    state = load_file(nan / "model.safetensors")
    state["transformer.ln_f.weight"][:] = float("nan")
    save_file(state, nan / "model.safetensors", metadata={"format": "pt"})
    cases["nan-weights"] = (nan, "non-finite logits (NaN or inf) at a prefill")  # found at the first step
    return cases


def test_damaged_weights_are_one_clear_line(tmp_path: Path, hf_tiny_dir: Path) -> None:
    cases = _damaged_weights(tmp_path, hf_tiny_dir)

    def one(case: str) -> subprocess.CompletedProcess[str]:
        return run_cli(
            tmp_path, *FAST, "num_requests=1", "max_new_tokens=2", f"engine.weights={cases[case][0]}"
        )

    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = dict(zip(cases, pool.map(one, cases)))
    for case, proc in runs.items():
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 1 and len(lines) == 1, f"{case}\n{describe(proc)}"
        assert lines[0].startswith(_ONE_LINE) and cases[case][1] in lines[0], f"{case}\n{describe(proc)}"
    # Only the NaN weights get as far as a run folder, which records the failure.
    [results_file] = tmp_path.glob("outputs/*/*/results.json")
    assert read_results(results_file.parent)["run"]["status"] == "FAILED"


# -------------------------------------------------------------------------------------------- multirun


def _job_dirs(sweep_root: Path) -> dict[str, Path]:
    return {p.name: p for p in sweep_root.glob("outputs/multirun/*/*/*") if p.is_dir()}


def test_multirun_two_points(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "--multirun", *FAST, "max_new_tokens=2", "num_requests=1,2")
    assert_ok(proc)
    jobs = _job_dirs(tmp_path)
    assert len(jobs) == 2, jobs
    for n in (1, 2):
        (name,) = [name for name in jobs if f"num_requests={n}" in name.split(",")]
        results = read_results(jobs[name])
        assert results["metrics"]["requests"] == n
        assert results["config"]["num_requests"] == n
        assert len(read_outputs(jobs[name])) == n


def test_multirun_failing_job_does_not_stop_the_others(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "--multirun", *FAST, "max_new_tokens=2", "num_requests=0,2")
    assert proc.returncode != 0, describe(proc)
    jobs = _job_dirs(tmp_path)
    (bad,) = [p for name, p in jobs.items() if "num_requests=0" in name.split(",")]
    (good,) = [p for name, p in jobs.items() if "num_requests=2" in name.split(",")]
    assert not (bad / "results.json").exists() or read_results(bad)["run"]["status"] == "FAILED"
    assert read_results(good)["metrics"]["requests"] == 2, describe(proc)
    assert "num_requests=0: must be >= 1" in proc.stderr


@pytest.mark.slow
def test_multirun_submitit_local(tmp_path: Path) -> None:
    proc = run_cli(
        tmp_path,
        "--multirun",
        "hydra/launcher=submitit_local",
        *FAST,
        "max_new_tokens=2",
        "num_requests=1,2",
        "hydra.sweep.dir=sweep",
    )
    assert_ok(proc)
    found = {
        read_results(p.parent)["config"]["num_requests"] for p in (tmp_path / "sweep").glob("*/results.json")
    }
    assert found == {1, 2}, describe(proc)


# -- the gpt2-large preset and the summary's spread ---------------------------------------------------------
def test_the_gpt2_large_preset_composes_with_gpt2_larges_shape(tmp_path: Path) -> None:
    """``engine.model=gpt2-large`` (no engine group option of its own): Hydra composes it, the run's
    config accepts it, and it builds GPT-2 large (774,030,080 parameters with the tied lm_head), here on
    the meta device so that nothing is allocated."""
    proc = run_cli(tmp_path, "engine.model=gpt2-large", "--cfg", "job")
    assert_ok(proc)
    assert yaml.safe_load(proc.stdout)["engine"]["model"] == "gpt2-large"
    register_configs()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        config = load_config(compose("config", overrides=["engine.model=gpt2-large", "tracking=off"]))
    assert config.engine.model == "gpt2-large"
    shape = model_config(config.engine.model, config.engine.weights)
    assert (shape.n_layer, shape.n_embd, shape.n_head, shape.n_positions) == (36, 1280, 20, 1024)
    with torch.device("meta"):
        model = GPT2(shape)
    assert sum(p.numel() for p in model.parameters()) == 774_030_080


# Summary lines and the figure each shows, in the summary's own format.
SPREAD_LINES = {
    "elapsed total (s)": ("elapsed_total_s", "{:.3f}"),
    "completion throughput (tok/s)": ("throughput_completion_tok_s", "{:.1f}"),
    "request throughput (req/s)": ("request_throughput_req_s", "{:.2f}"),
}


def test_the_summary_shows_each_figure_plus_minus_the_std_of_its_passes(tmp_path: Path) -> None:
    """With repeat=3 the console's ``± x`` is the population standard deviation of the run's three timed
    passes (results.json's passes, computed here), in the line's own format."""
    proc = run_cli(tmp_path, *FAST, "repeat=3", "num_requests=2", "max_new_tokens=4", "hydra.run.dir=run")
    assert_ok(proc)
    results = read_results(tmp_path / "run")
    assert len(results["passes"]) == 3
    lines = proc.stdout.splitlines()
    for label, (key, fmt) in SPREAD_LINES.items():
        passes = [figures[key] for figures in results["passes"]]
        mean, std = statistics.fmean(passes), statistics.pstdev(passes)
        assert results["metrics_std"][key] == pytest.approx(std)
        [line] = [line for line in lines if line.startswith(label)]
        assert line[len(label) :].strip() == f"{fmt.format(mean)}  ± {fmt.format(std)}", line
    assert "(mean of 3 timed passes; ± is their standard deviation)" in lines
