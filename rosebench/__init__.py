"""rosebench: benchmark, profile and track a small GPT-2 inference engine.

Library use (no Hydra)::

    from rosebench import Engine, EngineConfig, SamplingParams, generate
    engine = Engine(EngineConfig(model="gpt2", device="auto"))
    [ids] = generate(engine, ["Hello world"], SamplingParams(max_new_tokens=16))
"""

from __future__ import annotations

import importlib
from typing import Any

# Resolved on first use, so that `python -m rosebench.upload` / `.report` do not pay for importing torch.
_EXPORTS = {
    "Engine": "rosebench.engine",
    "EngineConfig": "rosebench.engine",
    "KVCacheConfig": "rosebench.engine",
    "SamplingParams": "rosebench.engine",
    "generate": "rosebench.api",
    "load_tokenizer": "rosebench.engine.tokenizer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rosebench' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
