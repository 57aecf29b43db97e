"""The engine: admits sequences into the KV cache, prefills them, and decodes the running batch.

Its API is all a scheduler needs: ``check_request``, ``admit``, ``prefill``, ``can_decode``,
``decode``, ``preempt``, ``free`` and the KV statistics. It knows nothing of Hydra, MLflow or runs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import psutil
import torch
from torch.profiler import record_function

from rosebench.engine.attention import ATTENTION_CLASSES, LabelledAttention, StepBatch
from rosebench.engine.block_manager import BlockManager
from rosebench.engine.config import EngineConfig
from rosebench.engine.cpu_linear import prepack, prepack_supported
from rosebench.engine.kv_cache import SlotKVCache
from rosebench.engine.placement import SlotPlacement
from rosebench.engine.sampler import Sampler, candidate_count
from rosebench.engine.sequence import Sequence, SequenceStatus, request_seed
from rosebench.engine.static_decode import StaticDecoder
from rosebench.engine.weights import build_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class RequestTooLongError(ValueError):
    pass


class NonFiniteLogitsError(ValueError):
    """The weights or the dtype make the model's output NaN or infinite: nothing it samples means anything.
    ``seq_ids`` are the rows that were not finite (rows are independent, so the others' logits are good)."""

    def __init__(self, message: str, seq_ids: list[int]) -> None:
        super().__init__(message)
        self.seq_ids = seq_ids


@dataclass
class KVStats:
    capacity_blocks: int
    used_blocks: int
    peak_blocks: int
    prefix_queries: int
    prefix_hits: int


def check_fits_context(num_prompt_tokens: int, max_new_tokens: int, max_model_len: int) -> None:
    """Raise ``RequestTooLongError`` if a request cannot fit the model context ``max_model_len``."""
    total = num_prompt_tokens + max_new_tokens
    if total > max_model_len:
        raise RequestTooLongError(
            f"{num_prompt_tokens} prompt tokens + max_new_tokens={max_new_tokens} = {total} exceeds the "
            f"model context of {max_model_len} positions "
            f"(allowed: prompt + max_new_tokens <= {max_model_len})"
        )


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; an explicit ``cuda`` without a GPU is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"engine.device={name}: no CUDA device is available here (allowed: auto, cpu)")
    return torch.device(name)


def resolve_static_decode(config: EngineConfig, device: torch.device) -> tuple[bool, bool]:
    """Whether decode runs the static step, and as CUDA graphs. ``cuda_graphs=auto`` is on for CUDA with
    the slot attention; the naive baseline stays what it is, eager, so that what runs is what was asked."""
    if config.cuda_graphs == "true" and device.type != "cuda":
        raise ValueError(
            f"engine.cuda_graphs=true: CUDA graphs need a CUDA device, this engine runs on {device} "
            "(allowed here: auto, false)"
        )
    for key, asked in (("cuda_graphs", config.cuda_graphs == "true"), ("compile", config.compile)):
        if asked and config.attention != "slot":
            raise ValueError(
                f"engine.{key}=true runs the static decode step, which reads the slots itself: "
                f"engine.attention={config.attention} is eager only (allowed with it: "
                f"engine.{key}={'auto, false' if key == 'cuda_graphs' else 'false'})"
            )
    auto = config.cuda_graphs == "auto" and device.type == "cuda" and config.attention == "slot"
    cuda_graphs = config.cuda_graphs == "true" or auto
    return cuda_graphs or config.compile, cuda_graphs


