"""KV storage: one preallocated K and V tensor, ``[n_layer, num_slots, n_kv_head, max_model_len, head_dim]``
(plus a scratch slot when a static decode step pads its batch). It stores K/V heads, not query heads: with
grouped-query attention (``n_head / n_kv_head`` query heads per K/V head) it is that many times smaller.

Why per-sequence contiguous slots rather than a paged pool read through a gather: decode attention is
the hot loop, and on the CPUs this project runs on a per-layer gather of every running sequence's
blocks costs more than the attention itself (measured for issue 2: ~166 tok/s with a token-level
``index_select`` into a preallocated buffer versus ~275 tok/s reading contiguous slots, batch 64,
context ~530). With slots, a dense batch reads ``k[layer, :B, :, :L]`` as a view, with no copy.

This class only stores and moves content; which slot holds which sequence, and where each block's
content is, belongs to ``placement.SlotPlacement``.
"""

from __future__ import annotations

import math

import torch
from torch.profiler import record_function

from rosebench.engine.config import ModelConfig


class SlotKVCache:
    def __init__(
        self,
        cfg: ModelConfig,
        num_slots: int,
        max_model_len: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device,
        scratch_slot: bool = False,
    ) -> None:
        self.num_slots = num_slots
        self.max_model_len = max_model_len
        self.block_size = block_size
        # One more slot that no sequence owns: the padding rows of a static decode step write there. And
        # one spare position, so that every context a static step reads is a strict prefix: its view has
        # the same strides for every context size, and a compiled step is not compiled again for the longest.
        self.scratch_slot = num_slots if scratch_slot else None
        shape = self.shape(cfg, num_slots, max_model_len, scratch_slot)
        # Zeros, not empty: attention reads (and masks) positions past a row's length, and 0 * NaN
        # from uninitialised memory would poison the masked softmax product.
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # [L, slots, Hkv, max_model_len, D]
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    @staticmethod
    def shape(cfg: ModelConfig, num_slots: int, max_model_len: int, scratch_slot: bool) -> tuple[int, ...]:
        """The shape of K (and of V): ``[n_layer, slots, n_kv_head, max_model_len, head_dim]``, one slot and
        one position more with a scratch slot."""
        extra = int(scratch_slot)
        return (cfg.n_layer, num_slots + extra, cfg.num_kv_heads, max_model_len + extra, cfg.head_dim)

    @staticmethod
    def nbytes(
        cfg: ModelConfig, dtype: torch.dtype, num_slots: int, max_model_len: int, scratch_slot: bool
    ) -> int:
        """What K and V of that shape take, before they are allocated."""
        elements = 2 * math.prod(SlotKVCache.shape(cfg, num_slots, max_model_len, scratch_slot))
        return elements * torch.empty((), dtype=dtype).element_size()

    @staticmethod
    def bytes_per_token(cfg: ModelConfig, dtype: torch.dtype) -> int:
        """K and V of one token in every layer: ``2 * n_layer * n_kv_head * head_dim`` elements."""
        elements = 2 * cfg.n_layer * cfg.num_kv_heads * cfg.head_dim
        return elements * torch.empty((), dtype=dtype).element_size()

    def swap_blocks(self, a: int, b: int, num_blocks: int) -> None:
        """Exchange the first ``num_blocks`` blocks of two slots, all layers."""
        with record_function("rosebench.kv.swap_blocks"):
            end = num_blocks * self.block_size
            for cache in (self.k, self.v):
                held = cache[:, a, :, :end].clone()
                cache[:, a, :, :end] = cache[:, b, :, :end]
                cache[:, b, :, :end] = held

    def copy_blocks(self, src_slot: int, dst_slot: int, indices: list[int]) -> None:
        """Copy whole blocks between slots at the same indices (a prefix hit), all layers at once."""
        with record_function("rosebench.kv.copy_blocks"):
            for start, stop in _runs(indices):
                lo, hi = start * self.block_size, stop * self.block_size
                self.k[:, dst_slot, :, lo:hi] = self.k[:, src_slot, :, lo:hi]
                self.v[:, dst_slot, :, lo:hi] = self.v[:, src_slot, :, lo:hi]


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs of sorted block indices as half-open ranges, so each run is one copy."""
    runs: list[tuple[int, int]] = []
    for index in sorted(indices):
        if runs and runs[-1][1] == index:
            runs[-1] = (runs[-1][0], index + 1)
        else:
            runs.append((index, index + 1))
    return runs
