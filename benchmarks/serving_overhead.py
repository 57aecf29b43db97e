"""What serving costs: the same online workload measured in-process (``target=engine``) and through the
HTTP server, timed by the streaming client (``target=serve``), on the same machine in the same script.

Workload: ``--num-requests`` (16) random-token prompts of 32 tokens, ``--max-new-tokens`` (64) each, EOS
ignored, all arriving at once, ``scheduler.max_batch_size=16``, greedy, float32; for each model (gpt2, tiny)
and target, ``python -m rosebench`` runs 1 warm-up and 3 timed passes (``tracking=off``); the runs of the
two targets are interleaved ``--repeats`` times. Reported per model: the median over runs of each run's mean
completion tok/s, TTFT p50 and ITL p50; the ratio of serve's throughput to engine's, and the ITL and TTFT p50
differences. Targets (issue 21, 2-core machine): serve >= 0.85x engine's throughput on gpt2 at batch 16,
ITL p50 overhead <= 2 ms. Note that the client runs on the same machine as the server, and takes its CPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import base_parser, emit, markdown_table, median, spread, verdict

REPO = Path(__file__).resolve().parent.parent
TARGETS = ("engine", "serve")
THROUGHPUT_TARGET = 0.85
ITL_OVERHEAD_TARGET_MS = 2.0


def run_once(folder: Path, model: str, target: str, num_requests: int, max_new_tokens: int) -> dict:
    command = [
        sys.executable, "-m", "rosebench", "mode=online", f"target={target}", f"engine={model}",
        "workload=random", "workload.input_len=32", f"num_requests={num_requests}",
        f"max_new_tokens={max_new_tokens}", "sampling.ignore_eos=true", "scheduler.max_batch_size=16",
        "tracking=off", "warmup=1", "repeat=3", f"hydra.run.dir={folder}",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads((folder / "results.json").read_text())["metrics"]


def _median(figures: list[dict], name: str) -> float:
    return median([f[name] for f in figures])


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--num-requests", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    models = ["tiny"] if args.quick else ["gpt2", "tiny"]
    num_requests, max_new = (4, 8) if args.quick else (args.num_requests, args.max_new_tokens)
    repeats = 1 if args.quick else args.repeats
    runs: dict[tuple[str, str], list[dict]] = {(m, t): [] for m in models for t in TARGETS}
    with tempfile.TemporaryDirectory() as scratch:
        for index in range(repeats):
            for model in models:
                for target in TARGETS:
                    folder = Path(scratch) / f"{model}-{target}-{index}"
                    figures = run_once(folder, model, target, num_requests, max_new)
                    runs[model, target].append(figures)
                    tok_s = figures["throughput_completion_tok_s"]
                    print(f"{model} {target} run {index + 1}: {tok_s:.1f} tok/s", file=sys.stderr)
    rows = []
    for model in models:
        engine, served = runs[model, "engine"], runs[model, "serve"]
        ratio = _median(served, "throughput_completion_tok_s") / _median(
            engine, "throughput_completion_tok_s"
        )
        itl_extra = _median(served, "itl_ms_p50") - _median(engine, "itl_ms_p50")
        ttft_extra = _median(served, "ttft_ms_p50") - _median(engine, "ttft_ms_p50")
        judged = "-"
        if model == "gpt2":
            itl_verdict = "PASS" if itl_extra <= ITL_OVERHEAD_TARGET_MS else "MISS"
            judged = f"{verdict(ratio, THROUGHPUT_TARGET)} / {itl_verdict}"
        for target, figures in (("engine", engine), ("serve", served)):
            tok_s = [f["throughput_completion_tok_s"] for f in figures]
            ttft, itl = _median(figures, "ttft_ms_p50"), _median(figures, "itl_ms_p50")
            measured = [model, target, f"{median(tok_s):.1f}", spread(tok_s), f"{ttft:.1f}", f"{itl:.2f}"]
            compared = [f"{ratio:.2f}x", f"{itl_extra:+.2f}", f"{ttft_extra:+.1f}", judged]
            rows.append(measured + (compared if target == "serve" else ["", "", "", ""]))
    table = markdown_table(
        ["model", "target", "completion tok/s (median)", "min-max", "TTFT p50 ms", "ITL p50 ms",
         "serve / engine", "ITL p50 +ms", "TTFT p50 +ms", "target (>= 0.85x / <= +2 ms)"],
        rows,
    )  # fmt: skip
    shape = (
        f"{num_requests} requests, prompt 32, {max_new} new tokens, batch 16, greedy, float32; "
        f"{repeats} interleaved runs of 1 warm-up + 3 timed passes each"
    )
    emit(f"Serving overhead: target=serve vs target=engine ({shape})", table, args.out, quick=args.quick)


if __name__ == "__main__":
    main()
