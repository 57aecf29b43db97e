"""The engine: admits sequences into the KV cache, prefills them, and decodes the running batch.

Its API is all a scheduler needs: ``check_request``, ``admit``, ``prefill``, ``can_decode``,
``decode``, ``preempt``, ``free`` and the KV statistics. It knows nothing of Hydra, MLflow or runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil
import torch
from torch.profiler import record_function

from rosebench.engine.attention import ATTENTION_CLASSES, StepBatch
from rosebench.engine.block_manager import BlockManager
from rosebench.engine.config import EngineConfig, resolve_device, resolve_dtype
from rosebench.engine.cpu_linear import prepack, prepack_supported
from rosebench.engine.kv_cache import SlotKVCache
from rosebench.engine.sampler import Sampler
from rosebench.engine.sequence import Sequence, SequenceStatus
from rosebench.engine.weights import build_model

EOS_TOKEN_ID = 50256


class RequestTooLongError(ValueError):
    pass


@dataclass
class KVStats:
    capacity_blocks: int
    used_blocks: int
    peak_blocks: int
    prefix_queries: int
    prefix_hits: int


def check_config(config: EngineConfig) -> None:
    """The engine's range checks, before anything is built; each message names the key."""
    if config.attention not in ATTENTION_CLASSES:
        raise ValueError(
            f"engine.attention={config.attention}: allowed values are {', '.join(ATTENTION_CLASSES)}"
        )
    resolve_device(config.device)
    resolve_dtype(config.dtype)
    kv = config.kv_cache
    for key, value in (
        ("max_num_seqs", config.max_num_seqs),
        ("max_model_len", config.max_model_len),
        ("kv_cache.block_size", kv.block_size),
        ("kv_cache.num_blocks", kv.num_blocks),
    ):
        if value is not None and value < 1:
            raise ValueError(f"engine.{key}={value}: must be >= 1")
    if kv.memory_fraction is not None and not 0 < kv.memory_fraction <= 1:
        raise ValueError(f"engine.kv_cache.memory_fraction={kv.memory_fraction}: must be in (0, 1]")


