"""The OpenAI API as vLLM serves it: request bodies (checked by pydantic, strictly typed), error bodies,
and the chat template. Responses are plain dicts built in ``app.py``.

Unknown fields are ignored, as vLLM and OpenAI do; known OpenAI options this engine does not implement
(``logprobs``, ``echo``, ``n`` > 1, penalties, ``logit_bias``) are refused by name rather than ignored, so
that nobody benchmarks a feature that did not run.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SEED_LIMIT = 2**32  # the engine's counter-based sampler takes 32-bit seeds


class ApiError(Exception):
    """An error answered with OpenAI's body: ``{"error": {"message", "type", "param", "code"}}``."""

    TYPES = {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "not_found_error",
        500: "server_error",
        503: "service_unavailable_error",
    }

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param

    def body(self) -> dict[str, Any]:
        error_type = self.TYPES.get(self.status, "server_error")
        return {
            "error": {"message": self.message, "type": error_type, "param": self.param, "code": self.status}
        }


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool = False


class GenerationRequest(BaseModel):
    """The options ``/v1/completions`` and ``/v1/chat/completions`` share. ``None`` means the server's
    ``sampling`` default."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)  # -1 and 0 mean off (vLLM accepts both)
    seed: int | None = Field(None, ge=0, lt=SEED_LIMIT)
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    # vLLM's extensions that benchmark clients send
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)
    return_token_ids: bool = (
        False  # each choice carries ``token_ids`` (and the response ``prompt_token_ids``)
    )
    # OpenAI options with no implementation here: accepted only at their "off" values
    logprobs: Any = None
    echo: bool = False
    best_of: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None

    @model_validator(mode="after")
    def _refuse_unimplemented(self) -> GenerationRequest:
        unimplemented = {
            "n": self.n != 1,
            "best_of": self.best_of not in (None, 1),
            "logprobs": self.logprobs not in (None, False, 0),
            "echo": self.echo,
            "presence_penalty": self.presence_penalty != 0,
            "frequency_penalty": self.frequency_penalty != 0,
            "logit_bias": bool(self.logit_bias),
        }
        for name, asked in unimplemented.items():
            if asked:
                raise ApiError(400, f"{name}: not supported by this server (leave it out)", name)
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ApiError(400, f"min_tokens={self.min_tokens}: must be <= max_tokens={self.max_tokens}",
                           "min_tokens")  # fmt: skip
        return self

    @property
    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(GenerationRequest):
    # Text, or token ids; a batch of one is accepted as what clients that always send lists mean.
    prompt: str | list[int] | list[str] | list[list[int]]

    @property
    def single_prompt(self) -> str | list[int]:
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
            if len(prompt) != 1:
                raise ApiError(400, f"prompt: a batch of {len(prompt)} prompts; send one prompt a request",
                               "prompt")  # fmt: skip
            return prompt[0]
        return prompt


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # OpenAI's newer name for max_tokens

    @property
    def max_tokens_asked(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


def chat_prompt(messages: list[ChatMessage]) -> str:
    """GPT-2 has no chat template, so messages are joined plainly: ``"{role}: {text}\\n"`` each, then
    ``"assistant:"`` for the model to continue (README, "Serving")."""
    return "".join(f"{m.role}: {m.text}\n" for m in messages) + "assistant:"


def validation_error(errors: list[dict[str, Any]]) -> ApiError:
    """The first of pydantic's errors as OpenAI's 400, naming the field as a client writes it."""
    if not errors:
        return ApiError(400, "invalid request body")
    first = errors[0]
    if first.get("type") == "json_invalid":
        return ApiError(400, f"the body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}")
    param = _param(first.get("loc", ()))
    if not param:  # the body itself: not an object
        return ApiError(400, f"the body must be a JSON object ({first['msg']})")
    given = first.get("input")
    shown = "" if isinstance(given, dict | list) or given is None else f" (got {json.dumps(given)[:60]})"
    return ApiError(400, f"{param}: {first['msg']}{shown}", param)


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "list[int]", "list[str]", "list[list[int]]",
              "list[TextPart]", "StreamOptions", "TextPart", "function-after", "literal['text']"}  # fmt: skip


def _param(loc: tuple[Any, ...]) -> str:
    """``("prompt", "list[int]", 3)`` -> ``prompt.3``: the fields, without pydantic's union tags."""
    parts = [str(p) for p in loc if p not in _TYPE_TAGS and not str(p).startswith("literal[")]
    return ".".join(parts)
