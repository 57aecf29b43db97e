#!/usr/bin/env bash
# The sweeps people run, one per line. Each is one MLflow parent run with a child per point.
# Usage: bash multirun.sh SWEEP [extra overrides, e.g. engine=tiny mode=online]
set -euo pipefail
sweep=${1:-}
shift || true
case "$sweep" in
  requests_x_tokens) python -m rosebench --multirun num_requests=1,16,64 max_new_tokens=32,128 "$@" ;;
  batch_size)        python -m rosebench --multirun num_requests=64 scheduler.max_batch_size=1,4,16,64 "$@" ;;
  modes)             python -m rosebench --multirun mode=offline,online "$@" ;;
  prefix_cache)      python -m rosebench --multirun workload=shared_prefix engine.prefix_cache=true,false "$@" ;;
  attention)         python -m rosebench --multirun engine.attention=slot,naive "$@" ;;
  rates)             python -m rosebench --multirun mode=online num_requests=64 scheduler.request_rate=1,2,4,8,16,inf "$@" ;;
  capacity)          python -m rosebench --multirun hydra/sweeper=capacity mode=online num_requests=64 \
                       slo.ttft_ms=500 slo.tpot_ms=100 slo.attainment=0.9 "$@" ;;
  *) echo "multirun.sh: unknown sweep '$sweep' (allowed: requests_x_tokens, batch_size, modes, prefix_cache, attention, rates, capacity)" >&2
     exit 2 ;;
esac
