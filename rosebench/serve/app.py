"""The HTTP front: OpenAI's completions and chat completions (streamed as server-sent events), models,
health, Prometheus metrics and the profiler switches, over one ``EngineLoop``.

A model without a tokenizer (a random-weights Llama preset) takes prompts as token ids only: a text prompt,
chat messages or stop strings are a 400 that says how to give a tokenizer. Its choices' ``text`` (or
``delta.content``) is always ``""``, never a made-up text, and every choice carries its ``token_ids`` (vLLM's
``return_token_ids`` field, as if asked), the response its ``prompt_token_ids``."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from rosebench.engine.sequence import SamplingParams
from rosebench.engine.tokenizer import NoTokenizer, Tokenizer
from rosebench.profiling.settings import ProfileSettings
from rosebench.serve.engine_loop import EngineLoop, TokenEvent
from rosebench.serve.protocol import (
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    GenerationRequest,
    chat_prompt,
    validation_error,
)
from rosebench.serve.text import TextStream

RETRY_AFTER_S = 1
_SSE_DONE = "data: [DONE]\n\n"


@dataclass
class ServerState:
    """What the endpoints share. ``queued`` counts requests submitted and not yet answered by a first
    token (the HTTP side's own count, exact on its event loop); ``draining`` is set by a stop signal."""

    loop: EngineLoop
    tokenizer: Tokenizer  # the model's own: NoTokenizer for a random-weights Llama preset
    model_name: str
    defaults: SamplingParams
    profile: ProfileSettings
    out_dir: Path  # the server's folder: profiles go here
    api_key: str | None
    max_queued: int
    queued: int = 0
    draining: bool = False
    profiles: int = 0

    @property
    def max_model_len(self) -> int:
        return self.loop.engine.max_model_len

    @property
    def vocab_size(self) -> int:
        return self.loop.engine.model_config.vocab_size

    @property
    def has_tokenizer(self) -> bool:
        return not isinstance(self.tokenizer, NoTokenizer)

    def no_tokenizer(self, param: str, what: str) -> ApiError:
        """The 400 for text asked of a model without a tokenizer, saying how to serve one that has one."""
        return ApiError(
            400,
            f"{param}: {self.model_name} has random weights and no tokenizer, so {what}: send prompt as a "
            "list of token ids to /v1/completions, or start the server with engine.weights=<Hugging Face "
            "folder with tokenizer.json>",
            param,
        )


def build_app(state: ServerState) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.loop.attach(asyncio.get_running_loop())
        yield
        state.loop.stop()

    app = FastAPI(title="rosebench", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        headers = {"Retry-After": str(RETRY_AFTER_S)} if error.status == 503 else None
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        message = f"{request.method} {request.url.path}: {error.detail}"
        return JSONResponse(ApiError(error.status_code, message).body(), status_code=error.status_code)

    @app.get("/health")
    async def health() -> Response:
        if not state.loop.alive:
            raise ApiError(503, "the engine loop has stopped")
        return Response(status_code=200)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.loop.metrics.text(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        _authorize(state, request)
        model = {
            "id": state.model_name,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "rosebench",
            "root": state.model_name,
            "max_model_len": state.max_model_len,
        }
        return {"object": "list", "data": [model]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        _authorize(state, request)
        body = _parse(CompletionRequest, await request.body())
        prompt = body.single_prompt
        prompt_ids = _prompt_ids(state, prompt, "prompt")
        max_tokens = body.max_tokens or state.defaults.max_new_tokens
        return await _generate(state, request, body, prompt_ids, max_tokens, "prompt", chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        _authorize(state, request)
        body = _parse(ChatCompletionRequest, await request.body())
        if not state.has_tokenizer:
            raise state.no_tokenizer("messages", "the chat endpoint cannot encode messages")
        prompt_ids = _prompt_ids(state, chat_prompt(body.messages), "messages")
        # As vLLM: a chat request that sets no limit may fill the rest of the context.
        max_tokens = body.max_tokens_asked or max(1, state.max_model_len - len(prompt_ids))
        return await _generate(state, request, body, prompt_ids, max_tokens, "messages", chat=True)

    @app.post("/reset_prefix_cache")
    async def reset_prefix_cache(request: Request) -> Response:
        _authorize(state, request)
        await _answer(state.loop.reset_prefix_cache())
        return Response(status_code=200)

    @app.post("/start_profile")
    async def start_profile(request: Request) -> dict[str, Any]:
        _authorize(state, request)
        state.profiles += 1
        out_dir = state.out_dir / f"profile-{state.profiles}"
        await _answer(state.loop.start_profile(replace(state.profile, enabled=True), out_dir))
        return {"profiling": True, "dir": str(out_dir)}

    @app.post("/stop_profile")
    async def stop_profile(request: Request) -> dict[str, Any]:
        _authorize(state, request)
        result = await _answer(state.loop.stop_profile())
        if result is None:
            return {"traces": [], "summary": None, "key_averages": None, "steps": 0}
        return {
            "traces": [str(p) for p in result.traces],
            "summary": str(result.summary_path),
            "key_averages": str(result.key_averages_path),
            "steps": result.steps,
            "warnings": result.warnings,
        }

    return app


async def _answer(future: Any) -> Any:
    """A command's result from the engine loop; its refusal (a profile already on, requests in flight
    at a prefix-cache reset) is a 400."""
    try:
        return await asyncio.wrap_future(future)
    except RuntimeError as error:
        raise ApiError(400, str(error)) from None


def _authorize(state: ServerState, request: Request) -> None:
    if state.api_key is None:
        return
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), state.api_key):
        raise ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'")


def _parse(model: type[GenerationRequest], raw: bytes) -> Any:
    try:
        return model.model_validate_json(raw)
    except ValidationError as error:
        raise validation_error(error.errors(include_url=False)) from None


def _prompt_ids(state: ServerState, prompt: str | list[int], param: str) -> list[int]:
    if isinstance(prompt, str):
        if not state.has_tokenizer:
            raise state.no_tokenizer(param, "a text prompt cannot be encoded")
        ids = state.tokenizer.encode(prompt, allowed_special="all")
    else:
        ids = prompt
        bad = next((t for t in ids if not 0 <= t < state.vocab_size), None)
        if bad is not None:
            raise ApiError(400, f"{param}: token id {bad} is outside the vocabulary [0, {state.vocab_size})",
                           param)  # fmt: skip
    if not ids:
        raise ApiError(400, f"{param}: empty (at least one token is needed)", param)
    if len(ids) >= state.max_model_len:
        raise ApiError(
            400,
            f"{param}: {len(ids)} tokens leave no room in the model's context of {state.max_model_len} "
            "positions for one new token",
            param,
        )
    return ids


def _sampling(
    state: ServerState, body: GenerationRequest, num_prompt_tokens: int, max_tokens: int
) -> SamplingParams:
    defaults = state.defaults
    if num_prompt_tokens + max_tokens > state.max_model_len:
        raise ApiError(
            400,
            f"max_tokens={max_tokens}: {num_prompt_tokens} prompt tokens + {max_tokens} exceed the model's "
            f"context of {state.max_model_len} positions (at most {state.max_model_len - num_prompt_tokens})",
            "max_tokens",
        )
    try:
        state.loop.check(num_prompt_tokens, max_tokens)
        return SamplingParams(
            max_new_tokens=max_tokens,
            temperature=defaults.temperature if body.temperature is None else body.temperature,
            top_k=defaults.top_k if body.top_k is None else max(0, body.top_k),
            top_p=defaults.top_p if body.top_p is None else body.top_p,
            seed=defaults.seed if body.seed is None else body.seed,
            ignore_eos=body.ignore_eos or defaults.ignore_eos,
            min_tokens=body.min_tokens,
        )
    except ValueError as error:
        raise ApiError(400, str(error).removeprefix("sampling."), "max_tokens") from None


async def _generate(
    state: ServerState,
    request: Request,
    body: GenerationRequest,
    prompt_ids: list[int],
    max_tokens: int,
    prompt_param: str,
    chat: bool,
) -> Response:
    params = _sampling(state, body, len(prompt_ids), max_tokens)
    if body.stop_strings and not state.has_tokenizer:
        raise state.no_tokenizer("stop", "there is no text to find stop strings in")
    if state.draining:
        raise ApiError(503, "the server is shutting down")
    if not state.loop.alive:
        raise ApiError(503, "the engine loop has stopped")
    if state.queued >= state.max_queued:
        raise ApiError(
            503, f"{state.queued} requests are waiting (serve.max_queued={state.max_queued}): retry later"
        )
    generation = Generation(state, body, prompt_ids, params, chat)
    watcher = asyncio.create_task(generation.abort_on_disconnect(request))
    try:
        first = await generation.next_event()
    except BaseException:
        watcher.cancel()
        generation.abort()
        raise
    if first.finish_reason in ("error", "abort"):  # before any token: the status says it
        watcher.cancel()
        raise ApiError(
            500 if first.finish_reason == "error" else 503, first.error or "the request was aborted"
        )
    if body.stream:
        return StreamingResponse(
            generation.sse(first, watcher),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )
    try:
        return JSONResponse(await generation.whole(first))
    finally:
        watcher.cancel()


class Generation:
    """One request's life on the HTTP side: its events from the engine loop, as text chunks or as one
    response. It always ends its request in the loop: finished there, or aborted from here."""

    def __init__(
        self,
        state: ServerState,
        body: GenerationRequest,
        prompt_ids: list[int],
        params: SamplingParams,
        chat: bool,
    ) -> None:
        self.state, self.body, self.chat = state, body, chat
        self.prompt_ids = prompt_ids
        # No tokenizer: no text (each choice's is ""), and the ids are the output, so always sent.
        self.text = TextStream(state.tokenizer, body.stop_strings) if state.has_tokenizer else None
        self.with_ids = body.return_token_ids or self.text is None
        self.completion_tokens = 0
        self.ended = False  # the loop holds nothing of this request any more
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self._events: asyncio.Queue[TokenEvent] = asyncio.Queue()
        self._waiting = True
        state.queued += 1
        self.request_id = state.loop.submit(prompt_ids, params, self._deliver)

    def _deliver(self, event: TokenEvent) -> None:
        if self._waiting:
            self._waiting = False
            self.state.queued -= 1
        self._events.put_nowait(event)

    async def next_event(self) -> TokenEvent:
        event = await self._events.get()
        if event.finish_reason is not None:
            self.ended = True
        return event

    def abort(self) -> None:
        if not self.ended:
            self.ended = True
            self.state.loop.abort(self.request_id)

    async def abort_on_disconnect(self, request: Request) -> None:
        """Abort the request the moment its client goes away (its KV blocks are free before the next step)."""
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                self.abort()
                return

    def _pieces(self, event: TokenEvent) -> tuple[str, str | None]:
        """The text an event adds and the finish reason it brings (a stop string ends the request here)."""
        self.completion_tokens += len(event.token_ids)
        if self.text is None:
            return "", event.finish_reason if event.finish_reason in ("stop", "length") else None
        text = self.text.push(event.token_ids)
        if self.text.stopped:
            self.abort()
            return text, "stop"
        if event.finish_reason in ("stop", "length"):
            return text + self.text.finish(), event.finish_reason
        return text, None

    async def _chunks(self, first: TokenEvent) -> AsyncIterator[tuple[str, list[int], str | None]]:
        """(text, token ids, finish reason) per engine step, up to the end; an error or abort raises."""
        event = first
        while True:
            if event.finish_reason in ("error", "abort"):
                raise ApiError(500 if event.finish_reason == "error" else 503, event.error or "aborted")
            text, finish = self._pieces(event)
            yield text, event.token_ids, finish
            if finish is not None:
                return
            event = await self.next_event()

    async def whole(self, first: TokenEvent) -> dict[str, Any]:
        texts, token_ids, reasons = [], [], []
        async for text, ids, finish in self._chunks(first):
            texts.append(text)
            token_ids += ids
            reasons.append(finish)
        finish = reasons[-1]
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": "".join(texts)}
        else:
            choice["text"] = "".join(texts)
        if self.with_ids:
            choice["token_ids"] = token_ids
        response = self._envelope([choice], "chat.completion" if self.chat else "text_completion")
        response["usage"] = self._usage()
        if self.with_ids:
            response["prompt_token_ids"] = self.prompt_ids
        return response

    async def sse(self, first: TokenEvent, watcher: asyncio.Task[None]) -> AsyncIterator[str]:
        try:
            if self.chat:  # as OpenAI: the first chunk names the role, with empty content
                yield self._event([{"index": 0, "delta": {"role": "assistant", "content": ""},
                                    "logprobs": None, "finish_reason": None}])  # fmt: skip
            # vLLM's return_token_ids: the prompt's ids ride on the first chunk
            extra = {"prompt_token_ids": self.prompt_ids} if self.with_ids else {}
            async for text, ids, finish in self._chunks(first):
                if text or finish is not None or (self.with_ids and ids):
                    yield self._event([self._choice(text, ids, finish)], **extra)
                    extra = {}
            if self.body.include_usage:
                yield self._event([], usage=self._usage())
        except ApiError as error:  # mid-stream: the status is sent already, so the error is the last event
            yield f"data: {json.dumps(error.body())}\n\n"
        finally:
            watcher.cancel()
            self.abort()
        yield _SSE_DONE

    def _choice(self, text: str, token_ids: list[int], finish: str | None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish}
        if self.chat:
            choice["delta"] = {"content": text}
        else:
            choice["text"] = text
        if self.with_ids:
            choice["token_ids"] = token_ids
        return choice

    def _event(self, choices: list[dict[str, Any]], **extra: Any) -> str:
        envelope = self._envelope(choices, "chat.completion.chunk" if self.chat else "text_completion")
        return f"data: {json.dumps({**envelope, **extra})}\n\n"

    def _envelope(self, choices: list[dict[str, Any]], kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.state.model_name,
                "choices": choices}  # fmt: skip

    def _usage(self) -> dict[str, int]:
        prompt = len(self.prompt_ids)
        return {"prompt_tokens": prompt, "completion_tokens": self.completion_tokens,
                "total_tokens": prompt + self.completion_tokens}  # fmt: skip
