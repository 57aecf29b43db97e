"""Helpers shared by the benchmark scripts: arguments, a seeded Hugging Face GPT-2 on disk, driving the
engine directly (prefill + decode loop), Hugging Face ``generate``, statistics and Markdown output."""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from collections.abc import Sequence as Seq
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from rosebench.engine import Engine, SamplingParams, Sequence
from rosebench.engine.cpu_linear import bf16_matrix_units
from rosebench.runner.environment import cpu_name

# The engine's "tiny" preset as a Hugging Face config: what --quick runs instead of GPT-2 small.
TINY_HF = {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 256}
EOS = 50256


def base_parser(doc: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model and shapes: a smoke run of < 60 s")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per contender (median reported)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads (default 2; 1 with --quick, see benchmarks/README.md)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown report here")
    return parser


def set_threads(threads: int | None, quick: bool) -> int:
    """2 threads for real runs; a smoke run uses 1, since 2 OpenMP threads that spin-wait on a busy
    2-core machine made the --quick runs ~10x slower."""
    torch.set_num_threads(threads if threads is not None else (1 if quick else 2))
    return torch.get_num_threads()


def command_line() -> str:
    return "python " + shlex.join(sys.argv)


def environment_line() -> str:
    try:
        hf = f"transformers {version('transformers')}, "
    except PackageNotFoundError:
        hf = ""
    return (
        f"torch {torch.__version__}, {hf}threads: {torch.get_num_threads()}, CPU: {cpu_name()} "
        f"({cpu_capability()})"
    )


def cpu_capability() -> str:
    """ATen's kernel level and the CPU's bf16 matrix units, e.g. "AVX512, bf16 units: amx_bf16"."""
    units = ", ".join(bf16_matrix_units()) or "none, bf16 runs slower than float32"
    return f"{torch.backends.cpu.get_cpu_capability()}, bf16 units: {units}"


def emit(title: str, body: str, out: Path | None, quick: bool = False) -> None:
    """Print the report (command line, environment, tables) and write it to ``out`` when given."""
    note = "**--quick smoke run: tiny model and shapes; its figures say nothing about the targets.**\n\n"
    text = (
        f"### {title}\n\n```\n{command_line()}\n```\n\n{environment_line()}\n\n"
        f"{note if quick else ''}{body.rstrip()}\n"
    )
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"(written to {out})")


def markdown_table(headers: Seq[str], rows: Seq[Seq[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def median(values: Seq[float]) -> float:
    return statistics.median(values)


def spread(values: Seq[float], spec: str = ".1f") -> str:
    return f"{min(values):{spec}}-{max(values):{spec}}"


def verdict(value: float, target: float) -> str:
    return "PASS" if value >= target else "MISS"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- Hugging Face ------------------------------------------------------------------------------------
def save_hf_gpt2(folder: Path, seed: int, tiny: bool) -> torch.nn.Module:
    """A randomly initialised ``GPT2LMHeadModel`` (``GPT2Config()`` or the tiny shape) drawn under
    ``seed``, saved with ``save_pretrained`` so the engine loads the very same weights from ``folder``."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging

    logging.disable_progress_bar()
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**(TINY_HF if tiny else {}))).eval()
    model.save_pretrained(folder)
    return model


def hf_generate(model: torch.nn.Module, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """Greedy ``generate`` of exactly ``new_tokens`` per prompt (all prompts the same length)."""
    input_ids = torch.tensor(prompts, device=next(model.parameters()).device)
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_token_id=EOS,
        )
    return out[:, input_ids.shape[1] :].tolist()


# -- the engine, driven directly ---------------------------------------------------------------------
def engine_generate(
    engine: Engine, prompts: list[list[int]], new_tokens: list[int], max_batched_tokens: int = 2048
) -> tuple[list[list[int]], float, float]:
    """Greedy generation of ``new_tokens[i]`` tokens for each prompt, all in one running batch.

    Prefill runs in chunks of at most ``max_batched_tokens`` prompt tokens (at least one sequence each),
    as the schedulers do; then every step decodes the whole running batch. Returns the output ids, the
    wall time of the whole generation and the time spent in decode steps.
    """
    if len(prompts) > engine.max_num_seqs:
        raise ValueError(f"{len(prompts)} prompts but the engine has {engine.max_num_seqs} slots")
    seqs = [
        Sequence(i, p, SamplingParams(max_new_tokens=n, ignore_eos=True))
        for i, (p, n) in enumerate(zip(prompts, new_tokens))
    ]
    sync(engine.device)
    start = time.perf_counter()
    chunk: list[Sequence] = []
    for seq in seqs:
        if chunk and sum(s.num_tokens for s in chunk) + seq.num_tokens > max_batched_tokens:
            _prefill(engine, chunk)
            chunk = []
        chunk.append(seq)
    _prefill(engine, chunk)
    sync(engine.device)
    decode_start = time.perf_counter()
    running = [s for s in seqs if not s.is_finished]
    while running:
        engine.decode(running)
        running = [s for s in running if not s.is_finished]
    sync(engine.device)
    end = time.perf_counter()
    return [list(s.output_token_ids) for s in seqs], end - start, end - decode_start


def _prefill(engine: Engine, seqs: list[Sequence]) -> None:
    for seq in seqs:
        if not engine.admit(seq):
            raise RuntimeError(f"engine refused {seq}: KV cache too small for the batch")
    engine.prefill(seqs)


def first_mismatch(a: list[list[int]], b: list[list[int]]) -> str:
    """Return "identical", or where the first differing token is."""
    for row, (x, y) in enumerate(zip(a, b)):
        if x != y:
            col = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
            same = sum(1 for u, v in zip(a, b) if u == v)
            return f"DIFFER (row {row}, token {col}; {same}/{len(a)} rows identical)"
    return "identical" if len(a) == len(b) else "DIFFER (row count)"
