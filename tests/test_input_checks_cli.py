"""Inputs a user can hand the real CLI by mistake, each refused before timing in one line, or run with a
visible, documented outcome: a checkpoint whose vocabulary differs from the GPT-2 tokenizer's, a
``workload.path`` that is not a regular file, a ``.pt`` file that is not a weights checkpoint."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch
from cli_helpers import FAST, assert_ok, describe, read_outputs, read_results, run_cli

TOKENIZER_VOCAB = 50257  # GPT-2's tiktoken ids: 0..50256, the last one <|endoftext|>
ONE_LINE = "rosebench: error: "
UNKNOWN_ID = 58559  # beyond the tokenizer's ids, inside a 60000-id model's


def resized_vocab_dir(hf_dir: Path, folder: Path, vocab_size: int, argmax_id: int | None = None) -> Path:
    """A copy of the Hugging Face folder ``hf_dir`` whose vocabulary has ``vocab_size`` ids: config.json's
    ``vocab_size`` changed and the (tied) ``wte`` cut or grown to match, as a resized checkpoint has.

    With ``argmax_id``, ``ln_f`` is collapsed onto one direction and that id's embedding row points along
    it, so that greedy decoding emits ``argmax_id`` at every step."""
    from safetensors.torch import load_file, save_file

    folder.mkdir(parents=True)
    config = json.loads((hf_dir / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": vocab_size}))
    state = load_file(hf_dir / "model.safetensors")
    wte = state["transformer.wte.weight"]
    if vocab_size <= wte.shape[0]:
        wte = wte[:vocab_size].clone()
    else:
        extra = torch.randn(
            vocab_size - wte.shape[0], wte.shape[1], generator=torch.Generator().manual_seed(0)
        )
        wte = torch.cat([wte, 0.3 * extra])
    if argmax_id is not None:
        width = wte.shape[1]
        direction = torch.ones(width) / math.sqrt(width)
        state["transformer.ln_f.weight"] = torch.zeros(width)
        state["transformer.ln_f.bias"] = direction.clone()
        wte[argmax_id] = 50 * direction
    state["transformer.wte.weight"] = wte
    state.pop("lm_head.weight", None)  # tied to wte
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors", {"format": "pt"})
    return folder


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The run failed with exactly one line of its own on stderr, no traceback: that line."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1, describe(proc)
    assert "Traceback" not in proc.stderr, describe(proc)
    assert len(lines) == 1 and lines[0].startswith(ONE_LINE), describe(proc)
    return lines[0]


def no_run_started(root: Path) -> None:
    assert not list(root.glob("outputs/*/*/results.json")), "a refused run must not reach the passes"


# -- 1. a vocabulary that differs from the tokenizer's -----------------------------------------------------
def test_larger_vocab_runs_and_unknown_output_ids_get_a_placeholder(
    tmp_path: Path, hf_tiny_dir: Path
) -> None:
    """A 60000-id checkpoint runs; ids the tokenizer does not know come out as ``<|unknown:ID|>`` in
    outputs.jsonl's text, and results.json is written (before the fix: KeyError in decoding, no results)."""
    folder = resized_vocab_dir(hf_tiny_dir, tmp_path / "vocab60000", 60000, argmax_id=UNKNOWN_ID)
    proc = run_cli(tmp_path, *FAST, "num_requests=2", "max_new_tokens=3", f"engine.weights={folder}")
    assert_ok(proc)
    [run_dir] = [p.parent for p in tmp_path.glob("outputs/*/*/results.json")]
    results = read_results(run_dir)
    assert results["model"]["vocab_size"] == 60000
    assert results["run"]["status"] == "FINISHED"
    rows = read_outputs(run_dir)
    assert [r["output_token_ids"] for r in rows] == [[UNKNOWN_ID] * 3] * 2
    assert [r["text"] for r in rows] == [f"<|unknown:{UNKNOWN_ID}|>" * 3] * 2
    # The run says at its start what the extra ids will look like.
    assert f"{TOKENIZER_VOCAB}" in proc.stderr and "<|unknown:ID|>" in proc.stderr, describe(proc)


def test_smaller_vocab_refuses_a_text_prompt_it_cannot_embed(tmp_path: Path, hf_tiny_dir: Path) -> None:
    """The default prompt "Hello" is id 15496; a 1000-id model cannot embed it (before: IndexError)."""
    folder = resized_vocab_dir(hf_tiny_dir, tmp_path / "vocab1000", 1000)
    proc = run_cli(tmp_path, *FAST, "num_requests=1", "max_new_tokens=2", f"engine.weights={folder}")
    line = error_line(proc)
    for word in ("workload.prompt='Hello'", "15496", f"engine.weights={folder}", "1000", "allowed"):
        assert word in line, f"message lacks {word!r}\n{describe(proc)}"
    no_run_started(tmp_path)


