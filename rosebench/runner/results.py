"""The files a run leaves in its Hydra folder: results.json and outputs.jsonl."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def _json_safe(value: Any) -> Any:
    # JSON has no inf/nan: request_rate=inf is written as the string "inf".
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_results(run_dir: Path, results: dict[str, Any]) -> Path:
    path = run_dir / "results.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_json_safe(results), indent=2) + "\n")
    tmp.replace(path)  # never leave a half-written results.json behind
    return path


def write_outputs(run_dir: Path, rows: list[dict[str, Any]]) -> Path:
    path = run_dir / "outputs.jsonl"
    with path.open("w") as out:
        for row in rows:
            out.write(json.dumps(_json_safe(row)) + "\n")
    return path
