"""Hydra command-line overrides, read one way everywhere: with Hydra's own parser."""

from __future__ import annotations

from collections.abc import Iterable

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override


def parse_overrides(overrides: Iterable[str]) -> list[Override]:
    return OverridesParser.create().parse_overrides(list(overrides))


def override_values(overrides: Iterable[str]) -> dict[str, str]:
    """``["num_requests=16", "+x=1", "engine=tiny"]`` -> {key: value as text}, in command-line order.
    Deletions (``~key``) and sweeps (``a=1,2``) set no single value and are left out."""
    return {
        o.key_or_group: o.get_value_element_as_str()
        for o in parse_overrides(overrides)
        if not o.is_delete() and not o.is_sweep_override()
    }


def swept_keys(overrides: Iterable[str]) -> list[str]:
    """The keys an override list sweeps (``num_requests=1,16``, ``x=range(1,4)``, ...)."""
    return [o.key_or_group for o in parse_overrides(overrides) if o.is_sweep_override()]


# Keys that say nothing about what was measured: the store results went to, a server's credentials, Hydra's
# own settings.
_UNNAMED = ("tracking.uri", "target.api_key")


def naming_overrides(overrides: Iterable[str]) -> list[Override]:
    """The overrides a run's name shows (not the tracking URI, not ``hydra.*``), in command-line order. A key
    given twice shows once, with the value Hydra applied: the last."""
    named = [
        o
        for o in parse_overrides(overrides)
        if o.key_or_group not in _UNNAMED and not o.key_or_group.startswith("hydra.")
    ]
    last = {o.key_or_group: o for o in named}
    return [o for o in named if last[o.key_or_group] is o]


NAME_PART_CHARS = 40  # a long value (a prompt, a path) would bury the rest of a run's name


def _cut(text: str) -> str:
    return text if len(text) <= NAME_PART_CHARS else text[: NAME_PART_CHARS - 1] + "…"


def name_part(override: Override) -> str:
    """``key=value`` as a run's name shows it, cut to NAME_PART_CHARS (the full value is in the params)."""
    return _cut(override.input_line.lstrip("+"))  # ``+key``/``++key`` add or force a key; names need neither


def value_part(override: Override) -> str:
    """An override's value as a sweep point's name shows it, cut to NAME_PART_CHARS."""
    return _cut(override.get_value_element_as_str())


def sweep_name(overrides: Iterable[str], searched: str | None = None) -> str:
    """``sweep num_requests=1,16,64 (engine=tiny)``: what was swept first, then what was fixed; a capacity
    search's: ``capacity scheduler.request_rate (engine=tiny slo.ttft_ms=200)``."""
    named = naming_overrides(overrides)
    swept = [name_part(o) for o in named if o.is_sweep_override()]
    fixed = [name_part(o) for o in named if not o.is_sweep_override()]
    head = ["capacity", searched] if searched else ["sweep"]
    return " ".join([*head, *swept, *([f"({' '.join(fixed)})"] if fixed else [])])
