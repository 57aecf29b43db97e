"""The static-shape decode step: what a CUDA graph can capture and ``torch.compile`` can specialise.

The eager decode (``Engine._forward_and_sample``) builds a dozen small tensors per step from Python lists and
branches on the batch's sampling parameters, so on a GPU the host, not the device, sets the pace. Here:

- the batch is padded to a bucket size (``batch_buckets``); a padding row reads slot ``b`` (masked to one
  position) and writes only to the cache's scratch slot;
- attention reads ``k[layer, :bucket, :, :context]`` with ``context`` a bucket too (``context_buckets``): a
  length mask over a static context, at most twice the batch's longest (measured in benchmarks/README.md);
- every per-step input is one row of one preallocated ``[FIELDS, max_batch]`` int64 buffer (floats stored as
  float64 bits), filled on the host in pinned memory and copied in one non-blocking copy;
- sampling (greedy, temperature, top-k, top-p, with the same counter-based noise as ``Sampler``) runs on the
  device inside the step, so reading the sampled ids is the step's only host sync.

With ``cuda_graphs`` one graph per (batch bucket, context bucket, sampled) is captured at construction,
largest first into one shared memory pool, and replayed; with ``compile`` the step is ``torch.compile``d
(dynamic shapes: one compilation serves every bucket). Both happen before any timing and are timed.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from rosebench.engine.kv_cache import SlotKVCache
from rosebench.engine.model import GPT2
from rosebench.engine.sampler import uniform_noise

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


class StaticSlotAttention:
    """``KVAttention`` for one static decode step: row ``b`` writes its token at ``(slots[b], positions[b])``
    and attends to positions ``0 .. positions[b]`` of slot ``b`` (the batch is dense: row b is slot b)."""

    def __init__(
        self, cache: SlotKVCache, slots: torch.Tensor, positions: torch.Tensor, context: torch.Tensor
    ):
        self.cache = cache
        self.slots = slots  # [Bp]
        self.positions = positions  # [Bp]
        self.mask = (context.view(1, -1) <= positions.view(-1, 1)).view(len(slots), 1, 1, -1)  # [Bp, 1, 1, C]

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:  # k, v: [Bp, H, 1, D]
        self.cache.k[layer, self.slots, :, self.positions] = k[:, :, 0]
        self.cache.v[layer, self.slots, :, self.positions] = v[:, :, 0]

    def attend(self, layer: int, q: torch.Tensor) -> torch.Tensor:  # q: [Bp, H, 1, D]
        rows, length = self.mask.shape[0], self.mask.shape[-1]
        k = self.cache.k[layer, :rows, :, :length]  # [Bp, H, C, D], a view
        v = self.cache.v[layer, :rows, :, :length]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)


def sample_on_device(
    logits: torch.Tensor,  # [B, V] float32
    temperature: torch.Tensor,  # [B] 0 = greedy
    top_k: torch.Tensor,  # [B] in [1, V]
    top_p: torch.Tensor,  # [B] in (0, 1]
    seeds: torch.Tensor,  # [B] int64
    positions: torch.Tensor,  # [B] the noise counter: the sequence's length before this token
) -> torch.Tensor:
    """``Sampler``'s draw with no host-side branch: every row goes through the full-vocabulary sort, greedy
    rows take the argmax. Same candidates, same noise per (seed, position, token id), so the same tokens."""
    greedy = temperature == 0
    values, token_ids = logits.sort(dim=-1, descending=True)
    scaled = values / torch.where(greedy, 1.0, temperature).unsqueeze(-1)
    rank = torch.arange(values.shape[-1], device=logits.device)
    keep = rank.unsqueeze(0) < top_k.unsqueeze(-1)
    probs = torch.softmax(scaled.masked_fill(~keep, float("-inf")), dim=-1)
    keep &= (probs.cumsum(dim=-1) - probs < top_p.unsqueeze(-1)) | (top_p.unsqueeze(-1) >= 1.0)
    gumbel = -torch.log(-torch.log(uniform_noise(seeds, positions, token_ids)))
    choice = (scaled + gumbel).masked_fill(~keep, float("-inf")).argmax(dim=-1, keepdim=True)
    return torch.where(greedy, logits.argmax(dim=-1), token_ids.gather(-1, choice).squeeze(-1))


class StaticDecoder:
    """Runs dense decode batches with static shapes, eagerly, compiled, or as CUDA graph replays.

    Owns the input buffers and the graphs. Invariant: between steps, each captured graph reads the device
    input buffer's first ``bucket`` columns and writes its sampled ids to ``_out``; columns past the batch
    hold padding rows (token 0, position 0, the scratch slot), so a replay touches no sequence's K/V.
    """

    def __init__(
        self,
        model: GPT2,
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
        # Freezing lets inductor prepack the CPU linears as cpu_linear.py does for the eager model.
        if compile:  # only the batch and context sizes vary; the cache's shape is fixed
            torch._dynamo.mark_static(cache.k)
            torch._dynamo.mark_static(cache.v)
        self._logits = (
            torch.compile(self._model_logits, dynamic=True, options={"freezing": True})
            if compile
            else self._model_logits
        )
        self._graphs: dict[tuple[int, int, bool], torch.cuda.CUDAGraph] = {}
        self.compile_s: float | None = None
        self.capture_s: float | None = None
        self.graph_pool_bytes: int | None = None
        if compile:
            self.compile_s = self._time(self._run_every_bucket)
        if cuda_graphs:
            self.capture_s = self._time(self._capture)

    @property
    def max_batch(self) -> int:
        return self.batch_sizes[-1]

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

    def _keys(self) -> list[tuple[int, int, bool]]:
        """Every (batch bucket, context bucket, sampled) shape, largest first."""
        return sorted(
            ((b, c, s) for b in self.batch_sizes for c in self.context_sizes for s in (False, True)),
            reverse=True,
        )

    def _prepare_padding_only(self, bucket: int) -> None:
        self._fill_padding(self._host[:, :bucket], 0)
        self._inputs.copy_(self._host)

    @torch.inference_mode()
    def _run_every_bucket(self) -> None:
        """Compile before timing: one step per shape, on padding rows only (they touch the scratch slot)."""
        for bucket, context, sampled in self._keys():
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

    def _time(self, work) -> float:
        start = time.perf_counter()
        work()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start
