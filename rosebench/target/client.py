"""The streaming HTTP client: a workload's requests against an OpenAI-compatible server, timed as vLLM's
``bench serve`` times them, into the records an in-process pass makes (``RequestRecord``).

Timing (``time.perf_counter`` from the pass's start): a request's ``arrival_s`` is taken just before its
POST, after any wait for a ``max_concurrency`` place; ``token_times_s`` has the time of each chunk that
carried content (text or token ids); ``finish_s`` is the last chunk with a choice. TTFT, ITL, TPOT and E2E
follow in ``rosebench.metrics``; the token count is the server's ``usage`` (a chunk may carry several).

A request that fails (an HTTP error status, a broken connection, a timeout, an error event mid-stream) is
kept with its error, never dropped. The engine's own figures are not seen over HTTP: they stay None.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp

from rosebench.engine.tokenizer import NoTokenizer, Tokenizer, detokenize
from rosebench.scheduler.records import PassResult, PassStats, RequestRecord
from rosebench.target.settings import public_url
from rosebench.workload.request import Request

CONTROL_TIMEOUT_S = 30.0  # /v1/models, /health, /metrics, profiler calls: a server that does not answer
BODY_CHARS = 2000  # of an error response kept in errors.jsonl
READ_BUFFER_BYTES = 2**20  # one SSE line (a chunk's token ids) may exceed aiohttp's 64 KiB default
PROGRESS_EVERY_S = 10.0
Progress = Callable[[int, float], None]  # (requests done, seconds since the pass started)


class TargetError(Exception):
    """The server cannot be benchmarked (unreachable, no model, refuses every request): one line."""


@dataclass(frozen=True)
class Connection:
    """Where the server is and how to talk to it."""

    url: str  # the API root: the base URL without a trailing ``/v1`` (user info, if any, stays: it is used)
    api_key: str | None = None
    timeout_s: float = 600.0  # per generation request

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def api_root(base_url: str) -> str:
    """``http://host:8000/v1/`` -> ``http://host:8000``: users give either, as the OpenAI client takes."""
    root = base_url.rstrip("/")
    return root.removesuffix("/v1")


@dataclass(frozen=True)
class RequestFormat:
    """How each generation request is written."""

    model: str
    endpoint: str  # completions | chat
    send_token_ids: bool  # the prompt as token ids (completions only), else as text
    # The model's: text of prompts given as ids, counts where the server gives none (NoTokenizer: ids only)
    tokenizer: Tokenizer

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self.endpoint == "chat" else "/v1/completions"


@dataclass
class RequestFailure:
    """One failed request, for errors.jsonl: the HTTP status when there was one, and the server's body."""

    request_id: int
    error: str
    status: int | None = None
    body: str | None = None


# One request's outcome: its record, its failure or None, whether the server counted its tokens (usage),
# whether the server sent its output ids.
Sent = tuple[RequestRecord, RequestFailure | None, bool, bool]


@dataclass
class HttpPass:
    """A pass over HTTP: the records (failed ones carry ``error``), and how its counts were obtained."""

    result: PassResult
    failures: list[RequestFailure] = field(default_factory=list)
    counted_by_server: int = 0  # successful requests whose completion tokens came from the server's usage
    counted_by_tokenizer: int = 0  # ... from re-tokenizing their text (the server sent no usage)
    ids_from_server: int = 0  # successful requests whose output ids the server sent (return_token_ids)
    ids_from_tokenizer: int = 0  # ... re-tokenized from their text, for outputs.jsonl only


def request_body(request: Request, fmt: RequestFormat, prompt_text: str | None) -> dict[str, Any]:
    """The JSON body of one streaming request; ``prompt_text`` is sent when the ids are not."""
    params = request.params
    body: dict[str, Any] = {
        "model": fmt.model,
        "max_tokens": params.max_new_tokens,
        "temperature": params.temperature,
        "ignore_eos": params.ignore_eos,
        "stream": True,
        "stream_options": {"include_usage": True},
        "return_token_ids": True,  # vLLM's extension: rosebench's server sends the ids it generated
    }
    if params.min_tokens:
        body["min_tokens"] = params.min_tokens
    if not params.greedy:
        body["top_p"] = params.top_p
        if params.top_k:
            body["top_k"] = params.top_k
        # The workload gives each random request request_seed(seed, id) when sampling.seed is null: the
        # server then draws exactly what the engine in-process draws.
        if params.seed is not None:
            body["seed"] = params.seed
    if fmt.endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt_text}]
    else:
        body["prompt"] = list(request.prompt_token_ids) if fmt.send_token_ids else prompt_text
    return body


