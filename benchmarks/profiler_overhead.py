"""What the profiling support costs, on the default run shape (gpt2, 16 requests of the fixed "Hello"
prompt, 64 new tokens, greedy, offline, batch 16; --quick: the tiny preset, 4 requests, 16 new tokens).

a) Labels with profiling off: every hot region is wrapped in ``torch.profiler.record_function``. With no
   profiler active, one enter/exit is timed in a microbenchmark (ns per call, less the bare loop), the
   labels one decode step opens are counted from a profiled decode step, and their product is given as a
   fraction of the median decode step time of an unprofiled pass. Target: well under 1% of a step.
b) The profiled pass: wall time of the same pass under ``ProfileSession`` (default schedule wait=0,
   warmup=0, active=6; CPU activities; trace export and summary included) against the pass without it,
   interleaved, median of --repeats after one warm-up of each. Reported, no target: the profiled pass is
   never the timed one.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from contextlib import nullcontext

import _common as C
import torch
from torch.profiler import ProfilerActivity, record_function

from rosebench.engine import Engine, EngineConfig, SamplingParams, Sequence
from rosebench.engine.tokenizer import load_tokenizer
from rosebench.metrics import pass_metrics
from rosebench.profiling import ProfileSession, ProfileSettings
from rosebench.scheduler import OfflineScheduler, SchedulerConfig
from rosebench.workload import FixedWorkload, Request, build_workload


def ns_per_call(body: object, calls: int, rounds: int = 7) -> float:
    """Median over ``rounds`` of the mean cost of ``with body(): pass`` (``body=None``: bare loop)."""
    results = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        if body is None:
            for _ in range(calls):
                pass
        else:
            for _ in range(calls):
                with body("rosebench.bench.label"):
                    pass
        results.append((time.perf_counter_ns() - start) / calls)
    return C.median(results)


def labels_per_decode_step(engine: Engine, requests: list[Request]) -> Counter[str]:
    """``rosebench.*`` labels opened by one decode step of the workload's batch, from a profiled step."""
    seqs = [Sequence(r.request_id, r.prompt_token_ids, r.params) for r in requests]
    for seq in seqs:
        assert engine.admit(seq), "engine refused a request"
    engine.prefill(seqs)
    engine.decode(seqs)
    with torch.profiler.profile(activities=[ProfilerActivity.CPU]) as prof:
        engine.decode(seqs)
    for seq in seqs:
        if not seq.is_finished:
            engine.free(seq)
    return Counter(e.name for e in prof.events() if e.name.startswith("rosebench."))


def plain_pass(
    engine: Engine, requests: list[Request], config: SchedulerConfig
) -> tuple[float, float, float]:
    """(wall s, pass s by the scheduler's clock, median decode step s)."""
    start = time.perf_counter()
    result = OfflineScheduler(engine, config).run(requests)
    wall = time.perf_counter() - start
    return wall, result.stats.elapsed_total_s, pass_metrics(result)["decode_step_ms_p50"] / 1e3


def profiled_pass(engine: Engine, requests: list[Request], config: SchedulerConfig) -> tuple[float, float]:
    """(wall s incl. session start, export and summary; pass s by the scheduler's clock)."""
    settings = ProfileSettings(enabled=True, activities="cpu")
    with tempfile.TemporaryDirectory(prefix="rosebench-prof-") as out_dir:
        start = time.perf_counter()
        with ProfileSession(settings, out_dir, engine.device) as session:
            scheduler = OfflineScheduler(engine, config, on_step=lambda kind: session.step())
            result = scheduler.run(requests)
        wall = time.perf_counter() - start
    return wall, result.stats.elapsed_total_s


def main() -> None:
    parser = C.base_parser(__doc__)
    parser.add_argument("--calls", type=int, default=200_000, help="record_function calls per round")
    args = parser.parse_args()
    threads = C.set_threads(args.threads, args.quick)
    model, num_requests, new_tokens = ("tiny", 4, 16) if args.quick else ("gpt2", 16, 64)
    if args.quick:
        args.calls, args.repeats = min(args.calls, 5_000), min(args.repeats, 2)
    tokenizer = load_tokenizer()
    requests = build_workload(
        FixedWorkload(prompt="Hello"),
        num_requests=num_requests,
        sampling=SamplingParams(max_new_tokens=new_tokens),
        tokenizer=tokenizer,
        seed=args.seed,
    )
    longest = max(len(r.prompt_token_ids) + r.params.max_new_tokens for r in requests)
    engine = Engine(
        EngineConfig(
            model=model, device="cpu", max_num_seqs=num_requests, max_model_len=longest, seed=args.seed
        ),
        eos_token_id=tokenizer.eot_token,
    )
    config = SchedulerConfig(max_batch_size=num_requests)

    # (a) labels with the profiler off
    bare = ns_per_call(None, args.calls)
    empty_with = ns_per_call(nullcontext, args.calls)
    labelled = ns_per_call(record_function, args.calls)
    label_ns = labelled - bare
    labels = labels_per_decode_step(engine, requests)
    per_step = sum(labels.values())

    # (b) profiled vs plain passes, interleaved
    plain_pass(engine, requests, config)
    profiled_pass(engine, requests, config)
    plain, profiled = [], []
    for _ in range(args.repeats):
        plain.append(plain_pass(engine, requests, config))
        profiled.append(profiled_pass(engine, requests, config))
    step_s = C.median([p[2] for p in plain])
    cost_s = per_step * label_ns / 1e9

    table_a = C.markdown_table(
        ["figure", "value"],
        [
            ["record_function enter+exit, profiler off (net of bare loop)", f"{label_ns:.0f} ns"],
            ["for reference: `with nullcontext()` (net of bare loop)", f"{empty_with - bare:.0f} ns"],
            ["rosebench labels per decode step", f"{per_step} ({len(labels)} distinct)"],
            ["label cost per decode step", f"{cost_s * 1e6:.1f} us"],
            ["decode step, median of the plain passes", f"{step_s * 1e3:.2f} ms"],
            ["label cost / decode step", f"{cost_s / step_s:.3%}"],
        ],
    )
    label_list = ", ".join(f"{name} x{count}" for name, count in sorted(labels.items()))
    rows_b = []
    for column, index in (("pass (scheduler clock)", 1), ("wall incl. session start/export/summary", 0)):
        p, q = [r[index] for r in plain], [r[index] for r in profiled]
        rows_b.append(
            [
                column,
                f"{C.median(p):.3f}",
                C.spread(p, ".3f"),
                f"{C.median(q):.3f}",
                C.spread(q, ".3f"),
                f"{C.median(q) / C.median(p):.2f}x",
            ]
        )
    table_b = C.markdown_table(
        ["time", "plain s (median)", "min-max", "profiled s (median)", "min-max", "slowdown"], rows_b
    )
    body = (
        f'Run shape: {model}, {num_requests} x fixed prompt "Hello", {new_tokens} new tokens, greedy, '
        f"offline, batch {num_requests}, CPU, threads: {threads}.\n\n"
        f"#### (a) record_function labels with profiling off\n\n{table_a}\n"
        f"Labels in one decode step: {label_list}.\n\n"
        f"#### (b) profiled pass (ProfileSession, default schedule, CPU) vs plain pass, "
        f"{args.repeats} interleaved runs after 1 warm-up each\n\n{table_b}"
    )
    C.emit("Profiler overhead", body, args.out, args.quick)


if __name__ == "__main__":
    main()
