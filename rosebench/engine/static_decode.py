"""The static-shape decode step: what a CUDA graph can capture and ``torch.compile`` can specialise.

The eager decode (``Engine._forward_and_sample``) builds a dozen small tensors per step from Python lists and
branches on the batch's sampling parameters, so on a GPU the host, not the device, sets the pace. Here:

- the batch is padded to a bucket size (``batch_buckets``); a padding row reads slot ``b`` (masked to one
  position) and writes only to the cache's scratch slot;
- attention reads ``k[layer, :bucket, :, :context]`` with ``context`` a bucket too (``context_buckets``): a
  length mask over a static context, at most twice the batch's longest, where one context of
  ``max_model_len`` would read up to ``max_model_len`` / longest times more K/V in the early steps;
- every per-step input is one row of one preallocated ``[FIELDS, max_batch]`` int64 buffer (floats stored as
  float64 bits), filled on the host in pinned memory and copied in one non-blocking copy;
- sampling (greedy, temperature, top-k, top-p, with the same counter-based noise as ``Sampler``) runs on the
  device inside the step, so reading the sampled ids is the step's only host sync.

With ``cuda_graphs`` one graph per (batch bucket, context bucket, sampled) is captured at construction,
largest first into one shared memory pool, and replayed; with ``compile`` the step's model is
``torch.compile``d with dynamic shapes (two compilations: one row, and two rows or more). Both happen
before any timing and are timed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from rosebench.engine.attention import grouped_attention
from rosebench.engine.kv_cache import SlotKVCache
from rosebench.engine.models.base import CausalLM
from rosebench.engine.sampler import sample_on_device

FIELDS = ("token_ids", "positions", "slots", "top_k", "seeds", "temperature", "top_p")
_FLOAT_FIELDS = 5  # fields from here on hold float64 bits
MIN_CONTEXT_BUCKET = 64


def batch_buckets(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then steps of 8 up to 64 and of 16 beyond, ending at ``max_batch`` itself."""
    sizes = [b for b in (1, 2, 4) if b < max_batch]
    size = 8
    while size < max_batch:
        sizes.append(size)
        size += 8 if size < 64 else 16
    return [*sizes, max_batch]


def context_buckets(max_len: int) -> list[int]:
    """Powers of two from ``MIN_CONTEXT_BUCKET`` below ``max_len``, then ``max_len``: a step reads at most
    twice its longest context, and there are log2(max_len / 64) + 1 graphs per batch bucket."""
    sizes, size = [], MIN_CONTEXT_BUCKET
    while size < max_len:
        sizes.append(size)
        size *= 2
    return [*sizes, max_len]


def _bucket(sizes: list[int], n: int) -> int:
    return next(size for size in sizes if size >= n)


@torch.library.custom_op("rosebench::write_and_attend", mutates_args=("k_cache", "v_cache"))
def write_and_attend(
    q: torch.Tensor,  # [Bp, H, 1, D]
    k: torch.Tensor,  # [Bp, Hkv, 1, D] the new token's key
    v: torch.Tensor,
    k_cache: torch.Tensor,  # [L, slots, Hkv, T, D], the whole cache: written in place
    v_cache: torch.Tensor,
    layer: int,
    slots: torch.Tensor,  # [Bp]
    positions: torch.Tensor,  # [Bp]
    mask: torch.Tensor,  # [Bp, 1, 1, C]
) -> torch.Tensor:
    """One layer's cache write and attention, opaque to ``torch.compile``: traced as ordinary ops, the
    in-place write into a graph input made inductor copy the whole cache (measured with gpt2 at batch 16:
    497 ms a step against 108 ms eager); as a custom op that mutates its arguments it is written in place."""
    k_cache[layer, slots, :, positions] = k[:, :, 0]
    v_cache[layer, slots, :, positions] = v[:, :, 0]
    rows, length = mask.shape[0], mask.shape[-1]
    keys = k_cache[layer, :rows, :, :length]  # [Bp, Hkv, C, D], a view: row b is slot b
    values = v_cache[layer, :rows, :, :length]
    return grouped_attention(q, keys, values, mask)


