"""What a busy neighbour does to a run, and whether the run says so.

Runs ``python -m rosebench engine=tiny`` beside 0, 1 and 2 processes that each keep one core busy, with 1 and
2 intra-op threads, interleaved (every setting once, then again, ``--repeats`` times). For each setting: the
median completion tok/s, its ratio to the same threads with no neighbour, and the median of the contention the
run recorded (``contention_max``, other processes' share of the cores) with how many runs were tagged
contended. The neighbours are this script's children, not the run's: the run counts them as other work.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from _common import base_parser, emit, markdown_table, median, spread

REPO = Path(__file__).resolve().parent.parent
SPIN = "import time\nend = time.monotonic() + 900\nwhile time.monotonic() < end: pass"


@contextmanager
def neighbours(count: int):
    procs = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(count)]
    try:
        time.sleep(0.5 if count else 0)  # spinning before the run starts
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def run_once(folder: Path, threads: int, quick: bool) -> dict:
    shape = ["num_requests=4", "max_new_tokens=16", "repeat=2"] if quick else ["num_requests=16", "repeat=3"]
    command = [
        sys.executable,
        "-m",
        "rosebench",
        "engine=tiny",
        "tracking=off",
        "warmup=1",
        *shape,
        f"engine.num_threads={threads}",
        f"hydra.run.dir={folder}",
    ]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True)
    return json.loads((folder / "results.json").read_text())


def main() -> None:
    args = base_parser(__doc__).parse_args()
    counts = (0, 1) if args.quick else (0, 1, 2)
    settings = [(n, t) for n in counts for t in (1, 2)]
    runs: dict[tuple[int, int], list[dict]] = {s: [] for s in settings}
    with tempfile.TemporaryDirectory(prefix="rosebench-contention-") as tmp:
        for repeat in range(args.repeats):
            for count, threads in settings:
                with neighbours(count):
                    folder = Path(tmp) / f"n{count}_t{threads}_r{repeat}"
                    runs[(count, threads)].append(run_once(folder, threads, args.quick))
    rows = []
    for count, threads in settings:
        tok_s = [r["metrics"]["throughput_completion_tok_s"] for r in runs[(count, threads)]]
        quiet = median([r["metrics"]["throughput_completion_tok_s"] for r in runs[(0, threads)]])
        shares = [r["metrics"]["contention_max"] for r in runs[(count, threads)]]
        tagged = sum(bool(r["run"]["contended"]) for r in runs[(count, threads)])
        rows.append(
            [
                count,
                threads,
                f"{median(tok_s):.0f}",
                spread(tok_s, ".0f"),
                f"{median(tok_s) / quiet:.2f}x",
                f"{median(shares):.0%}",
                f"{tagged}/{len(shares)}",
            ]
        )
    headers = [
        "busy neighbours",
        "threads",
        "tok/s (median)",
        "tok/s min-max",
        "vs no neighbour",
        "contention_max (median)",
        "tagged contended",
    ]
    emit("A busy neighbour and what the run records", markdown_table(headers, rows), args.out, args.quick)


if __name__ == "__main__":
    main()