class Engine:
    def __init__(self, config: EngineConfig, eos_token_id: int = EOS_TOKEN_ID) -> None:
        check_config(config)
        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype)
        self.eos_token_id = eos_token_id
        model = build_model(config.model, config.weights, config.seed)
        self.model = model.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        if config.prepack and prepack_supported(self.device, self.dtype):
            prepack(self.model, batch_hint=config.max_num_seqs)
        self.model_config = model.config
        n_positions = self.model_config.n_positions
        if config.max_model_len is not None and config.max_model_len > n_positions:
            raise ValueError(f"engine.max_model_len={config.max_model_len}: must be in [1, {n_positions}]")
        self.max_model_len = config.max_model_len or n_positions
        self.block_size = config.kv_cache.block_size
        blocks_per_slot = -(-self.max_model_len // self.block_size)
        num_slots = self._num_slots(blocks_per_slot)
        num_blocks = config.kv_cache.num_blocks
        if num_blocks is None:
            num_blocks = num_slots * blocks_per_slot
        elif num_blocks > num_slots * blocks_per_slot:
            raise ValueError(
                f"engine.kv_cache.num_blocks={num_blocks}: must be in [1, {num_slots * blocks_per_slot}] "
                f"(max_num_seqs={num_slots} slots of {blocks_per_slot} blocks)"
            )
        self.cache = SlotKVCache(
            self.model_config,
            num_slots,
            blocks_per_slot * self.block_size,
            self.block_size,
            self.dtype,
            self.device,
        )
        self.blocks = BlockManager(num_blocks, self.block_size, config.prefix_cache)
        self.sampler = Sampler()
        self._attention = ATTENTION_CLASSES[config.attention]
        self._running: dict[int, Sequence] = {}

    # -- capacity ------------------------------------------------------------------------------------
    @property
    def max_num_seqs(self) -> int:
        return self.cache.num_slots

    @property
    def prefix_cache(self) -> bool:
        return self.blocks.enable_prefix_cache

    @property
    def num_running(self) -> int:
        """Sequences holding a slot (after a run: 0, or the KV cache leaked)."""
        return len(self._running)

    def check_request(self, num_prompt_tokens: int, max_new_tokens: int) -> None:
        """Raise before a run if a request could never complete, rather than halfway through it."""
        total = num_prompt_tokens + max_new_tokens
        if total > self.max_model_len:
            raise RequestTooLongError(
                f"{num_prompt_tokens} prompt tokens + max_new_tokens={max_new_tokens} = {total} exceeds the "
                f"model context of {self.max_model_len} positions "
                f"(allowed: prompt + max_new_tokens <= {self.max_model_len})"
            )
        needed = self.blocks.blocks_for(total)
        if needed > self.blocks.num_blocks:
            raise RequestTooLongError(
                f"{num_prompt_tokens} prompt + {max_new_tokens} new tokens need {needed} KV blocks, "
                f"the whole cache has {self.blocks.num_blocks}"
            )

    def kv_stats(self) -> KVStats:
        b = self.blocks
        return KVStats(b.num_blocks, b.num_used, b.peak_used, b.prefix_queries, b.prefix_hits)

    def reset_stats(self) -> None:
        self.blocks.peak_used = self.blocks.num_used
        self.blocks.prefix_queries = self.blocks.prefix_hits = 0

    # -- admission -----------------------------------------------------------------------------------
    def admit(self, seq: Sequence) -> bool:
        """Give ``seq`` a slot and blocks (reusing cached prefix blocks); False when they are not free."""
        if self.cache.num_free_slots == 0:
            return False
        token_ids = seq.token_ids
        hits = self.blocks.cached_prefix(token_ids)
        if len(hits) * self.block_size >= len(token_ids):
            hits = hits[:-1]  # the last token is always computed: its logits give the next token
        if not self.blocks.can_allocate(len(token_ids), hits):
            return False
        with record_function("rosebench.engine.admit"):
            slot = self._pick_slot(hits)
            self._claim_slot(slot, keep=dict(enumerate(hits)))
            table = self.blocks.allocate(len(token_ids), hits)
            self._copy_in(slot, hits)
            for index, block_id in enumerate(table):
                self.cache.place(block_id, slot, index)
        cached_tokens = len(hits) * self.block_size
        if not seq.output_token_ids:  # hit rate counts prompts, not recomputation after preemption
            self.blocks.record_lookup(len(token_ids), cached_tokens)
            seq.num_cached_tokens = cached_tokens
        seq.slot, seq.block_table, seq.num_computed_tokens = slot, table, cached_tokens
        seq.status = SequenceStatus.RUNNING
        self.cache.owner[slot] = seq.seq_id
        self._running[seq.seq_id] = seq
        return True

    def can_decode(self, seqs: list[Sequence]) -> bool:
        """Whether one more token for each of ``seqs`` fits in the free blocks."""
        needed = sum(1 for s in seqs if self.blocks.blocks_for(s.num_tokens) > len(s.block_table))
        return needed <= self.blocks.num_free

    def free(self, seq: Sequence) -> None:
        if seq.slot is None:  # already freed (finished or preempted)
            return
        self.blocks.free(seq.block_table)
        self.cache.owner[seq.slot] = None
        self._running.pop(seq.seq_id, None)
        seq.slot = None

    def preempt(self, seq: Sequence) -> None:
        """Release ``seq``'s KV; its next admission recomputes prompt and output so far."""
        self.free(seq)
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING

    # -- compute -------------------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, seqs: list[Sequence]) -> list[int]:
        """Compute every admitted sequence's uncached tokens and sample its next token."""
        with record_function("rosebench.engine.prefill"):
            starts = [s.num_computed_tokens for s in seqs]
            num_new = [s.num_tokens - start for s, start in zip(seqs, starts)]
            width = max(num_new)
            ids = [s.token_ids[start:] + [0] * (width - n) for s, start, n in zip(seqs, starts, num_new)]
            return self._forward_and_sample(seqs, ids, starts, num_new)

    @torch.inference_mode()
    def decode(self, seqs: list[Sequence]) -> list[int]:
        """One token for every sequence in ``seqs`` (all running), in one batched forward."""
        with record_function("rosebench.engine.decode"):
            for seq in seqs:
                self.blocks.append_slot(seq.block_table, seq.num_tokens)
                self.cache.place(seq.block_table[-1], seq.slot, len(seq.block_table) - 1)
            self._compact(seqs)
            order = sorted(range(len(seqs)), key=lambda i: seqs[i].slot)
            batch = [seqs[i] for i in order]
            starts = [s.num_tokens - 1 for s in batch]
            tokens = self._forward_and_sample(
                batch, [[s.last_token_id] for s in batch], starts, [1] * len(batch)
            )
            result = [0] * len(seqs)
            for row, i in enumerate(order):
                result[i] = tokens[row]
            return result

    def _forward_and_sample(
        self, seqs: list[Sequence], ids: list[list[int]], starts: list[int], num_new: list[int]
    ) -> list[int]:
        with record_function("rosebench.engine.prepare"):
            device = self.device
            input_ids = torch.tensor(ids, device=device)
            width = input_ids.shape[1]
            positions = torch.tensor(starts, device=device).unsqueeze(1) + torch.arange(width, device=device)
            positions.clamp_(max=self.model_config.n_positions - 1)  # padding columns only
            batch = StepBatch.build([s.slot for s in seqs], starts, num_new, device)
            last = torch.tensor([n - 1 for n in num_new], device=device)
        hidden = self.model(input_ids, positions, self._attention(self.cache, batch))
        logits = self.model.logits(hidden[torch.arange(len(seqs), device=device), last])
        next_ids = self.sampler(
            logits, [s.params for s in seqs], [self._seed(s) for s in seqs], [s.num_tokens for s in seqs]
        ).tolist()  # the step's one host-device sync
        with record_function("rosebench.engine.postprocess"):
            for seq, start, token in zip(seqs, starts, next_ids):
                seq.num_computed_tokens = seq.num_tokens
                if seq.num_tokens // self.block_size > start // self.block_size:  # a block just filled
                    self.blocks.register_full_blocks(seq.block_table, seq.token_ids)
                self._append(seq, token)
        return next_ids

    def _append(self, seq: Sequence, token: int) -> None:
        seq.output_token_ids.append(token)
        if token == self.eos_token_id and not seq.params.ignore_eos:
            seq.finish_reason = "stop"
        elif len(seq.output_token_ids) >= seq.params.max_new_tokens:
            seq.finish_reason = "length"
        else:
            return
        seq.status = SequenceStatus.FINISHED
        self.free(seq)

    def _seed(self, seq: Sequence) -> int:
        return seq.params.seed if seq.params.seed is not None else self.config.seed * 1_000_003 + seq.seq_id

    # -- slot bookkeeping ----------------------------------------------------------------------------
    def _claim_slot(self, slot: int, keep: dict[int, int]) -> None:
        """Make ``slot`` writable: cached blocks whose content is there move to another holder's slot,
        or leave the prefix cache, unless they are in ``keep`` (index -> block id) at the same index."""
        for block_id, index in self.cache.blocks_in_slot(slot):
            if keep.get(index) == block_id:
                continue
            holder = next(
                (
                    s
                    for s in self._running.values()
                    if s.slot != slot and index < len(s.block_table) and s.block_table[index] == block_id
                ),
                None,
            )
            if holder is not None:
                self.cache.place(block_id, holder.slot, index)
            else:
                self.cache.forget(block_id)
                self.blocks.evict(block_id)

    def _copy_in(self, slot: int, hits: list[int]) -> None:
        by_source: dict[int, list[int]] = {}
        for index, block_id in enumerate(hits):
            source, _ = self.cache.locations[block_id]
            if source != slot:
                by_source.setdefault(source, []).append(index)
        for source, indices in by_source.items():
            self.cache.copy_blocks(source, slot, indices)

    def _compact(self, seqs: list[Sequence]) -> None:
        """Move sequences into the lowest slots so the decode batch reads K/V as a view, not a gather.
        Only when the batch is every running sequence; otherwise attention gathers its slots. A move
        swaps the two slots, so prefix-cached content in the free target survives in the source."""
        if len(seqs) != len(self._running):
            return
        with record_function("rosebench.kv.compact"):
            for seq in sorted((s for s in seqs if s.slot >= len(seqs)), key=lambda s: -s.slot):
                source, target = seq.slot, self.cache.lowest_free_slot()
                in_target = self.cache.blocks_in_slot(target)
                span = max([len(seq.block_table)] + [index + 1 for _, index in in_target])
                self.cache.swap_blocks(source, target, span)
                self.cache.owner[source], self.cache.owner[target] = None, seq.seq_id
                seq.slot = target

    def _pick_slot(self, hits: list[int]) -> int:
        """The free slot that already holds most of ``hits`` in place, else the one whose loss of
        prefix-cached content is smallest, else the lowest."""

        def cost(slot: int) -> tuple[int, int, int]:
            kept = lost = 0
            for block_id, index in self.cache.blocks_in_slot(slot):
                if index < len(hits) and hits[index] == block_id:
                    kept += 1
                elif (
                    self.blocks.blocks[block_id].hash is not None
                    and self.blocks.blocks[block_id].ref_count == 0
                ):
                    lost += 1
            return -kept, lost, slot

        return min((s for s, owner in enumerate(self.cache.owner) if owner is None), key=cost)

    def _num_slots(self, blocks_per_slot: int) -> int:
        fraction = self.config.kv_cache.memory_fraction
        if fraction is None:
            return self.config.max_num_seqs
        if self.device.type == "cuda":
            free_bytes = torch.cuda.mem_get_info(self.device)[0]
        else:
            free_bytes = psutil.virtual_memory().available
        per_slot = (
            SlotKVCache.bytes_per_token(self.model_config, self.dtype) * blocks_per_slot * self.block_size
        )
        slots = int(fraction * free_bytes // per_slot)
        if slots < 1:
            raise ValueError(
                f"engine.kv_cache.memory_fraction={fraction}: {fraction * free_bytes / 2**20:.0f} MiB "
                f"holds no sequence of max_model_len={self.max_model_len} ({per_slot / 2**20:.0f} MiB each)"
            )
        return min(slots, self.config.max_num_seqs)