@write_and_attend.register_fake
def _(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    layer: int,
    slots: torch.Tensor,
    positions: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:  # the output's shape, for tracing
    return torch.empty_like(q)


class StaticSlotAttention:
    """``KVAttention`` for one static decode step: row ``b`` writes its token at ``(slots[b], positions[b])``
    and attends to positions ``0 .. positions[b]`` of slot ``b`` (the batch is dense: row b is slot b).
    The write waits for ``attend``, which does both in one op."""

    def __init__(
        self, cache: SlotKVCache, slots: torch.Tensor, positions: torch.Tensor, context: torch.Tensor
    ) -> None:
        self.cache = cache
        self.slots = slots  # [Bp]
        self.positions = positions  # [Bp]
        self.mask = (context.view(1, -1) <= positions.view(-1, 1)).view(len(slots), 1, 1, -1)  # [Bp, 1, 1, C]
        self._new: tuple[torch.Tensor, torch.Tensor] | None = None

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:  # k, v: [Bp, Hkv, 1, D]
        self._new = (k, v)

    def attend(self, layer: int, q: torch.Tensor) -> torch.Tensor:  # q: [Bp, H, 1, D]
        k, v = self._new
        c = self.cache
        return write_and_attend(q, k, v, c.k, c.v, layer, self.slots, self.positions, self.mask)


class StaticDecoder:
    """Runs dense decode batches with static shapes, eagerly, compiled, or as CUDA graph replays.

    Owns the input buffers and the graphs. Invariant: between steps, each captured graph reads the device
    input buffer's first ``bucket`` columns and writes its sampled ids to ``_out``; columns past the batch
    hold padding rows (token 0, position 0, the scratch slot), so a replay touches no sequence's K/V.
    """

    def __init__(
        self,
        model: CausalLM,
        cache: SlotKVCache,
        device: torch.device,
        compile: bool = False,
        cuda_graphs: bool = False,
    ) -> None:
        if cuda_graphs and device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, not {device}")
        self.model = model
        self.cache = cache
        self.device = device
        self.batch_sizes = batch_buckets(cache.num_slots)
        self.context_sizes = context_buckets(cache.max_model_len)
        max_batch = self.batch_sizes[-1]
        # One spare column: a bucket's slice never spans its whole buffer, which would make dynamo
        # specialise on the largest size and compile it again.
        columns = max_batch + 1
        self._host = torch.zeros(len(FIELDS), columns, dtype=torch.int64, pin_memory=device.type == "cuda")
        self._inputs = torch.zeros(len(FIELDS), columns, dtype=torch.int64, device=device)
        self._context = torch.arange(cache.max_model_len + 1, device=device)
        self._out = torch.zeros(max_batch, dtype=torch.int64, device=device)
        # Only the model is compiled (dynamic shapes: one compilation for every bucket of 2 rows or
        # more, one for a single row); sampling stays eager, and inside a graph when graphs are on.
        # Prepacked CPU linears stay oneDNN's (an opaque op each); inductor fuses what lies between.
        if compile:  # only the batch and context sizes vary; the cache's shape is fixed
            torch._dynamo.mark_static(cache.k)
            torch._dynamo.mark_static(cache.v)
        self._logits = torch.compile(self._model_logits, dynamic=True) if compile else self._model_logits
        self._graphs: dict[tuple[int, int, bool], torch.cuda.CUDAGraph] = {}
        self.compile_s: float | None = None
        self.capture_s: float | None = None
        self.graph_pool_bytes: int | None = None
        if compile:
            self.compile_s = self._time(self._run_every_bucket)
        if cuda_graphs:
            self.capture_s = self._time(self._capture)

    @torch.inference_mode()
    def run(
        self,
        token_ids: list[int],
        positions: list[int],
        top_k: list[int],
        seeds: list[int],
        temperature: list[float],
        top_p: list[float],
    ) -> list[int]:
        """One token per row; row ``b`` is the sequence in slot ``b``, feeding ``token_ids[b]`` at
        ``positions[b]``. ``top_k`` is already clamped to [1, V] (V = off)."""
        batch = len(token_ids)
        bucket = _bucket(self.batch_sizes, batch)
        context = _bucket(self.context_sizes, max(positions) + 1)
        sampled = any(t > 0 for t in temperature)
        host = self._host[:, :bucket]
        self._fill_padding(host, batch)
        host[0, :batch] = torch.tensor(token_ids)
        host[1, :batch] = torch.tensor(positions)
        host[2, :batch] = torch.arange(batch)
        host[3, :batch] = torch.tensor(top_k)
        host[4, :batch] = torch.tensor(seeds)
        floats = host[_FLOAT_FIELDS:].view(torch.float64)
        floats[0, :batch] = torch.tensor(temperature, dtype=torch.float64)
        floats[1, :batch] = torch.tensor(top_p, dtype=torch.float64)
        self._inputs.copy_(self._host, non_blocking=True)  # whole buffers: one contiguous pinned copy
        graph = self._graphs.get((bucket, context, sampled))
        if graph is not None:
            graph.replay()
        else:
            self._out[:bucket] = self._forward(self._inputs[:, :bucket], self._context[:context], sampled)
        return self._out[:batch].tolist()  # the step's one host-device sync

    def _fill_padding(self, host: torch.Tensor, batch: int) -> None:
        pad = host[:, batch:]
        pad.zero_()
        pad[2] = self.cache.scratch_slot
        pad[3] = 1  # top_k
        pad[_FLOAT_FIELDS:].view(torch.float64)[1] = 1.0  # top_p

    def _forward(self, inputs: torch.Tensor, context: torch.Tensor, sampled: bool) -> torch.Tensor:
        """The step on device tensors only: ``inputs`` ``[FIELDS, Bp]``, ``context`` ``arange(C)``."""
        token_ids, positions, slots, top_k, seeds = inputs[:_FLOAT_FIELDS]
        logits = self._logits(token_ids, positions, slots, context)  # [Bp, V] float32
        if not sampled:
            return logits.argmax(dim=-1)
        temperature, top_p = inputs[_FLOAT_FIELDS:].view(torch.float64).float()
        return sample_on_device(logits, temperature, top_k, top_p, seeds, positions + 1)

    def _model_logits(
        self, token_ids: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, context: torch.Tensor
    ) -> torch.Tensor:
        kv = StaticSlotAttention(self.cache, slots, positions, context)
        hidden = self.model(token_ids.unsqueeze(1), positions.unsqueeze(1), kv)  # [Bp, 1, n_embd]
        return self.model.logits(hidden[:, 0])

    def _keys(self, sampling: tuple[bool, ...] = (False, True)) -> list[tuple[int, int, bool]]:
        """Every (batch bucket, context bucket, sampled) shape, largest first."""
        return sorted(
            ((b, c, s) for b in self.batch_sizes for c in self.context_sizes for s in sampling),
            reverse=True,
        )

    def _prepare_padding_only(self, bucket: int) -> None:
        self._fill_padding(self._host[:, :bucket], 0)
        self._inputs.copy_(self._host)

    @torch.inference_mode()
    def _run_every_bucket(self) -> None:
        """Compile before timing: one step per shape, on padding rows only (they touch the scratch slot).
        Sampling is not compiled, so greedy steps cover every compiled shape."""
        for bucket, context, sampled in self._keys(sampling=(False,)):
            self._prepare_padding_only(bucket)
            self._out[:bucket] = self._forward(self._inputs[:, :bucket], self._context[:context], sampled)

    @torch.inference_mode()
    def _capture(self) -> None:
        """One graph per shape, largest first, all in one memory pool (as nano-vllm and vLLM do)."""
        before = torch.cuda.memory_reserved(self.device)
        pool = None
        for bucket, context, sampled in self._keys():
            self._prepare_padding_only(bucket)
            inputs, window = self._inputs[:, :bucket], self._context[:context]
            self._out[:bucket] = self._forward(inputs, window, sampled)  # warm-up: lazy inits stay out of it
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self._out[:bucket] = self._forward(inputs, window, sampled)
            pool = graph.pool() if pool is None else pool
            self._graphs[(bucket, context, sampled)] = graph
        torch.cuda.synchronize(self.device)
        self.graph_pool_bytes = torch.cuda.memory_reserved(self.device) - before

    def _time(self, work: Callable[[], None]) -> float:
        start = time.perf_counter()
        work()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start
