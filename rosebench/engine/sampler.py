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
        temperature = torch.tensor([p.temperature for p in params], device=device).unsqueeze(-1)
        top_p = torch.tensor([p.top_p for p in params], device=device).unsqueeze(-1)
        top_k = torch.tensor([p.top_k if 0 < p.top_k < vocab else vocab for p in params], device=device)
        # Candidates in descending order: top-k of the largest k asked for, a full sort only when needed.
        k_max = int(max(p.top_k if 0 < p.top_k < vocab else vocab for p in params))
        if k_max < vocab:
            values, token_ids = logits.topk(k_max, dim=-1)
        else:
            values, token_ids = logits.sort(dim=-1, descending=True)
        scaled = values / temperature
        rank = torch.arange(values.shape[-1], device=device)
        keep = rank.unsqueeze(0) < top_k.unsqueeze(-1)
        if any(p.top_p < 1.0 for p in params):
            probs = torch.softmax(scaled.masked_fill(~keep, float("-inf")), dim=-1)
            mass_before = probs.cumsum(dim=-1) - probs
            # The first candidate always stays; top_p = 1 keeps all, whatever float rounding the sum has.
            keep &= (mass_before < top_p) | (top_p >= 1.0)
        noise = uniform_noise(
            torch.tensor(seeds, device=device, dtype=torch.int64),
            torch.tensor(positions, device=device, dtype=torch.int64),
            token_ids,
        )
        gumbel = -torch.log(-torch.log(noise))
        choice = (scaled + gumbel).masked_fill(~keep, float("-inf")).argmax(dim=-1, keepdim=True)
        return token_ids.gather(-1, choice).squeeze(-1)
