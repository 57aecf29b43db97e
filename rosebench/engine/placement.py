"""Slot placement: which running sequence owns which KV slot, and where each block's K/V content is.

The one owner of that state; the engine asks it to admit, grow, release and arrange sequences, and
``SlotKVCache`` only stores what it is told to copy or swap.
"""

from __future__ import annotations

from torch.profiler import record_function

from rosebench.engine.block_manager import BlockManager
from rosebench.engine.kv_cache import SlotKVCache
from rosebench.engine.sequence import Sequence


class SlotPlacement:
    """Invariants, kept by every method:

    - each running sequence owns exactly one slot, and a slot has at most one owner;
    - a block recorded at ``(slot, index)`` has valid content there, and ``index`` is its position in every
      block table that holds it; a slot index records at most one block;
    - every block of a running sequence has valid content in that sequence's slot (a block shared by
      several sequences is recorded in one of their slots, its content being the same in all);
    - a free slot may keep recorded blocks: freed prefix-cache content, reusable until the slot is
      claimed, when each is moved to a running holder's record or evicted from the prefix cache.
    """

    def __init__(self, cache: SlotKVCache, blocks: BlockManager) -> None:
        self._cache = cache
        self._blocks = blocks
        self._owner: list[Sequence | None] = [None] * cache.num_slots
        self._slot_of: dict[int, int] = {}  # seq_id -> slot
        self._where: dict[int, tuple[int, int]] = {}  # block id -> (slot, index)
        self._by_slot: list[dict[int, int]] = [{} for _ in range(cache.num_slots)]  # index -> block id

    # -- queries -------------------------------------------------------------------------------------
    @property
    def num_free_slots(self) -> int:
        return self._owner.count(None)

    @property
    def num_running(self) -> int:
        return len(self._slot_of)

    def slot_of(self, seq: Sequence) -> int | None:
        """``seq``'s slot while it runs, else None."""
        return self._slot_of.get(seq.seq_id)

    def slots(self, seqs: list[Sequence]) -> list[int]:
        return [self._slot_of[seq.seq_id] for seq in seqs]

    # -- state changes -------------------------------------------------------------------------------
    def admit(self, seq: Sequence, table: list[int], num_hits: int) -> int:
        """Give ``seq`` (holding ``table``, whose first ``num_hits`` blocks are prefix hits) a free slot
        with the hits' content in place, and return it."""
        hits = table[:num_hits]
        slot = self._pick_slot(hits)
        self._claim(slot, hits)
        self._copy_in(slot, hits)
        for index, block_id in enumerate(table):
            self._record(block_id, slot, index)
        self._owner[slot] = seq
        self._slot_of[seq.seq_id] = slot
        return slot

    def grow(self, seq: Sequence) -> None:
        """Record the newest block of a running ``seq`` (appended by a decode step) in its slot."""
        index = len(seq.block_table) - 1
        slot = self._slot_of[seq.seq_id]
        if self._by_slot[slot].get(index) != seq.block_table[index]:
            self._record(seq.block_table[index], slot, index)

    def release(self, seq: Sequence) -> None:
        """Free ``seq``'s slot; the content of its blocks stays recorded there for the prefix cache."""
        slot = self._slot_of.pop(seq.seq_id)
        self._owner[slot] = None

    def arrange(self, seqs: list[Sequence]) -> list[Sequence]:
        """The decode batch in the order attention reads it. When ``seqs`` is every running sequence, they
        are first moved into the lowest slots and come back in slot order, so K/V read as a view; a
        partial batch is returned as given (attention gathers its slots)."""
        if len(seqs) != self.num_running:
            return seqs
        with record_function("rosebench.kv.compact"):
            high = sorted((s for s in seqs if self._slot_of[s.seq_id] >= len(seqs)), key=self.slot_of)
            for seq in reversed(high):
                self._move(seq, self._owner.index(None))
        return self._owner[: len(seqs)]

    # -- internals -----------------------------------------------------------------------------------
    def _record(self, block_id: int, slot: int, index: int) -> None:
        self._forget(block_id)
        displaced = self._by_slot[slot].get(index)
        if displaced is not None:  # a slot is claimed before anything is written into it
            raise RuntimeError(f"block {displaced} is still at slot {slot} index {index}")
        self._where[block_id] = (slot, index)
        self._by_slot[slot][index] = block_id

    def _forget(self, block_id: int) -> None:
        location = self._where.pop(block_id, None)
        if location is not None:
            del self._by_slot[location[0]][location[1]]

    def _pick_slot(self, hits: list[int]) -> int:
        """The free slot that already holds most of ``hits`` in place, else the one whose loss of
        prefix-cached content is smallest, else the lowest."""

        def cost(slot: int) -> tuple[int, int, int]:
            kept = lost = 0
            for index, block_id in self._by_slot[slot].items():
                if index < len(hits) and hits[index] == block_id:
                    kept += 1
                elif self._blocks.is_cached_and_free(block_id):
                    lost += 1
            return -kept, lost, slot

        return min((s for s, owner in enumerate(self._owner) if owner is None), key=cost)

    def _claim(self, slot: int, hits: list[int]) -> None:
        """Make free ``slot`` writable: each recorded block other than a hit at its own index moves its
        record to a running holder's slot (same content there), or leaves the prefix cache."""
        for index, block_id in list(self._by_slot[slot].items()):
            if index < len(hits) and hits[index] == block_id:
                continue
            holder = next(
                (
                    s
                    for s in self._owner
                    if s is not None and index < len(s.block_table) and s.block_table[index] == block_id
                ),
                None,
            )
            if holder is not None:
                self._record(block_id, self._slot_of[holder.seq_id], index)
            else:
                self._forget(block_id)
                self._blocks.evict(block_id)

    def _copy_in(self, slot: int, hits: list[int]) -> None:
        by_source: dict[int, list[int]] = {}
        for index, block_id in enumerate(hits):
            source, _ = self._where[block_id]
            if source != slot:
                by_source.setdefault(source, []).append(index)
        for source, indices in by_source.items():
            self._cache.copy_blocks(source, slot, indices)

    def _move(self, seq: Sequence, target: int) -> None:
        """Move running ``seq`` into free ``target`` by swapping the two slots, so that prefix-cached
        content recorded in the free target survives in the slot ``seq`` leaves."""
        source = self._slot_of[seq.seq_id]
        span = max([len(seq.block_table), *(index + 1 for index in self._by_slot[target])])
        self._cache.swap_blocks(source, target, span)
        moving = list(self._by_slot[source].items()), list(self._by_slot[target].items())
        for _, block_id in moving[0] + moving[1]:
            self._forget(block_id)
        for blocks, new_slot in ((moving[0], target), (moving[1], source)):
            for index, block_id in blocks:
                self._record(block_id, new_slot, index)
        self._owner[source], self._owner[target] = None, seq
        self._slot_of[seq.seq_id] = target
