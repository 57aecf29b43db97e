"""Each benchmark script runs end to end with --quick, prints its Markdown table and writes it to --out.

No timing is asserted here: benchmark figures are for the tables, never for pass/fail.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = {
    "engine_throughput.py": "| default / HF generate (tok/s) |",
    "continuous_batching.py": "| continuous / HF static (req/s) |",
    "profiler_overhead.py": "| label cost / decode step |",
    "contention.py": "| busy neighbours | threads |",
    "serving_overhead.py": "| serve / engine |",
    "system_metrics_cost.py": "| on / off |",
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_script_quick_run(script: str, tmp_path: Path) -> None:
    out = tmp_path / "table.md"
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick", "--repeats", "1", "--out", str(out)],
        cwd=BENCHMARKS.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{script} --quick" in proc.stdout  # the exact command line is part of the report
    assert "|---|" in proc.stdout and SCRIPTS[script] in proc.stdout, proc.stdout[-3000:]
    written = out.read_text()
    assert SCRIPTS[script] in written and "threads: " in written
