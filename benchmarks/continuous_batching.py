"""Continuous batching (rosebench OnlineScheduler) against static batching (Hugging Face ``generate`` in
fixed batches) on a workload of mixed output lengths, same weights, same requests.

Workload: --num-requests (64) random-token prompts of --prompt-len (32) tokens, output lengths uniform in
[--min-output, --max-output] (16..256), greedy, EOS ignored, all arriving at t = 0.

- continuous: OnlineScheduler, max_batch_size = --batch-size (16); a finished request leaves the batch at
  once and a waiting one takes its slot.
- HF static: ``generate`` on consecutive batches of --batch-size requests; a batch runs until its longest
  request is done (min_new_tokens = max_new_tokens = the batch's longest). Each request counts only its
  own output length as useful tokens, and its completion time is the end of its batch.
- engine static: the same static batching with the rosebench engine (isolates scheduling from engine
  speed). OfflineScheduler is not used for this: it refills free slots, so it is continuous too.

Reported: request throughput (requests / wall time of the pass), useful completion tok/s, mean E2E
latency; medians over --repeats interleaved runs after one warm-up each.
Target: continuous >= 2x HF static on request throughput.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import _common as C
import torch

from rosebench.engine import Engine, EngineConfig, SamplingParams
from rosebench.metrics import pass_metrics
from rosebench.scheduler import OnlineScheduler, SchedulerConfig
from rosebench.workload import Request
from rosebench.workload.random_tokens import random_token_ids

TARGET = 2.0


@dataclass
class PassFigures:
    wall_s: float
    requests: int
    useful_tokens: int
    computed_tokens: int  # tokens generated, padding included
    mean_e2e_s: float

    @property
    def req_s(self) -> float:
        return self.requests / self.wall_s

    @property
    def tok_s(self) -> float:
        return self.useful_tokens / self.wall_s


def build_requests(n: int, prompt_len: int, out_range: tuple[int, int], seed: int) -> list[Request]:
    rng = random.Random(seed)
    return [
        Request(
            request_id=i,
            prompt_token_ids=random_token_ids(rng, prompt_len),
            params=SamplingParams(max_new_tokens=rng.randint(*out_range), ignore_eos=True),
        )
        for i in range(n)
    ]


def continuous(engine: Engine, requests: list[Request], config: SchedulerConfig) -> PassFigures:
    result = OnlineScheduler(engine, config).run(requests)
    m = pass_metrics(result)
    tokens = int(m["completion_tokens"])
    return PassFigures(m["elapsed_total_s"], len(requests), tokens, tokens, m["e2e_ms_mean"] / 1e3)


def static(
    generate: Callable[[list[list[int]], int], None], requests: list[Request], batch_size: int
) -> PassFigures:
    """Fixed batches in request order; ``generate(prompts, n)`` makes exactly ``n`` tokens per prompt."""
    ends, useful, computed = [], 0, 0
    start = time.perf_counter()
    for first in range(0, len(requests), batch_size):
        batch = requests[first : first + batch_size]
        longest = max(r.params.max_new_tokens for r in batch)
        generate([list(r.prompt_token_ids) for r in batch], longest)
        end = time.perf_counter() - start
        ends += [end] * len(batch)
        useful += sum(r.params.max_new_tokens for r in batch)
        computed += longest * len(batch)
    return PassFigures(ends[-1], len(requests), useful, computed, sum(ends) / len(ends))


def main() -> None:
    parser = C.base_parser(__doc__)
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16, help="max_batch_size and static batch size")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--min-output", type=int, default=16)
    parser.add_argument("--max-output", type=int, default=256)
    parser.add_argument("--max-batched-tokens", type=int, default=2048, help="prompt tokens per prefill")
    parser.add_argument("--skip-engine-static", action="store_true", help="leave out engine static batching")
    args = parser.parse_args()
    threads = C.set_threads(args.threads, args.quick)
    if args.quick:
        args.num_requests, args.batch_size, args.prompt_len = 16, 8, 8
        args.min_output, args.max_output, args.repeats = 4, 32, min(args.repeats, 2)
    out_range = (args.min_output, args.max_output)
    requests = build_requests(args.num_requests, args.prompt_len, out_range, args.seed)
    scheduler_config = SchedulerConfig(
        max_batch_size=args.batch_size, max_batched_tokens=args.max_batched_tokens, request_rate=float("inf")
    )

    with tempfile.TemporaryDirectory(prefix="rosebench-hf-") as tmp:
        hf_model = C.save_hf_gpt2(Path(tmp), args.seed, tiny=args.quick)
        engine = Engine(
            EngineConfig(
                model="gpt2",
                weights=tmp,
                device="cpu",
                max_num_seqs=args.batch_size,
                max_model_len=args.prompt_len + args.max_output,
                prefix_cache=False,
                prepack=True,
                seed=args.seed,
            )
        )

    def engine_static_generate(prompts: list[list[int]], n: int) -> None:
        C.engine_generate(engine, prompts, [n] * len(prompts), args.max_batched_tokens)

    def hf_static_generate(prompts: list[list[int]], n: int) -> None:
        C.hf_generate(hf_model, prompts, n)

    contenders: dict[str, Callable[[], PassFigures]] = {
        "continuous (OnlineScheduler)": lambda: continuous(engine, requests, scheduler_config),
        "static (HF generate)": lambda: static(hf_static_generate, requests, args.batch_size),
    }
    if not args.skip_engine_static:
        contenders["static (rosebench engine)"] = lambda: static(
            engine_static_generate, requests, args.batch_size
        )
    for run in contenders.values():
        run()  # warm-up
    figures: dict[str, list[PassFigures]] = {name: [] for name in contenders}
    for _ in range(args.repeats):
        for name, run in contenders.items():
            figures[name].append(run())

    rows = []
    for name, runs in figures.items():
        req_s, tok_s = [f.req_s for f in runs], [f.tok_s for f in runs]
        useful = runs[0].useful_tokens / runs[0].computed_tokens
        rows.append(
            [
                name,
                f"{C.median(req_s):.3f}",
                C.spread(req_s, ".3f"),
                f"{C.median(tok_s):.1f}",
                C.spread(tok_s),
                f"{C.median([f.mean_e2e_s for f in runs]):.2f}",
                f"{C.median([f.wall_s for f in runs]):.2f}",
                f"{useful:.0%}",
            ]
        )
    table = C.markdown_table(
        [
            "contender",
            "req/s (median)",
            "req/s min-max",
            "useful tok/s (median)",
            "tok/s min-max",
            "mean E2E s",
            "wall s",
            "useful / generated tokens",
        ],
        rows,
    )

    def ratio(num: str, den: str, key: str) -> float:
        value = {"req/s": lambda f: f.req_s, "tok/s": lambda f: f.tok_s}[key]
        return C.median([value(f) for f in figures[num]]) / C.median([value(f) for f in figures[den]])

    cont, hf, eng = list(contenders)[0], "static (HF generate)", "static (rosebench engine)"
    value = ratio(cont, hf, "req/s")
    ratio_rows = [
        ["continuous / HF static (req/s)", f"{value:.2f}x", f">= {TARGET}x", C.verdict(value, TARGET)],
        ["continuous / HF static (useful tok/s)", f"{ratio(cont, hf, 'tok/s'):.2f}x", "-", "-"],
    ]
    if eng in figures:
        value = ratio(cont, eng, "req/s")
        ratio_rows.append(["continuous / engine static (req/s)", f"{value:.2f}x", "-", "-"])
    outs = [r.params.max_new_tokens for r in requests]
    num_batches = -(-len(requests) // args.batch_size)
    body = (
        f"Model: {'tiny (--quick)' if args.quick else 'gpt2 (GPT2Config())'}, random init under seed "
        f"{args.seed}, CPU, threads: {threads}. Workload: {len(requests)} requests, prompt {args.prompt_len} "
        f"random tokens, outputs {min(outs)}..{max(outs)} (uniform in {args.min_output}..{args.max_output}, "
        f"{sum(outs)} tokens in all), greedy, all arrive at t=0; batch size {args.batch_size} "
        f"({num_batches} static batch{'es' if num_batches > 1 else ''}); {args.repeats} interleaved runs "
        f"after 1 warm-up each.\n\n{table}\n"
        + C.markdown_table(["ratio (of medians)", "value", "target", "result"], ratio_rows)
    )
    C.emit("Continuous vs static batching", body, args.out, args.quick)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
