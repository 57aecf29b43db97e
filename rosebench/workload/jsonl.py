"""Prompts from a JSON Lines file: the way to benchmark your own dataset."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import tiktoken

from rosebench.workload.errors import WorkloadError
from rosebench.workload.prompt import Prompt, check_kind

_KEYS = ("prompt", "prompt_token_ids", "max_new_tokens")


@dataclass
class JsonlWorkload:
    """One prompt per line: ``{"prompt": str}`` or ``{"prompt_token_ids": [int, ...]}``.

    An optional ``"max_new_tokens": int >= 1`` overrides the run's default for that line. Blank lines are
    skipped. Only the first ``num_requests`` prompts are read (later lines are not checked); a file with
    fewer prompts is cycled through until there are ``num_requests``. Any malformed line raises
    ``WorkloadError("{path}:{lineno}: ...")``.
    """

    kind: str = "jsonl"
    path: str | None = None  # required

    def __post_init__(self) -> None:
        check_kind(self.kind, "jsonl")
        if self.path is None:
            raise WorkloadError(
                "workload.path: required with workload=jsonl (a file with one JSON request per line)"
            )
        if not Path(self.path).expanduser().is_file():
            raise WorkloadError(f"workload.path={self.path}: no such file")

    def prompts(
        self, num_requests: int, tokenizer: tiktoken.Encoding, seed: int, max_new_tokens: int
    ) -> list[Prompt]:
        path = Path(self.path).expanduser()
        prompts: list[Prompt] = []
        try:
            with path.open("rb") as f:
                for lineno, raw in enumerate(f, start=1):
                    if len(prompts) == num_requests:
                        break
                    if raw.strip():
                        prompts.append(_parse_line(raw, tokenizer, f"{path}:{lineno}"))
        except OSError as e:
            raise WorkloadError(f"{path}: cannot read the jsonl workload file ({e.strerror})") from e
        if not prompts:
            raise WorkloadError(f"{path}: no prompts; expected one JSON object per line")
        return [prompts[i % len(prompts)] for i in range(num_requests)]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true/false are not token ids


def _parse_line(raw: bytes, tokenizer: tiktoken.Encoding, where: str) -> Prompt:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise WorkloadError(f"{where}: not UTF-8 text; the file must be UTF-8 encoded") from e
    except json.JSONDecodeError as e:
        raise WorkloadError(f"{where}: invalid JSON ({e.msg}, column {e.colno}); expected an object") from e
    if not isinstance(obj, dict):
        raise WorkloadError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if unknown := sorted(set(obj) - set(_KEYS)):
        raise WorkloadError(f"{where}: unknown key(s) {unknown}; allowed keys: {', '.join(_KEYS)}")
    if ("prompt" in obj) == ("prompt_token_ids" in obj):
        raise WorkloadError(f"{where}: give exactly one of 'prompt' (text) or 'prompt_token_ids' (int list)")

    text = obj.get("prompt")
    if "prompt" in obj:
        if not isinstance(text, str):
            raise WorkloadError(f"{where}: 'prompt' must be a string, got {type(text).__name__}")
        ids = tokenizer.encode(text, allowed_special="all")
    else:
        ids = obj["prompt_token_ids"]
        if not isinstance(ids, list) or not all(_is_int(t) for t in ids):
            raise WorkloadError(f"{where}: 'prompt_token_ids' must be a list of integers")
        vocab = tokenizer.n_vocab
        if bad := [t for t in ids if not 0 <= t < vocab]:
            raise WorkloadError(f"{where}: token id {bad[0]} out of range; ids must be in [0, {vocab})")
    if not ids:
        raise WorkloadError(f"{where}: empty prompt; at least one token is needed")

    max_new_tokens = obj.get("max_new_tokens")
    if max_new_tokens is not None and not (_is_int(max_new_tokens) and max_new_tokens >= 1):
        raise WorkloadError(f"{where}: 'max_new_tokens' must be an integer >= 1, got {max_new_tokens!r}")
    return Prompt(token_ids=list(ids), max_new_tokens=max_new_tokens, text=text)
