"""Where the Hydra configs are: ``conf/`` at the top of a clone, or the copy an installed wheel ships."""

from __future__ import annotations

from pathlib import Path


def conf_dir() -> Path:
    packaged = Path(__file__).resolve().parent / "conf"
    if (packaged / "config.yaml").is_file():
        return packaged
    return Path(__file__).resolve().parent.parent / "conf"