def prompt_text(request: Request, tokenizer: Tokenizer) -> str | None:
    """The text a prompt is sent as: the workload's own text, else its ids detokenized (random tokens);
    None without a tokenizer (such prompts are only sent as ids)."""
    if request.prompt_text is not None:
        return request.prompt_text
    return detokenize(tokenizer, list(request.prompt_token_ids))


def run_pass(
    connection: Connection,
    fmt: RequestFormat,
    requests: list[Request],
    *,
    replay_arrivals: bool,
    max_concurrency: int | None,
    on_progress: Progress | None = None,
) -> HttpPass:
    """Send every request, each at its ``arrival_s`` when ``replay_arrivals`` (online), else all at once
    (offline); with ``max_concurrency`` at most that many are in flight, the others wait for a place in
    arrival order (as vLLM's ``bench serve`` does with its semaphore). ``on_progress(done, elapsed_s)`` is
    called every PROGRESS_EVERY_S, so that a long pass is never silent."""
    return asyncio.run(_run_pass(connection, fmt, requests, replay_arrivals, max_concurrency, on_progress))


async def _run_pass(
    connection: Connection,
    fmt: RequestFormat,
    requests: list[Request],
    replay_arrivals: bool,
    max_concurrency: int | None,
    on_progress: Progress | None,
) -> HttpPass:
    texts = {r.request_id: prompt_text(r, fmt.tokenizer) for r in requests}
    places = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    outcome = HttpPass(PassResult([], _unseen_engine_stats()))
    async with _session(connection) as session:
        start = time.perf_counter()
        tasks: list[asyncio.Task[Sent]] = []
        reporter = asyncio.create_task(_report(tasks, start, on_progress)) if on_progress else None
        for request in sorted(requests, key=lambda r: (r.arrival_s, r.request_id)):
            if replay_arrivals:
                await asyncio.sleep(max(0.0, request.arrival_s - (time.perf_counter() - start)))
            body = request_body(request, fmt, texts[request.request_id])
            tasks.append(asyncio.create_task(_send(session, connection, fmt, request, body, start, places)))
        sent = await asyncio.gather(*tasks)
        outcome.result.stats.elapsed_total_s = time.perf_counter() - start
        if reporter is not None:
            reporter.cancel()
    for record, failure, counted_by_server, ids_from_server in sent:
        outcome.result.records.append(record)
        if failure is not None:
            outcome.failures.append(failure)
            continue
        outcome.counted_by_server += counted_by_server
        outcome.counted_by_tokenizer += not counted_by_server
        outcome.ids_from_server += ids_from_server
        outcome.ids_from_tokenizer += not ids_from_server
    outcome.result.records.sort(key=lambda r: r.request_id)
    return outcome


async def _report(tasks: list[asyncio.Task[Sent]], start: float, on_progress: Progress) -> None:
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        on_progress(sum(task.done() for task in tasks), time.perf_counter() - start)


def _unseen_engine_stats() -> PassStats:
    """A pass's stats with the engine's own figures unknown (None: absent from the metrics, never 0)."""
    return PassStats(
        elapsed_prefill_s=None,
        elapsed_decode_s=None,
        preemptions=None,
        peak_kv_blocks=None,
        kv_capacity_blocks=None,
        prefix_cache_queries=None,
        prefix_cache_hits=None,
    )


def _session(connection: Connection) -> aiohttp.ClientSession:
    # No connection limit of aiohttp's own (default 100): max_concurrency is the only cap, as in vLLM's bench.
    return aiohttp.ClientSession(
        headers=connection.headers(),
        connector=aiohttp.TCPConnector(limit=0),
        read_bufsize=READ_BUFFER_BYTES,
    )


