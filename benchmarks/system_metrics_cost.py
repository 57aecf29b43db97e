"""What MLflow's system metrics cost a run: the default benchmark with ``tracking.system_metrics`` off and on,
interleaved, on the same machine in the same script.

Workload: ``python -m rosebench`` as a user runs it (offline, 16 requests, 64 new tokens, gpt2, float32; 1
warm-up and 3 timed passes), logged to a fresh SQLite store; ``--repeats`` (5) runs of each setting, the two
settings alternating. With system metrics on, MLflow's monitor thread samples CPU, memory, disk and network
(and GPUs through pynvml) every second and logs them to the store. Reported: the median over runs of each
run's mean completion tok/s and TPOT p50, their min-max, the ratio on / off, and the run-to-run noise of the
"off" runs ((max - min) / median) that the ratio is judged against; and how many samples of
``system/cpu_utilization_percentage`` the last "on" run holds (the monitor did record).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import base_parser, emit, markdown_table, median, spread
from mlflow import MlflowClient

REPO = Path(__file__).resolve().parent.parent
SETTINGS = ("false", "true")
CPU_SAMPLES = "system/cpu_utilization_percentage"


def run_once(folder: Path, store: str, model: str, system_metrics: str, quick: bool) -> tuple[dict, str]:
    """One benchmark run; its metrics and its MLflow run id."""
    shape = ["num_requests=4", "max_new_tokens=8"] if quick else []
    command = [
        sys.executable, "-m", "rosebench", f"engine={model}", *shape, f"tracking.uri={store}",
        f"tracking.system_metrics={system_metrics}", f"hydra.run.dir={folder}",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    run_id = json.loads((folder / "tracking.json").read_text())["run_id"]
    return json.loads((folder / "results.json").read_text())["metrics"], run_id


def main() -> None:
    parser = base_parser(__doc__)
    parser.set_defaults(repeats=5)
    args = parser.parse_args()
    model = "tiny" if args.quick else "gpt2"
    repeats = 1 if args.quick else args.repeats
    runs: dict[str, list[dict]] = {s: [] for s in SETTINGS}
    last_on_run = ""
    with tempfile.TemporaryDirectory() as scratch:
        store = f"sqlite:///{scratch}/mlflow.db"
        for index in range(repeats):
            for setting in SETTINGS:
                folder = Path(scratch) / f"{setting}-{index}"
                figures, run_id = run_once(folder, store, model, setting, args.quick)
                runs[setting].append(figures)
                last_on_run = run_id if setting == "true" else last_on_run
                print(f"system_metrics={setting} run {index + 1}: "
                      f"{figures['throughput_completion_tok_s']:.1f} tok/s", file=sys.stderr)  # fmt: skip
        samples = len(MlflowClient(store).get_metric_history(last_on_run, CPU_SAMPLES))
    off_tok_s = [f["throughput_completion_tok_s"] for f in runs["false"]]
    noise = (max(off_tok_s) - min(off_tok_s)) / median(off_tok_s)
    rows = []
    for setting in SETTINGS:
        tok_s = [f["throughput_completion_tok_s"] for f in runs[setting]]
        tpot = [f["tpot_ms_p50"] for f in runs[setting]]
        ratio = median(tok_s) / median(off_tok_s)
        rows.append([
            setting, f"{median(tok_s):.1f}", spread(tok_s), f"{median(tpot):.2f}", spread(tpot, ".2f"),
            f"{ratio:.3f}x" if setting == "true" else "", f"{noise:.1%}" if setting == "false" else "",
        ])  # fmt: skip
    table = markdown_table(
        ["system_metrics", "completion tok/s (median)", "min-max", "TPOT p50 ms", "min-max", "on / off",
         "run-to-run noise (off)"],
        rows,
    )  # fmt: skip
    body = f"{table}\n\nthe last 'on' run holds {samples} samples of {CPU_SAMPLES}\n"
    shape = f"{model}, default offline workload, {repeats} interleaved runs each, 1 warm-up + 3 timed passes"
    emit(f"What system metrics cost ({shape})", body, args.out, quick=args.quick)


if __name__ == "__main__":
    main()
