#!/usr/bin/env bash
# The engine on one NVIDIA GPU, checked in one command (budget: under 8 minutes on an H200).
#
#   bash benchmarks/gpu_check.sh            # after the README's install, on a machine with one GPU
#
# 1. The CUDA tests (pytest -m cuda): eager vs graphs vs compile vs transformers in fp32/bf16/fp16,
#    preemption and the prefix cache under graphs, engine.kv_cache.memory_fraction.
# 2. 64 requests x 512 new tokens, greedy, ignore_eos, bf16, with CUDA graphs on and off: at batch 64 and
#    at batch 16, each run with a profiled pass (completion tok/s, decode step p50, device idle fraction).
# 3. The README's `python -m rosebench mode=online profile.enabled=true`, with its trace summary, the
#    kineto lines left on its stderr (none expected) and its contention figure; tracked in $out/mlflow.db,
#    whose system metrics must hold the GPU's (system/gpu_0_utilization_percentage, via nvidia-ml-py).
# 4. The same engine over HTTP on the GPU (target=serve: rosebench.serve builds its engine and its CUDA
#    graphs on the engine loop's thread), profiled through /start_profile, beside target=engine; skipped
#    with a line when fastapi/uvicorn/aiohttp/prometheus-client are missing (carry their wheels too).
# 5. A capacity search (hydra/sweeper=capacity) on the GPU under a TTFT and TPOT bound, budget 6 runs: the
#    bracket it found and why it stopped.
# 6. The Llama family (issue 25): its CUDA tests (tests/test_llama_parity.py -m cuda: graphs and compile vs
#    eager and transformers, grouped-query attention) ran in step 1; here SmolLM2-135M's shape
#    (engine=smollm2-135m, random weights, token-id workload) with CUDA graphs on and off, and compiled.
# Then one table. Runs but step 3's use tracking=off; their folders stay under $OUT (or a
# temporary folder), named in the table. A machine without hydra-core/omegaconf can install them from
# wheels first: pip install --no-deps -e . && pip install --no-index --find-links WHEELS hydra-core.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-$(mktemp -d)}/gpu_check"
mkdir -p "$out"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device')" || exit 2

echo "== 1/6 CUDA tests" >&2
# -o addopts=: the GPU machine may lack pytest-xdist (pyproject adds -n); one GPU runs these in turn.
timeout 300 python -m pytest -o addopts= -m cuda -q -rs tests/test_static_decode.py tests/test_llama_parity.py \
  >"$out/pytest.txt" 2>&1
echo "pytest -m cuda: exit $?" >"$out/pytest_status.txt"
tail -3 "$out/pytest.txt" >&2

WORKLOAD=(num_requests=64 max_new_tokens=512 sampling.ignore_eos=true engine.dtype=bfloat16
  warmup=1 repeat=3 profile.enabled=true profile.active=8 tracking=off)
run() {  # NAME OVERRIDES...
  local name=$1
  shift
  echo "== $name" >&2
  timeout 240 python -m rosebench "$@" "hydra.run.dir=$out/$name" >"$out/$name.log" 2>&1 ||
    echo "gpu_check: $name failed, see $out/$name.log" >&2
}
echo "== 2/6 throughput, graphs on and off" >&2
for batch in 64 16; do
  for graphs in true false; do
    run "b${batch}_graphs_${graphs}" "${WORKLOAD[@]}" scheduler.max_batch_size=$batch engine.cuda_graphs=$graphs
  done
done
echo "== 3/6 the README's profiled online run" >&2
run online_profiled mode=online profile.enabled=true "tracking.uri=sqlite:///$out/mlflow.db"
echo "== 4/6 the engine over HTTP" >&2
if python -c "import fastapi, uvicorn, aiohttp, prometheus_client" 2>/dev/null; then
  SERVE=(mode=online num_requests=64 max_new_tokens=256 sampling.ignore_eos=true engine.dtype=bfloat16
    scheduler.max_batch_size=16 warmup=1 repeat=3 tracking=off)
  run serve_engine "${SERVE[@]}" target=engine
  run serve_http "${SERVE[@]}" target=serve profile.enabled=true profile.active=8
else
  echo "gpu_check: no fastapi/uvicorn/aiohttp/prometheus-client here: the serving check is skipped" >&2
fi
echo "== 5/6 a capacity search" >&2
timeout 240 python -m rosebench --multirun hydra/sweeper=capacity mode=online num_requests=64 \
  max_new_tokens=128 engine.dtype=bfloat16 warmup=1 repeat=1 slo.ttft_ms=100 slo.tpot_ms=20 \
  slo.attainment=0.9 hydra.sweeper.start=16 hydra.sweeper.budget=6 tracking=off \
  "hydra.sweep.dir=$out/capacity" >"$out/capacity.log" 2>&1 || echo "gpu_check: capacity failed, see $out/capacity.log" >&2