async def _send(
    session: aiohttp.ClientSession,
    connection: Connection,
    fmt: RequestFormat,
    request: Request,
    body: dict[str, Any],
    start: float,
    places: asyncio.Semaphore | None,
) -> Sent:
    """One streaming request: (its record, its failure or None, whether the server counted its tokens,
    whether the server sent its output ids)."""
    async with places if places is not None else contextlib.nullcontext():
        record = RequestRecord(
            request.request_id, list(request.prompt_token_ids), time.perf_counter() - start
        )
        stream = _Stream(fmt.endpoint)
        failure = None
        try:
            timeout = aiohttp.ClientTimeout(total=connection.timeout_s)
            async with session.post(connection.url + fmt.path, json=body, timeout=timeout) as response:
                if response.status != 200:
                    text = await response.text(errors="replace")
                    failure = _http_failure(request.request_id, response.status, text)
                else:
                    async for line in response.content:
                        if stream.read(line, time.perf_counter() - start):
                            break
                    failure = stream.failure(request.request_id, fmt.tokenizer)
        except TimeoutError:
            failure = RequestFailure(
                request.request_id, f"no complete answer within {connection.timeout_s} s"
            )
        except aiohttp.ClientError as error:
            failure = RequestFailure(request.request_id, f"{type(error).__name__}: {_one_line(str(error))}")
    if failure is not None:
        record.error = failure.error
        record.token_times_s, record.finish_s = stream.times_s, stream.last_s
        return record, failure, False, False
    return stream.fill(record, fmt.tokenizer)


class _Stream:
    """What one SSE stream has said so far: its content chunks' times, text, ids, finish and usage."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.times_s: list[float] = []
        self.texts: list[str] = []
        self.token_ids: list[int] = []
        self.every_chunk_had_ids = True
        self.last_s: float | None = None  # the last chunk with a choice (content or finish)
        self.finish_reason: str | None = None
        self.completion_tokens: int | None = None
        self.done = False
        self.error: str | None = None

    def read(self, line: bytes, now_s: float) -> bool:
        """Take one line of the stream; True when the stream is over ([DONE] or an error event)."""
        line = line.strip()
        if not line.startswith(b"data:"):
            return False  # blank lines between events, comments, event names
        data = line[len(b"data:") :].strip()
        if data == b"[DONE]":
            self.done = True
            return True
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError:
            self.error = f"a chunk that is not JSON: {_one_line(data.decode(errors='replace'))[:200]}"
            return True
        if "error" in chunk:  # vLLM and rosebench end a failing stream with an error event
            self.error = f"error event mid-stream: {_one_line(json.dumps(chunk['error']))[:BODY_CHARS]}"
            return True
        if choices := chunk.get("choices"):
            self._choice(choices[0], now_s)
        if usage := chunk.get("usage"):
            self.completion_tokens = usage.get("completion_tokens")
        return False

    def _choice(self, choice: dict[str, Any], now_s: float) -> None:
        text = (
            choice.get("text")
            if self.endpoint == "completions"
            else (choice.get("delta") or {}).get("content")
        )
        ids = choice.get("token_ids")
        if text or ids:
            self.times_s.append(now_s)
            self.texts.append(text or "")
            if ids is None:
                self.every_chunk_had_ids = False
            else:
                self.token_ids += ids
        if choice.get("finish_reason") is not None:
            self.finish_reason = choice["finish_reason"]
        self.last_s = now_s

    @property
    def ids_from_server(self) -> bool:
        return bool(self.times_s) and self.every_chunk_had_ids

    def failure(self, request_id: int, tokenizer: Tokenizer) -> RequestFailure | None:
        if self.error is not None:
            return RequestFailure(request_id, self.error)
        if not self.done and self.finish_reason is None:
            return RequestFailure(request_id, "the stream ended before a finish_reason or [DONE]")
        if isinstance(tokenizer, NoTokenizer) and not self.ids_from_server:
            return RequestFailure(
                request_id,
                f"the server sent no token_ids, and {tokenizer.source} has no tokenizer to count its text",
            )
        return None

    def fill(self, record: RequestRecord, tokenizer: Tokenizer) -> Sent:
        text = "".join(self.texts)
        ids_from_server = self.ids_from_server
        # For outputs.jsonl only when the server sent no ids: GPT-2's BPE gives back the same text.
        ids = self.token_ids if ids_from_server else tokenizer.encode(text, allowed_special="all")
        counted_by_server = self.completion_tokens is not None
        record.output_token_ids = list(ids)
        record.token_times_s = self.times_s
        record.finish_s = self.last_s
        record.finish_reason = self.finish_reason
        record.completion_tokens = self.completion_tokens if counted_by_server else len(ids)
        return record, None, counted_by_server, ids_from_server


def _http_failure(request_id: int, status: int, text: str) -> RequestFailure:
    return RequestFailure(
        request_id, f"HTTP {status}: {_one_line(text)[:300]}", status=status, body=text[:BODY_CHARS]
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())


# -- the server's other endpoints: each one call, before or after a pass --------------------------------


@dataclass
class Answer:
    """A control call's answer: its HTTP status and body (JSON when it parses, else the text)."""

    status: int
    body: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def call(connection: Connection, method: str, path: str, json_body: Any = None) -> Answer:
    """One request to ``path`` (``/v1/models``, ``/start_profile``, ...); a server that cannot be reached or
    does not answer within CONTROL_TIMEOUT_S is a ``TargetError`` naming the URL."""
    return asyncio.run(_call(connection, method, path, json_body))


