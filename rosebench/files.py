"""Writing run files so that a reader never sees half of one: a full disk leaves the old file or none."""

from __future__ import annotations

import os
from pathlib import Path


def output_file_problem(path: Path) -> str | None:
    """Why a file cannot be written at ``path`` (a report, a table), or None: checked before the work that
    makes it, so that a typo in a path costs one line, not the work."""
    if path.is_dir():
        return "is a directory; give the path of a file to write"
    folder = path.parent
    if not folder.exists():
        return f"folder {folder} does not exist"
    if not folder.is_dir():
        return f"{folder} is not a directory"
    # write_atomic makes a temporary file beside the path and renames it over the path.
    return None if os.access(folder, os.W_OK | os.X_OK) else f"folder {folder} is not writable"


def write_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path`` and rename it over ``path``; on any failure the
    temporary file is removed and the error (e.g. ``OSError: No space left on device``) propagates."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
