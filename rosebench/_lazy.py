"""Lazy package exports (PEP 562): a package's names resolve on first use, so that importing a light
module inside it (a config dataclass, the results file format) does not import torch or MLflow."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, tuple[str, ...]]
) -> tuple[Callable[[str], Any], list[str]]:
    """A module ``__getattr__`` for ``{module path: names}`` that imports a name's module when the name is
    first read, and the package's ``__all__``."""
    module_of = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in module_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module_of[name]), name)

    return __getattr__, sorted(module_of)
