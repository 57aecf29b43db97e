"""The ``profile`` config node: what the optional profiled pass records. No torch here."""

from __future__ import annotations

from dataclasses import dataclass

ACTIVITY_NAMES = ("cpu", "cuda")
DETAIL_NAMES = ("step", "layer")


@dataclass
class ProfileSettings:
    enabled: bool = False
    # The profiled pass runs after the timed ones, on a warm engine: recording from the first step
    # keeps the prefill (usually step 1 offline) in the trace.
    wait: int = 0
    warmup: int = 0
    active: int = 6
    repeat: int = 1  # 0: cycle until the pass ends, as torch.profiler.schedule does
    skip_first: int = 0
    activities: str = "auto"  # "auto" = CPU, plus CUDA on a CUDA device; or "cpu", "cuda", "cpu,cuda"
    # step: the engine's regions only, so graph replays are profiled as they run. layer: also each layer's
    # kv_write and attend, which costs host time and runs decode eagerly (no graph can hold a label).
    detail: str = "step"
    record_shapes: bool = False
    profile_memory: bool = False
    with_stack: bool = False
    row_limit: int = 30

    def __post_init__(self) -> None:
        for name in ("wait", "warmup", "repeat", "skip_first"):
            if getattr(self, name) < 0:
                raise ValueError(f"profile.{name} must be >= 0, got {getattr(self, name)}")
        if self.active < 1:
            raise ValueError(f"profile.active must be >= 1, got {self.active}")
        if self.detail not in DETAIL_NAMES:
            raise ValueError(f"profile.detail={self.detail}: allowed values are {', '.join(DETAIL_NAMES)}")
        if self.row_limit < 1:
            raise ValueError(f"profile.row_limit must be >= 1, got {self.row_limit}")
        if self.activities != "auto":
            unknown = sorted(set(self.activity_names()) - set(ACTIVITY_NAMES))
            if unknown or not self.activity_names():
                raise ValueError(
                    f"profile.activities={self.activities}: unknown {unknown}; "
                    f"allowed: auto or a comma list of {', '.join(ACTIVITY_NAMES)}"
                )

    @property
    def steps_needed(self) -> int:
        """Steps before the first cycle's trace is complete."""
        return self.skip_first + self.wait + self.warmup + self.active

    def activity_names(self) -> list[str]:
        return [name.strip().lower() for name in self.activities.split(",") if name.strip()]