echo "== 6/6 the Llama family: SmolLM2-135M's shape" >&2
LLAMA=(engine=smollm2-135m workload=random workload.input_len=128 num_requests=64 max_new_tokens=256
  sampling.ignore_eos=true engine.dtype=bfloat16 warmup=1 repeat=2 profile.enabled=true profile.active=8 tracking=off)
run smollm2_graphs_true "${LLAMA[@]}" engine.cuda_graphs=true
run smollm2_graphs_false "${LLAMA[@]}" engine.cuda_graphs=false
run smollm2_compiled "${LLAMA[@]}" engine.cuda_graphs=true engine.compile=true

python - "$out" <<'EOF'
import json, sys
from pathlib import Path

import torch

out = Path(sys.argv[1])
print(f"gpu_check {torch.cuda.get_device_name()} torch {torch.__version__} cuda {torch.version.cuda}")
print((out / "pytest_status.txt").read_text().strip() + ": " + (out / "pytest.txt").read_text().splitlines()[-1])
header = f"{'run':<22}{'tok/s':>10}{'step p50 ms':>13}{'idle':>8}{'kern/step':>11}{'capture s':>11}{'graph MB':>10}"
print(header)
rows = {}
names = ("b64_graphs_true", "b64_graphs_false", "b16_graphs_true", "b16_graphs_false", "online_profiled",
         "serve_engine", "serve_http", "smollm2_graphs_true", "smollm2_graphs_false", "smollm2_compiled")
for name in names:
    try:
        r = json.loads((out / name / "results.json").read_text())
    except (OSError, ValueError):
        print(f"{name:<22}  (no results: see {out / name}.log)")
        continue
    m, p = r["metrics"], (r.get("profile") or {}).get("summary", {})
    rows[name] = m

    def cell(value, spec, width):
        return f"{'-':>{width}}" if value is None else f"{value:>{width}{spec}}"

    print(
        f"{name:<22}{cell(m.get('throughput_completion_tok_s'), '.0f', 10)}"
        f"{cell(m.get('decode_step_ms_p50'), '.3f', 13)}{cell(p.get('device_idle_fraction'), '.1%', 8)}"
        f"{cell(p.get('kernels_per_decode_step'), '.0f', 11)}{cell(m.get('engine_capture_s'), '.2f', 11)}"
        f"{cell(m.get('cuda_graph_pool_mb'), '.0f', 10)}"
    )
engine, served = rows.get("serve_engine"), rows.get("serve_http")
if engine and served:
    ratio = served["throughput_completion_tok_s"] / engine["throughput_completion_tok_s"]
    extra = served["itl_ms_p50"] - engine["itl_ms_p50"]
    print(f"target=serve / target=engine: {ratio:.2f}x completion tok/s, ITL p50 {extra:+.2f} ms")
for label, prefix in (("gpt2 at batch 64", "b64"), ("gpt2 at batch 16", "b16"), ("smollm2-135m", "smollm2")):
    on, off = rows.get(f"{prefix}_graphs_true"), rows.get(f"{prefix}_graphs_false")
    if on and off:
        ratio = on["throughput_completion_tok_s"] / off["throughput_completion_tok_s"]
        print(f"graphs / eager, {label}: {ratio:.2f}x completion tok/s")
tracked = out / "online_profiled" / "tracking.json"
if tracked.is_file():
    from mlflow import MlflowClient

    run_id = json.loads(tracked.read_text())["run_id"]
    samples = MlflowClient(f"sqlite:///{out}/mlflow.db").get_metric_history(run_id, "system/gpu_0_utilization_percentage")
    print(f"system metrics of online_profiled: {len(samples)} samples of GPU 0 utilization (0: no nvidia-ml-py?)")
summary = out / "online_profiled" / "profile" / "summary.json"
if summary.is_file():
    from rosebench.profiling.summary import TraceSummary

    print(TraceSummary.from_dict(json.loads(summary.read_text())).format())
# The profiler's stderr filter (rosebench/profiling/kineto_log.py) on CUDA: kineto's start/stop marks gone,
# CUDA kernels still recorded (kern/step above), and the run's contention figure present.
log = out / "online_profiled.log"
if log.is_file():
    noise = [line for line in log.read_text().splitlines() if "USDT" in line or "gpuGetDeviceCount" in line]
    print(f"kineto lines on stderr: {len(noise)}{': ' + noise[0] if noise else ''}")
online = rows.get("online_profiled", {})
print(f"contention_max (online_profiled): {online.get('contention_max', '-')}")
capacity = out / "capacity" / "capacity.json"
if capacity.is_file():
    from rosebench.capacity import CapacityReport

    print(CapacityReport.load(capacity).summary())
else:
    print(f"capacity: no capacity.json (see {out}/capacity.log)")
EOF
