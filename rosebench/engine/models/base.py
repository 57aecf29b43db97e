"""The one interface between the engine and a model family: what a layer needs from the KV cache
(``KVAttention``), and what the engine calls on a model (``CausalLM``). The facts the engine needs of a
model (K/V heads, positions, vocabulary, EOS ids) are its ``ModelConfig``.

A family is one file beside this one: its ``nn.Module``, and how a Hugging Face folder of it maps onto
that module (``hf_config``, ``hf_state``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from rosebench.engine.config import ModelConfig


class WeightsError(ValueError):
    """Weights cannot be loaded: the message names the file and the key, in one line."""


def check_state(state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], source: Path) -> None:
    """Every key of ``state`` is one of ``expected``'s with its shape, and none is missing: else a
    ``WeightsError`` naming the first wrong key (a checkpoint's names, or a family's own before renaming)."""
    for key, tensor in state.items():
        if key not in expected:
            raise WeightsError(f"{source}: unknown key {key!r}")
        if tuple(tensor.shape) != expected[key]:
            raise WeightsError(
                f"{source}: key {key!r} has shape {tuple(tensor.shape)}, the model expects {expected[key]}"
            )
    missing = sorted(set(expected) - set(state))
    if missing:
        raise WeightsError(
            f"{source}: missing key {missing[0]!r}"
            + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
        )


class KVAttention(Protocol):
    """Built by the engine once per step; owns where K/V live and how they are read."""

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store the step's new keys and values, ``[B, n_kv_head, T, head_dim]``."""
        ...

    def attend(self, layer: int, q: torch.Tensor) -> torch.Tensor:
        """Causal attention of ``q`` ``[B, n_head, T, head_dim]`` over the row's cached K/V (its own step's
        included); ``n_head`` may be a multiple of ``n_kv_head`` (query head h reads K/V head
        ``h // (n_head / n_kv_head)``). Returns ``[B, n_head, T, head_dim]``."""
        ...


class CausalLM(Protocol):
    """A decoder-only model as the engine drives it. It carries no instrumentation: the engine labels its
    regions, so that a compiled or graph-captured step holds nothing but the model's own ops."""

    config: ModelConfig
    token_embedding: nn.Embedding
    # The output head; None = tied to ``token_embedding``. Prepacking sets it (cpu_linear.prepack).
    lm_head: nn.Module | None

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, kv: KVAttention) -> torch.Tensor:
        """``input_ids`` and ``positions`` ``[B, T]`` -> hidden states after the final norm,
        ``[B, T, n_embd]``."""
        ...

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[N, n_embd]`` -> float32 logits ``[N, vocab_size]``, only for the rows that are sampled."""
        ...

    def init_weights(self, generator: torch.Generator) -> None:
        """The family's own seeded random init (a preset without weights)."""
        ...


def tied_or_own_head(model: CausalLM, hidden: torch.Tensor) -> torch.Tensor:
    """The output head as float32 logits: the model's own (or prepacked) head, else the tied embedding."""
    if model.lm_head is not None:
        return model.lm_head(hidden).float()
    return nn.functional.linear(hidden, model.token_embedding.weight).float()
