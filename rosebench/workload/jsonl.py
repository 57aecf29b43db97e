"""Prompts from a JSON Lines file: the way to benchmark your own dataset."""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass
from pathlib import Path

import tiktoken

from rosebench.workload.errors import WorkloadError
from rosebench.workload.prompt import Prompt, Vocabulary, check_kind

_KEYS = ("prompt", "prompt_token_ids", "max_new_tokens")


@dataclass
class JsonlWorkload:
    """One prompt per line: ``{"prompt": str}`` or ``{"prompt_token_ids": [int, ...]}``.

    An optional ``"max_new_tokens": int >= 1`` overrides the run's default for that line. Blank lines are
    skipped. Only the first ``num_requests`` prompts are read (later lines are not checked); a file with
    fewer prompts is cycled through until there are ``num_requests``. Any malformed line raises
    ``WorkloadError("{path}:{lineno}: ...")``. Every prompt id, given or encoded from text, must be one
    the model has (``vocab``): with a model larger than the tokenizer, ``prompt_token_ids`` may use its
    extra ids. ``path`` must be a regular file (not a directory, a pipe or a device).
    """

    kind: str = "jsonl"
    path: str | None = None  # required

    def __post_init__(self) -> None:
        check_kind(self.kind, "jsonl")
        if self.path is None:
            raise WorkloadError(
                "workload.path: required with workload=jsonl (a file with one JSON request per line)"
            )
        _check_regular_file(self.path)

    def prompts(
        self,
        num_requests: int,
        tokenizer: tiktoken.Encoding,
        seed: int,
        max_new_tokens: int,
        vocab: Vocabulary | None = None,
    ) -> list[Prompt]:
        vocab = vocab or Vocabulary(tokenizer.n_vocab)
        path = Path(self.path).expanduser()
        prompts: list[Prompt] = []
        try:
            with path.open("rb") as f:
                for lineno, raw in enumerate(f, start=1):
                    if len(prompts) == num_requests:
                        break
                    if raw.strip():
                        prompts.append(_parse_line(raw, tokenizer, vocab, f"{path}:{lineno}"))
        except OSError as e:
            raise WorkloadError(f"{path}: cannot read the jsonl workload file ({e.strerror})") from e
        if not prompts:
            raise WorkloadError(f"{path}: no prompts; expected one JSON object per line")
        return [prompts[i % len(prompts)] for i in range(num_requests)]


_NOT_REGULAR = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _check_regular_file(path_text: str) -> None:
    """The path must be a regular file. Told from ``stat`` alone: opening a FIFO to look would block until
    some other process writes to it, and a pipe or device cannot be read again for the next pass anyway."""
    try:
        mode = Path(path_text).expanduser().stat().st_mode
    except FileNotFoundError:
        raise WorkloadError(f"workload.path={path_text}: no such file") from None
    except OSError as e:
        raise WorkloadError(
            f"workload.path={path_text}: cannot be looked at ({e.strerror}); allowed: a regular JSONL file"
        ) from None
    if stat.S_ISREG(mode):
        return
    what = next((name for test, name in _NOT_REGULAR if test(mode)), "not a regular file")
    raise WorkloadError(
        f"workload.path={path_text}: is {what}; allowed: a regular JSONL file (one JSON request per line)"
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true/false are not token ids


def _parse_line(raw: bytes, tokenizer: tiktoken.Encoding, vocab: Vocabulary, where: str) -> Prompt:
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
        if (bad := vocab.first_outside(ids)) is not None:
            raise WorkloadError(
                f"{where}: 'prompt' encodes to token id {bad}, outside {vocab.describe()}; allowed: text "
                f"whose GPT-2 token ids are all below {vocab.size}, or 'prompt_token_ids'"
            )
    else:
        ids = obj["prompt_token_ids"]
        if not isinstance(ids, list) or not all(_is_int(t) for t in ids):
            raise WorkloadError(f"{where}: 'prompt_token_ids' must be a list of integers")
        if (bad := vocab.first_outside(ids)) is not None:
            raise WorkloadError(
                f"{where}: token id {bad} out of range; ids must be in [0, {vocab.size}) ({vocab.describe()})"
            )
    if not ids:
        raise WorkloadError(f"{where}: empty prompt; at least one token is needed")

    max_new_tokens = obj.get("max_new_tokens")
    if max_new_tokens is not None and not (_is_int(max_new_tokens) and max_new_tokens >= 1):
        raise WorkloadError(f"{where}: 'max_new_tokens' must be an integer >= 1, got {max_new_tokens!r}")
    return Prompt(token_ids=list(ids), max_new_tokens=max_new_tokens, text=text)
