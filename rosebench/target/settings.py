"""The ``target`` config node: what the runner benchmarks. One dataclass per kind, chosen with
``target=KIND`` (as ``workload``), so that a key of another kind is refused by name. No torch, no aiohttp.

- ``engine`` (the default): the engine in this process, today's path.
- ``serve``: rosebench's own server (``python -m rosebench.serve``), started by the runner with the run's
  engine, scheduler, sampling and profile config, benchmarked over HTTP, and stopped with the run.
- ``http``: any OpenAI-compatible server at ``target.url`` (vLLM, SGLang, TGI, llama.cpp, ...).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from urllib.parse import urlsplit

ENDPOINTS = ("completions", "chat")  # /v1/completions, /v1/chat/completions
PROMPT_MODES = ("auto", "token_ids", "text")
API_KEY_ENV = "OPENAI_API_KEY"


def _check_kind(kind: str, expected: str) -> None:
    if kind != expected:
        raise ValueError(f"target.kind={kind}: this is the {expected} target; switch with target={kind}")


def _check_client_keys(endpoint: str, prompt: str, timeout_s: float) -> None:
    """The keys the HTTP client reads, shared by target=serve and target=http."""
    if endpoint not in ENDPOINTS:
        raise ValueError(f"target.endpoint={endpoint}: allowed values are {', '.join(ENDPOINTS)}")
    if prompt not in PROMPT_MODES:
        raise ValueError(f"target.prompt={prompt}: allowed values are {', '.join(PROMPT_MODES)}")
    if endpoint == "chat" and prompt == "token_ids":
        raise ValueError(
            "target.prompt=token_ids: the chat endpoint takes messages of text (allowed with "
            "target.endpoint=chat: auto, text)"
        )
    if not 0 < timeout_s < math.inf:
        raise ValueError(f"target.timeout_s={timeout_s}: must be finite and > 0 (seconds per request)")


@dataclass
class EngineTarget:
    kind: str = "engine"

    def __post_init__(self) -> None:
        _check_kind(self.kind, "engine")


@dataclass
class ServeTarget:
    kind: str = "serve"
    endpoint: str = "completions"  # completions | chat
    prompt: str = "auto"  # auto (= token ids on completions) | token_ids | text
    timeout_s: float = 600.0  # per request, from sending it to its last chunk
    startup_timeout_s: float = 300.0  # for the server to load the model and answer /health

    def __post_init__(self) -> None:
        _check_kind(self.kind, "serve")
        _check_client_keys(self.endpoint, self.prompt, self.timeout_s)
        if not 0 < self.startup_timeout_s < math.inf:
            raise ValueError(f"target.startup_timeout_s={self.startup_timeout_s}: must be finite and > 0")


@dataclass
class HttpTarget:
    kind: str = "http"
    url: str | None = None  # the server's base URL, e.g. http://127.0.0.1:8000 (required)
    model: str | None = None  # None = the first id of GET /v1/models
    api_key: str | None = None  # None = $OPENAI_API_KEY; never written, printed or logged
    endpoint: str = "completions"  # completions | chat
    # auto: token ids when a 1-token probe before timing shows the server takes them, else text
    prompt: str = "auto"
    timeout_s: float = 600.0  # per request, from sending it to its last chunk

    def __post_init__(self) -> None:
        _check_kind(self.kind, "http")
        if self.url is None:
            raise ValueError(
                "target.url: required with target=http (the base URL of an OpenAI-compatible server, "
                "e.g. target.url=http://127.0.0.1:8000)"
            )
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"target.url={public_url(self.url)}: not an http(s) URL (e.g. http://127.0.0.1:8000)"
            )
        _check_client_keys(self.endpoint, self.prompt, self.timeout_s)

    def resolved_api_key(self) -> str | None:
        """The key sent as ``Authorization: Bearer``: ``target.api_key``, else ``$OPENAI_API_KEY``."""
        return self.api_key if self.api_key is not None else os.environ.get(API_KEY_ENV) or None


TARGET_KINDS: dict[str, type] = {"engine": EngineTarget, "serve": ServeTarget, "http": HttpTarget}


def public_url(url: str) -> str:
    """``url`` without its user info (``http://user:pass@host`` -> ``http://host``), and without a trailing
    slash: what results.json, the console and MLflow show of a server's address."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return parts._replace(netloc=netloc).geturl().rstrip("/")
