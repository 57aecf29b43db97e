"""How one engine step writes and reads K/V: the fast slot path and the ``naive`` baseline.

Both see the same batch description (``StepBatch``): row ``b`` computes ``num_new[b]`` tokens at
positions ``start[b]...`` and attends to keys ``0 .. start[b] + t`` of its own slot. The cache holds K/V
heads; with grouped-query attention several query heads read each (``grouped_attention``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.profiler import record_function

from rosebench.engine.kv_cache import SlotKVCache
from rosebench.engine.models.base import KVAttention


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked attention of ``q`` ``[B, H, T, D]`` over ``k``, ``v`` ``[B, Hkv, C, D]`` (``mask``
    ``[B, 1, T, C]``), query head ``h`` reading K/V head ``h // (H / Hkv)``; returns ``[B, H, T, D]``.

    A group's query heads are folded into the query rows (``[B, Hkv, G * T, D]``), so each K/V head is read
    once for its whole group and K/V are never repeated in memory (SDPA's ``enable_gqa`` would repeat them
    on the CPU kernels); only the small query and boolean mask are reshaped."""
    batch, heads, length, dim = q.shape
    kv_heads = k.shape[1]
    if heads == kv_heads:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    group = heads // kv_heads
    folded_q = q.reshape(batch, kv_heads, group * length, dim)  # row g * T + t is head j * G + g, token t
    folded_mask = (
        mask.unsqueeze(2).expand(-1, -1, group, -1, -1).reshape(mask.shape[0], 1, group * length, -1)
    )
    out = F.scaled_dot_product_attention(folded_q, k, v, attn_mask=folded_mask)
    return out.view(batch, heads, length, dim)


@dataclass
class StepBatch:
    slots: torch.Tensor  # [B] slot of each row
    dense: bool  # rows are slots 0..B-1 in order, so K/V are read as a view
    max_context: int  # longest start + num_new in the batch
    mask: torch.Tensor  # [B, 1, T, max_context] True where a query may attend
    write_rows: torch.Tensor  # [N] batch row of each new token
    write_cols: torch.Tensor  # [N] its column in the padded [B, T] input
    write_slots: torch.Tensor  # [N] its slot
    write_positions: torch.Tensor  # [N] its position in the slot
    # Host-side copies for the naive path, which loops over sequences like the original engine did.
    slot_list: list[int]
    context_lens: list[int]

    @classmethod
    def build(
        cls, slots: list[int], starts: list[int], num_new: list[int], device: torch.device
    ) -> StepBatch:
        batch, width = len(slots), max(num_new)
        context_lens = [s + n for s, n in zip(starts, num_new)]
        max_context = max(context_lens)
        rows = [b for b in range(batch) for _ in range(num_new[b])]
        cols = [t for b in range(batch) for t in range(num_new[b])]
        start_t = torch.tensor(starts, device=device)
        query_pos = start_t.view(batch, 1, 1) + torch.arange(width, device=device).view(1, width, 1)
        mask = torch.arange(max_context, device=device).view(1, 1, max_context) <= query_pos
        return cls(
            slots=torch.tensor(slots, device=device),
            dense=slots == list(range(batch)),
            max_context=max_context,
            mask=mask.unsqueeze(1),
            write_rows=torch.tensor(rows, device=device),
            write_cols=torch.tensor(cols, device=device),
            write_slots=torch.tensor([slots[b] for b in rows], device=device),
            write_positions=torch.tensor([starts[b] + t for b, t in zip(rows, cols)], device=device),
            slot_list=slots,
            context_lens=context_lens,
        )


class SlotAttention:
    """Default path: scatter new K/V into the slots, read the batch's slots as one tensor."""

    def __init__(self, cache: SlotKVCache, batch: StepBatch) -> None:
        self.cache = cache
        self.batch = batch
        self.decode = batch.write_rows.numel() == batch.slots.numel() and batch.mask.shape[2] == 1

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        b = self.batch
        if self.decode:  # one token per row: skip the row/column gather
            new_k, new_v = k[:, :, 0], v[:, :, 0]
        else:
            new_k = k[b.write_rows, :, b.write_cols]
            new_v = v[b.write_rows, :, b.write_cols]
        self.cache.k[layer, b.write_slots, :, b.write_positions] = new_k
        self.cache.v[layer, b.write_slots, :, b.write_positions] = new_v

    def keys_values(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        b, length = self.batch, self.batch.max_context
        k, v = self.cache.k[layer, :, :, :length], self.cache.v[layer, :, :, :length]
        if b.dense:
            rows = b.slots.numel()
            return k[:rows], v[:rows]
        return k.index_select(0, b.slots), v.index_select(0, b.slots)

    def attend(self, layer: int, q: torch.Tensor) -> torch.Tensor:
        k, v = self.keys_values(layer)  # [B, Hkv, C, D]
        return grouped_attention(q, k, v, self.batch.mask)


class NaiveAttention(SlotAttention):
    """roseinfer's way, kept as the baseline: per sequence and per layer, gather its blocks with
    ``torch.cat``, zero-pad to the batch's longest context, then ``torch.cat`` the batch."""

    def keys_values(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        b, size = self.batch, self.cache.block_size
        keys, values = [], []
        for slot, length in zip(b.slot_list, b.context_lens):
            num_blocks = -(-length // size)
            k = torch.cat(
                [self.cache.k[layer, slot, :, i * size : (i + 1) * size] for i in range(num_blocks)], 1
            )
            v = torch.cat(
                [self.cache.v[layer, slot, :, i * size : (i + 1) * size] for i in range(num_blocks)], 1
            )
            pad = (0, 0, 0, b.max_context - length)
            keys.append(F.pad(k[:, :length], pad).unsqueeze(0))
            values.append(F.pad(v[:, :length], pad).unsqueeze(0))
        return torch.cat(keys), torch.cat(values)


class LabelledAttention:
    """Wraps a ``KVAttention`` so that each layer's cache write and attention show as profiler regions:
    ``profile.detail=layer``. Not the default: the labels cost host time on every layer."""

    def __init__(self, inner: KVAttention) -> None:
        self.inner = inner

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        with record_function("rosebench.attention.kv_write"):
            self.inner.write(layer, k, v)

    def attend(self, layer: int, q: torch.Tensor) -> torch.Tensor:
        with record_function("rosebench.attention.attend"):
            return self.inner.attend(layer, q)


ATTENTION_CLASSES = {"slot": SlotAttention, "naive": NaiveAttention}
