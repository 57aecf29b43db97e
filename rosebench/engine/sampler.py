"""Batched sampling with per-request temperature, top-k, top-p and seed, in a handful of tensor ops.

Randomness is counter-based: the Gumbel noise for token ``t`` of a request is a hash of (request seed,
position, t). A request's samples therefore depend only on its own seed and logits, never on which
other requests share the batch, and a preempted request that is recomputed draws the same tokens.
"""

from __future__ import annotations

import torch
from torch.profiler import record_function

from rosebench.engine.sequence import SamplingParams

_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    # Multipliers below 2**27 keep every product of 32-bit values inside int64 (no signed overflow).
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK32
    return (x >> 16) ^ x


def uniform_noise(seeds: torch.Tensor, positions: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Uniform (0, 1) values, one per ``token_ids`` entry, determined by (seed, position, token id)."""
    base = _mix32((seeds & 0x7FFFFFFF) ^ _mix32(positions & _MASK32))
    bits = _mix32((base.unsqueeze(-1) + token_ids * 0x27D4EB2F) & _MASK32)
    return ((bits >> 8).float() + 0.5) / float(1 << 24)


def candidate_count(params: SamplingParams, vocab: int) -> int:
    """How many top candidates ``params`` samples from: its top-k, or the whole vocabulary when off."""
    return params.top_k if 0 < params.top_k < vocab else vocab


def gumbel_choice(
    values: torch.Tensor,  # [B, K] candidate logits, descending
    token_ids: torch.Tensor,  # [B, K] their token ids
    temperature: torch.Tensor,  # [B] > 0
    top_k: torch.Tensor,  # [B] candidates kept by rank
    top_p: torch.Tensor,  # [B] in (0, 1]
    seeds: torch.Tensor,  # [B] int64
    positions: torch.Tensor,  # [B] int64, the noise counter: the sequence's length before this token
    top_p_active: bool = True,  # False: every top_p is 1, and the nucleus need not be computed
) -> torch.Tensor:
    """The drawn token of each row: temperature, top-k, top-p, then Gumbel-max with counter-based noise.
    The one draw both samplers make, so the eager and the static step pick the same tokens."""
    scaled = values / temperature.unsqueeze(-1)
    rank = torch.arange(values.shape[-1], device=values.device)
    keep = rank.unsqueeze(0) < top_k.unsqueeze(-1)
    if top_p_active:
        probs = torch.softmax(scaled.masked_fill(~keep, float("-inf")), dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        # The first candidate always stays; top_p = 1 keeps all, whatever float rounding the sum has.
        keep &= (mass_before < top_p.unsqueeze(-1)) | (top_p.unsqueeze(-1) >= 1.0)
    gumbel = -torch.log(-torch.log(uniform_noise(seeds, positions, token_ids)))
    choice = (scaled + gumbel).masked_fill(~keep, float("-inf")).argmax(dim=-1, keepdim=True)
    return token_ids.gather(-1, choice).squeeze(-1)


def sample_on_device(
    logits: torch.Tensor,  # [B, V] float32
    temperature: torch.Tensor,  # [B] 0 = greedy
    top_k: torch.Tensor,  # [B] in [1, V]
    top_p: torch.Tensor,  # [B] in (0, 1]
    seeds: torch.Tensor,  # [B] int64
    positions: torch.Tensor,  # [B] int64
) -> torch.Tensor:
    """``Sampler``'s draw with no host-side branch, for a graph-captured step: every row goes through the
    full-vocabulary sort, greedy rows take the argmax."""
    greedy = temperature == 0
    values, token_ids = logits.sort(dim=-1, descending=True)
    drawn = gumbel_choice(
        values, token_ids, torch.where(greedy, 1.0, temperature), top_k, top_p, seeds, positions
    )
    return torch.where(greedy, logits.argmax(dim=-1), drawn)


class Sampler:
    def __call__(
        self,
        logits: torch.Tensor,
        params: list[SamplingParams],
        seeds: list[int],
        positions: list[int],
    ) -> torch.Tensor:
        """One token id per row of ``logits`` ``[B, V]`` (float32)."""
        with record_function("rosebench.sampler.sample"):
            greedy_ids = logits.argmax(dim=-1)
            sampled_rows = [i for i, p in enumerate(params) if not p.greedy]
            if not sampled_rows:
                return greedy_ids
            rows = torch.tensor(sampled_rows, device=logits.device)
            picked = self._sample(
                logits.index_select(0, rows),
                [params[i] for i in sampled_rows],
                [seeds[i] for i in sampled_rows],
                [positions[i] for i in sampled_rows],
            )
            return greedy_ids.index_copy(0, rows, picked)

    def _sample(
        self, logits: torch.Tensor, params: list[SamplingParams], seeds: list[int], positions: list[int]
    ) -> torch.Tensor:
        device, vocab = logits.device, logits.shape[-1]
        top_k = [candidate_count(p, vocab) for p in params]
        # Candidates in descending order: top-k of the largest k asked for, a full sort only when needed.
        if max(top_k) < vocab:
            values, token_ids = logits.topk(max(top_k), dim=-1)
        else:
            values, token_ids = logits.sort(dim=-1, descending=True)
        return gumbel_choice(
            values,
            token_ids,
            torch.tensor([p.temperature for p in params], device=device),
            torch.tensor(top_k, device=device),
            torch.tensor([p.top_p for p in params], device=device),
            torch.tensor(seeds, device=device, dtype=torch.int64),
            torch.tensor(positions, device=device, dtype=torch.int64),
            top_p_active=any(p.top_p < 1.0 for p in params),
        )