async def _call(connection: Connection, method: str, path: str, json_body: Any) -> Answer:
    url = connection.url + path
    try:
        async with _session(connection) as session:
            timeout = aiohttp.ClientTimeout(total=CONTROL_TIMEOUT_S)
            async with session.request(method, url, json=json_body, timeout=timeout) as response:
                text = await response.text(errors="replace")
    except TimeoutError:
        raise TargetError(f"{method} {public_url(url)}: no answer within {CONTROL_TIMEOUT_S:.0f} s") from None
    except aiohttp.ClientError as error:
        raise TargetError(
            f"{method} {public_url(url)}: cannot reach the server ({type(error).__name__}: "
            f"{_one_line(str(error))})"
        ) from None
    try:
        body: Any = json.loads(text)
    except json.JSONDecodeError:
        body = text
    return Answer(response.status, body)


def model_ids(connection: Connection) -> list[str]:
    """The ids ``GET /v1/models`` lists, in its order; a ``TargetError`` if it lists none or fails."""
    answer = call(connection, "GET", "/v1/models")
    where = f"GET {public_url(connection.url)}/v1/models"
    if not answer.ok:
        raise TargetError(f"{where} answered HTTP {answer.status}: {_brief(answer.body)}")
    data = answer.body.get("data") if isinstance(answer.body, dict) else None
    ids = [m["id"] for m in data or [] if isinstance(m, dict) and isinstance(m.get("id"), str)]
    if not ids:
        raise TargetError(f"{where} lists no model: {_brief(answer.body)}")
    return ids


def _brief(body: Any) -> str:
    text = body if isinstance(body, str) else json.dumps(body)
    return _one_line(text)[:300]


def prometheus_values(text: str) -> dict[str, float]:
    """``GET /metrics``'s exposition text as {series name: value}, each name's label sets summed."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        try:
            values[name] = values.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        except (IndexError, ValueError):
            continue  # a line this reader does not know (a timestamp, an exemplar): not a figure used here
    return values


def probe(connection: Connection, fmt: RequestFormat, request: Request) -> RequestFailure | None:
    """Send ``request`` once as a 1-token stream (before timing); its failure, or None when it worked."""
    one_token = replace(request, params=replace(request.params, max_new_tokens=1, min_tokens=0))
    sent = run_pass(connection, fmt, [one_token], replay_arrivals=False, max_concurrency=None)
    return sent.failures[0] if sent.failures else None


def first_error_line(failures: Iterable[RequestFailure]) -> str:
    """The first failure, as one line (for the error that stops a run in which every request failed)."""
    first = next(iter(failures))
    return f"request {first.request_id}: {first.error}"
