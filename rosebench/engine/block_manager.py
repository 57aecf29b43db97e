"""Block accounting: a fixed budget of KV blocks with reference counts, and the prefix cache.

A full block is identified by a chained hash of its token ids and its parent block's hash (as vLLM and
nano-vllm do), so equal hashes mean equal prefixes up to that block. A hit also compares the key the
hash was made from (the block's token ids and its parent's hash), so a collision cannot serve another
prefix's K/V. Freed blocks keep their hash and
stay reusable until the allocator hands them out again, least recently freed first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


class KVCacheFullError(RuntimeError):
    """Raised before any state changes, so a failed allocation never corrupts another sequence."""


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    hash: int | None = None
    token_ids: tuple[int, ...] = ()
    parent_hash: int | None = None  # with token_ids, the key that ``hash`` was computed from


def chain_hash(parent: int | None, token_ids: tuple[int, ...]) -> int:
    return hash((parent, token_ids))


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_cache: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"num_blocks={num_blocks}, block_size={block_size}: both must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_cache = enable_prefix_cache
        self.blocks = [Block(i) for i in range(num_blocks)]
        # Insertion order is the eviction order: the least recently freed block is reused first.
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._by_hash: dict[int, int] = {}
        self.peak_used = 0
        self.prefix_queries = 0  # prompt tokens looked up
        self.prefix_hits = 0  # of those, tokens served from the cache

    # -- queries -------------------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def cached_prefix(self, token_ids: list[int]) -> list[int]:
        """Block ids holding the longest cached run of full blocks at the start of ``token_ids``."""
        if not self.enable_prefix_cache:
            return []
        hits: list[int] = []
        parent: int | None = None
        for start in range(0, len(token_ids) - self.block_size + 1, self.block_size):
            chunk = tuple(token_ids[start : start + self.block_size])
            block_id = self._by_hash.get(chain_hash(parent, chunk))
            if block_id is None:
                break
            block = self.blocks[block_id]
            if block.token_ids != chunk or block.parent_hash != parent:
                break
            hits.append(block_id)
            parent = block.hash
        return hits

    def is_cached_and_free(self, block_id: int) -> bool:
        """Whether the block is the prefix cache's copy of some content and no sequence holds it."""
        block = self.blocks[block_id]
        return block.ref_count == 0 and block.hash is not None and self._by_hash.get(block.hash) == block_id

    def can_allocate(self, num_tokens: int, cached: list[int]) -> bool:
        return self._new_blocks_needed(num_tokens, cached) <= self.num_free

    # -- state changes -------------------------------------------------------------------------------
    def allocate(self, num_tokens: int, cached: list[int]) -> list[int]:
        """A block table for ``num_tokens`` tokens whose first blocks are the cached ``cached``."""
        needed = self._new_blocks_needed(num_tokens, cached)
        if needed > self.num_free:
            raise KVCacheFullError(
                f"KV cache full: a sequence of {num_tokens} tokens needs {needed} new blocks, "
                f"{self.num_free} of {self.num_blocks} are free"
            )
        for block_id in cached:
            self._take(block_id)
        table = list(cached) + [self._take_fresh() for _ in range(self.blocks_for(num_tokens) - len(cached))]
        self._note_peak()
        return table

    def append_slot(self, table: list[int], num_tokens: int) -> None:
        """Grow ``table`` so it covers ``num_tokens`` tokens (at most one new block per decode step)."""
        while len(table) < self.blocks_for(num_tokens):
            if not self._free:
                raise KVCacheFullError(f"KV cache full: no free block among {self.num_blocks}")
            table.append(self._take_fresh())
        self._note_peak()

    def register_full_blocks(self, table: list[int], token_ids: list[int]) -> None:
        """Publish the sequence's newly filled blocks in the prefix cache.

        Only blocks without a hash are hashed, each chained from its parent's stored hash, so a sequence
        costs O(its blocks) over its whole life. A block whose content another block already publishes
        keeps its hash (its children chain from it) but is not published a second time.
        """
        if not self.enable_prefix_cache:
            return
        num_full = len(token_ids) // self.block_size
        first_new = num_full
        while first_new > 0 and self.blocks[table[first_new - 1]].hash is None:
            first_new -= 1
        parent = self.blocks[table[first_new - 1]].hash if first_new else None
        for index in range(first_new, num_full):
            chunk = tuple(token_ids[index * self.block_size : (index + 1) * self.block_size])
            key = chain_hash(parent, chunk)
            block = self.blocks[table[index]]
            block.hash, block.token_ids, block.parent_hash = key, chunk, parent
            self._by_hash.setdefault(key, block.block_id)
            parent = key

    def free(self, table: list[int]) -> None:
        for block_id in table:  # check first, so a bad free changes nothing
            if self.blocks[block_id].ref_count <= 0:
                raise RuntimeError(f"block {block_id} freed more often than allocated")
        for block_id in reversed(table):  # tail blocks first: they are the least likely to be shared
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free[block_id] = None
        table.clear()

    def evict(self, block_id: int) -> None:
        """Forget a free block's cached content (its storage was overwritten)."""
        block = self.blocks[block_id]
        if block.hash is not None and self._by_hash.get(block.hash) == block_id:
            del self._by_hash[block.hash]
        block.hash, block.token_ids, block.parent_hash = None, (), None

    def reset_stats(self) -> None:
        """Start counting a new pass: the peak from what is held now, no lookups yet."""
        self.peak_used = self.num_used
        self.prefix_queries = self.prefix_hits = 0

    def record_lookup(self, num_prompt_tokens: int, num_hit_tokens: int) -> None:
        self.prefix_queries += num_prompt_tokens
        self.prefix_hits += num_hit_tokens

    # -- internals -----------------------------------------------------------------------------------
    def _new_blocks_needed(self, num_tokens: int, cached: list[int]) -> int:
        # A cached block that is currently free must leave the free list too.
        revived = sum(1 for block_id in cached if self.blocks[block_id].ref_count == 0)
        return self.blocks_for(num_tokens) - len(cached) + revived

    def _take(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self._free[block_id]
        block.ref_count += 1

    def _take_fresh(self) -> int:
        block_id, _ = self._free.popitem(last=False)
        self.evict(block_id)
        self.blocks[block_id].ref_count = 1
        return block_id

    def _note_peak(self) -> None:
        self.peak_used = max(self.peak_used, self.num_used)