def test_smaller_vocab_refuses_jsonl_ids_beyond_it(tmp_path: Path, hf_tiny_dir: Path) -> None:
    """Ids given directly are checked against the model's vocabulary, not the tokenizer's: 1000 is a GPT-2
    id but not one a 1000-id model has (before: IndexError in the embedding)."""
    folder = resized_vocab_dir(hf_tiny_dir, tmp_path / "vocab1000", 1000)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"prompt_token_ids": [1, 999]}) + "\n" + json.dumps({"prompt_token_ids": [1000]})
    )
    proc = run_cli(
        tmp_path,
        *FAST,
        "num_requests=2",
        "max_new_tokens=2",
        f"engine.weights={folder}",
        "workload=jsonl",
        f"workload.path={prompts}",
    )
    line = error_line(proc)
    for word in (f"{prompts}:2:", "token id 1000", "[0, 1000)", f"engine.weights={folder}"):
        assert word in line, f"message lacks {word!r}\n{describe(proc)}"
    no_run_started(tmp_path)


def test_smaller_vocab_random_workload_draws_within_it(tmp_path: Path, hf_tiny_dir: Path) -> None:
    """Random prompts are drawn from the ids the model has (before: ids up to 50255, IndexError)."""
    folder = resized_vocab_dir(hf_tiny_dir, tmp_path / "vocab1000", 1000)
    proc = run_cli(
        tmp_path,
        *FAST,
        "num_requests=4",
        "max_new_tokens=4",
        f"engine.weights={folder}",
        "workload=random",
        "workload.input_len=32",
    )
    assert_ok(proc)
    [run_dir] = [p.parent for p in tmp_path.glob("outputs/*/*/results.json")]
    rows = read_outputs(run_dir)
    prompt_ids = [t for r in rows for t in r["prompt_token_ids"]]
    assert len(prompt_ids) == 4 * 32 and max(prompt_ids) < 1000
    assert len(set(prompt_ids)) > 50  # spread over the model's ids, not squeezed onto a few
    assert all(0 <= t < 1000 for r in rows for t in r["output_token_ids"])
    assert read_results(run_dir)["run"]["status"] == "FINISHED"


# -- 2. workload.path that is not a regular file ---------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "what"), [("directory", "is a directory"), ("fifo", "is a named pipe (FIFO)")]
)
def test_jsonl_path_that_is_not_a_regular_file(tmp_path: Path, kind: str, what: str) -> None:
    path = tmp_path / f"prompts-{kind}"
    if kind == "directory":
        path.mkdir()
    else:
        os.mkfifo(path)  # nothing ever writes to it: opening it for reading would block for ever
    proc = run_cli(tmp_path, *FAST, "workload=jsonl", f"workload.path={path}", timeout=120)
    line = error_line(proc)
    assert line.startswith(f"{ONE_LINE}workload.path={path}: {what}"), describe(proc)
    assert "no such file" not in line and "allowed: a regular JSONL file" in line, describe(proc)


# -- 3. a .pt file that torch will not load with weights_only=True -----------------------------------------
class Payload:
    """Unpickled by an unsafe loader, this creates the file ``marker``: proof that rosebench never tries."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("content", ["pickled-object", "random-bytes"])
def test_pt_file_torch_refuses_is_one_line_without_unsafe_advice(tmp_path: Path, content: str) -> None:
    path, marker = tmp_path / "random.pt", tmp_path / "code-ran"
    if content == "pickled-object":
        torch.save({"model": Payload(marker), "config": {}}, path)
    else:
        path.write_bytes(os.urandom(4096))
    proc = run_cli(tmp_path, *FAST, "num_requests=1", "max_new_tokens=2", f"engine.weights={path}")
    line = error_line(proc)
    assert line.startswith(f"{ONE_LINE}engine.weights={path}: not a readable weights checkpoint"), line
    assert "weights_only=True" in line and "safety" in line, line
    for advice in (
        "weights_only` set to `False`",
        "weights_only=False",
        "can still be loaded",
        "trust",
        "\x1b",
    ):
        assert advice not in line, f"torch's advice {advice!r} is quoted\n{line}"
    assert not marker.exists()
    no_run_started(tmp_path)