class Engine:
    """Runs sequences on one device. ``config`` is the resolved configuration that runs: the slots,
    context length, block budget and whether CUDA graphs run are filled in.

    Decode runs the static-shape step (``StaticDecoder``) when CUDA graphs or compilation are on, or when
    ``static_decode`` asks for it (tests run it eagerly on the CPU); the eager step is the reference, and
    serves the batches the static step does not (a partial batch, per-layer profiler labels).
    """

    def __init__(
        self, config: EngineConfig, eos_token_id: int | None = None, static_decode: bool | None = None
    ) -> None:
        """``eos_token_id`` replaces the model's own EOS ids (``ModelConfig.eos_token_ids``) when given."""
        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)
        self.device = resolve_device(config.device)
        default_static, cuda_graphs = resolve_static_decode(config, self.device)
        if static_decode is None:
            static_decode = default_static
        self.dtype = DTYPES[config.dtype]
        self.layer_labels = False  # per-layer profiler regions (profile.detail=layer); eager decode only
        model = build_model(config.model, config.weights, config.seed)
        self.num_parameters = sum(p.numel() for p in model.parameters())  # before prepacking hides weights
        self.model = model.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        if config.prepack and prepack_supported(self.device, self.dtype):
            prepack(self.model, batch_hint=config.max_num_seqs)
        self.model_config = model.config
        # Generation stops at any of these (none: every request runs to its max_new_tokens).
        self.eos_token_ids = model.config.eos_token_ids if eos_token_id is None else (eos_token_id,)
        n_positions = self.model_config.n_positions
        if config.max_model_len is not None and config.max_model_len > n_positions:
            raise ValueError(f"engine.max_model_len={config.max_model_len}: must be in [1, {n_positions}]")
        max_model_len = config.max_model_len or n_positions
        self.block_size = config.kv_cache.block_size
        if self.block_size > n_positions:
            raise ValueError(
                f"engine.kv_cache.block_size={self.block_size}: must be in [1, {n_positions}] "
                f"(the model's context)"
            )
        blocks_per_slot = -(-max_model_len // self.block_size)
        num_slots = self._num_slots(config, max_model_len, blocks_per_slot, static_decode)
        num_blocks = config.kv_cache.num_blocks
        if num_blocks is None:
            num_blocks = num_slots * blocks_per_slot
        elif num_blocks > num_slots * blocks_per_slot:
            raise ValueError(
                f"engine.kv_cache.num_blocks={num_blocks}: must be in [1, {num_slots * blocks_per_slot}] "
                f"(max_num_seqs={num_slots} slots of {blocks_per_slot} blocks)"
            )
        self.config = replace(
            config,
            cuda_graphs=str(cuda_graphs).lower(),
            max_num_seqs=num_slots,
            max_model_len=max_model_len,
            kv_cache=replace(config.kv_cache, num_blocks=num_blocks),
        )
        if config.kv_cache.memory_fraction is None:  # else _num_slots sized the cache to fit already
            self._check_kv_memory(num_slots, max_model_len, static_decode, config.max_model_len)
        self.cache = SlotKVCache(
            self.model_config,
            num_slots,
            blocks_per_slot * self.block_size,
            self.block_size,
            self.dtype,
            self.device,
            scratch_slot=static_decode,
        )
        self.blocks = BlockManager(num_blocks, self.block_size, config.prefix_cache)
        self.placement = SlotPlacement(self.cache, self.blocks)
        self.sampler = Sampler()
        self._attention = ATTENTION_CLASSES[config.attention]
        self._static = (
            StaticDecoder(self.model, self.cache, self.device, config.compile, cuda_graphs)
            if static_decode
            else None
        )

    def startup_metrics(self) -> dict[str, float]:
        """What compiling and capturing cost before timing: ``engine_compile_s``, ``engine_capture_s`` and
        the graphs' memory pool, each present only when it happened."""
        static = self._static
        if static is None:
            return {}
        pool = static.graph_pool_bytes
        figures = {
            "engine_compile_s": static.compile_s,
            "engine_capture_s": static.capture_s,
            "cuda_graph_pool_mb": None if pool is None else pool / 2**20,
        }
        return {name: value for name, value in figures.items() if value is not None}

    # -- capacity ------------------------------------------------------------------------------------
    @property
    def max_num_seqs(self) -> int:
        return self.cache.num_slots

    @property
    def max_model_len(self) -> int:
        return self.config.max_model_len

    @property
    def prefix_cache(self) -> bool:
        return self.blocks.enable_prefix_cache

    @property
    def num_running(self) -> int:
        """Sequences holding a slot (after a run: 0, or the KV cache leaked)."""
        return self.placement.num_running

    def check_request(self, num_prompt_tokens: int, max_new_tokens: int) -> None:
        """Raise before a run if a request could never complete, rather than halfway through it."""
        check_fits_context(num_prompt_tokens, max_new_tokens, self.max_model_len)
        total = num_prompt_tokens + max_new_tokens
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
        self.blocks.reset_stats()

    def clear_cache(self) -> None:
        """Forget all KV content, the prefix cache included, so the next pass starts cold. Only between
        passes: no sequence may be running."""
        if self.num_running:
            raise RuntimeError(f"clear_cache: {self.num_running} sequences still hold KV slots")
        b = self.blocks
        self.blocks = BlockManager(b.num_blocks, b.block_size, b.enable_prefix_cache)
        self.placement = SlotPlacement(self.cache, self.blocks)

    # -- admission -----------------------------------------------------------------------------------
    def admit(self, seq: Sequence) -> bool:
        """Give ``seq`` a slot and blocks (reusing cached prefix blocks); False when they are not free."""
        if self.placement.num_free_slots == 0:
            return False
        token_ids = seq.token_ids
        hits = self.blocks.cached_prefix(token_ids)
        if len(hits) * self.block_size >= len(token_ids):
            hits = hits[:-1]  # the last token is always computed: its logits give the next token
        if not self.blocks.can_allocate(len(token_ids), hits):
            return False
        with record_function("rosebench.engine.admit"):
            seq.block_table = self.blocks.allocate(len(token_ids), hits)
            self.placement.admit(seq, seq.block_table, len(hits))
        cached_tokens = len(hits) * self.block_size
        if not seq.output_token_ids:  # hit rate counts prompts, not recomputation after preemption
            self.blocks.record_lookup(len(token_ids), cached_tokens)
            seq.num_cached_tokens = cached_tokens
        seq.num_computed_tokens = cached_tokens
        seq.status = SequenceStatus.RUNNING
        return True

    def can_decode(self, seqs: list[Sequence]) -> bool:
        """Whether one more token for each of ``seqs`` fits in the free blocks."""
        needed = sum(1 for s in seqs if self.blocks.blocks_for(s.num_tokens) > len(s.block_table))
        return needed <= self.blocks.num_free

    def free(self, seq: Sequence) -> None:
        if self.placement.slot_of(seq) is None:  # already freed (finished or preempted)
            return
        self.blocks.free(seq.block_table)
        self.placement.release(seq)

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
            return self._forward_and_sample(seqs, ids, starts, num_new, check_finite=True)

    @torch.inference_mode()
    def decode(self, seqs: list[Sequence]) -> list[int]:
        """One token for every sequence in ``seqs`` (all running), in one batched forward."""
        with record_function("rosebench.engine.decode"):
            for seq in seqs:
                self.blocks.append_slot(seq.block_table, seq.num_tokens)
                self.placement.grow(seq)
            batch = self.placement.arrange(seqs)
            starts = [s.num_tokens - 1 for s in batch]
            if (
                self._static is not None
                and not self.layer_labels
                and len(batch) == self.num_running
                and all(s.params.eos_allowed(len(s.output_token_ids)) for s in batch)
            ):
                next_ids = self._static_step(batch, starts)
                self._postprocess(batch, starts, next_ids)
            else:
                self._forward_and_sample(batch, [[s.last_token_id] for s in batch], starts, [1] * len(batch))
            return [seq.last_token_id for seq in seqs]

    def _static_step(self, batch: list[Sequence], starts: list[int]) -> list[int]:
        """``batch`` is every running sequence, in slots ``0 .. len(batch) - 1`` (``arrange`` made it so)."""
        vocab = self.model_config.vocab_size
        with record_function("rosebench.engine.static_step"):
            return self._static.run(
                token_ids=[s.last_token_id for s in batch],
                positions=starts,
                top_k=[candidate_count(s.params, vocab) for s in batch],
                seeds=[self._seed(s) for s in batch],
                temperature=[s.params.temperature for s in batch],
                top_p=[s.params.top_p for s in batch],
            )

    def _forward_and_sample(
        self,
        seqs: list[Sequence],
        ids: list[list[int]],
        starts: list[int],
        num_new: list[int],
        check_finite: bool = False,
    ) -> list[int]:
        with record_function("rosebench.engine.prepare"):
            device = self.device
            input_ids = torch.tensor(ids, device=device)
            width = input_ids.shape[1]
            positions = torch.tensor(starts, device=device).unsqueeze(1) + torch.arange(width, device=device)
            positions.clamp_(max=self.model_config.n_positions - 1)  # padding columns only
            batch = StepBatch.build(self.placement.slots(seqs), starts, num_new, device)
            last = torch.tensor([n - 1 for n in num_new], device=device)
            kv = self._attention(self.cache, batch)
        with record_function("rosebench.model.forward"):
            hidden = self.model(input_ids, positions, LabelledAttention(kv) if self.layer_labels else kv)
        with record_function("rosebench.model.lm_head"):
            logits = self.model.logits(hidden[torch.arange(len(seqs), device=device), last])
        # Checked at prefills only (one more sync each, none in decode): NaN weights or an overflowing
        # dtype show at the first step, instead of as a stream of token 0.
        if check_finite:
            self._check_finite(seqs, logits)
        self._mask_early_eos(seqs, logits)
        next_ids = self.sampler(
            logits, [s.params for s in seqs], [self._seed(s) for s in seqs], [s.num_tokens for s in seqs]
        ).tolist()  # the step's one host-device sync
        self._postprocess(seqs, starts, next_ids)
        return next_ids

    def _check_finite(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        finite = torch.isfinite(logits).all(dim=-1)
        if bool(finite.all()):
            return
        bad = [seq.seq_id for seq, ok in zip(seqs, finite.tolist()) if not ok]
        raise NonFiniteLogitsError(
            f"the model produced non-finite logits (NaN or inf) at a prefill, for {len(bad)} of {len(seqs)} "
            "sequences: check engine.weights for NaN values, or "
            f"engine.dtype={self.config.dtype} for overflow",
            bad,
        )

    def _mask_early_eos(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        """EOS may not be drawn by a sequence short of its ``min_tokens``."""
        rows = [i for i, s in enumerate(seqs) if not s.params.eos_allowed(len(s.output_token_ids))]
        eos = [i for i in self.eos_token_ids if i < logits.shape[-1]]
        if rows and eos:
            device = logits.device
            logits[torch.tensor(rows, device=device).unsqueeze(1), torch.tensor(eos, device=device)] = float(
                "-inf"
            )

    def _postprocess(self, seqs: list[Sequence], starts: list[int], next_ids: list[int]) -> None:
        with record_function("rosebench.engine.postprocess"):
            for seq, start, token in zip(seqs, starts, next_ids):
                seq.num_computed_tokens = seq.num_tokens
                if seq.num_tokens // self.block_size > start // self.block_size:  # a block just filled
                    self.blocks.register_full_blocks(seq.block_table, seq.token_ids)
                self._append(seq, token)

    def _append(self, seq: Sequence, token: int) -> None:
        seq.output_token_ids.append(token)
        if token in self.eos_token_ids and not seq.params.ignore_eos:
            seq.finish_reason = "stop"
        elif len(seq.output_token_ids) >= seq.params.max_new_tokens:
            seq.finish_reason = "length"
        else:
            return
        seq.status = SequenceStatus.FINISHED
        self.free(seq)

    def _seed(self, seq: Sequence) -> int:
        return seq.params.seed if seq.params.seed is not None else request_seed(self.config.seed, seq.seq_id)

    def _free_bytes(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.mem_get_info(self.device)[0]
        return psutil.virtual_memory().available

    def _check_kv_memory(self, slots: int, positions: int, scratch: bool, asked_len: int | None) -> None:
        """A KV cache the device cannot hold is refused in one line that names the keys that shrink it,
        rather than an allocator's error or a machine swapping. Given weights default max_model_len to the
        model's whole context, which for a long-context model (SmolLM2: 8192) is a large cache per slot."""
        needed = SlotKVCache.nbytes(self.model_config, self.dtype, slots, positions, scratch)
        free = self._free_bytes()
        if needed <= free:
            return
        length = f"engine.max_model_len={positions}" + (
            "" if asked_len is not None else " (the model's whole context, as none was set)"
        )
        raise ValueError(
            f"the KV cache of engine.max_num_seqs={slots} slots x {length} needs {needed / 2**30:.1f} "
            f"GiB, more than the {free / 2**30:.1f} GiB free on {self.device}: set engine.max_model_len to "
            "the longest prompt + max_new_tokens to serve, lower engine.max_num_seqs, or set "
            "engine.kv_cache.memory_fraction"
        )

    def _num_slots(
        self, config: EngineConfig, max_model_len: int, blocks_per_slot: int, scratch_slot: bool
    ) -> int:
        fraction = config.kv_cache.memory_fraction
        if fraction is None:
            return config.max_num_seqs
        free_bytes = self._free_bytes()
        per_slot = (
            SlotKVCache.bytes_per_token(self.model_config, self.dtype) * blocks_per_slot * self.block_size
        )
        slots = int(fraction * free_bytes // per_slot) - int(scratch_slot)
        if slots < 1:
            raise ValueError(
                f"engine.kv_cache.memory_fraction={fraction}: {fraction * free_bytes / 2**20:.0f} MiB "
                f"holds no sequence of max_model_len={max_model_len} ({per_slot / 2**20:.0f} MiB each)"
            )
        return min(slots, config.max_num_seqs)
