"""Log a run folder, or a sweep folder (a parent run plus a child per job), to MLflow after the fact.

    python -m rosebench.upload outputs/2026-11-30/05-30-00
    python -m rosebench.upload outputs/multirun/2026-11-30/05-30-00 --uri http://127.0.0.1:5000

Uploading again adds nothing: a folder's run is found in the target store by its run_dir tag (or the run
its tracking.json names) and skipped unless --force is given; a run its killed process left RUNNING is
ended with what the folder holds. Credentials in the tracking URI are never printed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rosebench.tracking.run_folder import find_run_folders, is_run_folder
from rosebench.tracking.settings import describe_error, redact, redact_uri
from rosebench.tracking.uploads import upload


def _fail(message: str, code: int) -> int:
    print(f"rosebench.upload: error: {redact(message)}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rosebench.upload", description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="a run folder (with results.json) or a sweep folder")
    parser.add_argument(
        "--uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)"
    )
    parser.add_argument("--experiment", default="rosebench", help="experiment name (default: rosebench)")
    parser.add_argument("--force", action="store_true", help="log again even if already logged")
    args = parser.parse_args(argv)

    if not args.path.is_dir():
        return _fail(f"{args.path} is not a directory", 2)
    if not is_run_folder(args.path) and not find_run_folders(args.path):
        return _fail(f"{args.path} holds no run folder (no results.json or .hydra/config.yaml)", 2)
    store = redact_uri(args.uri or os.environ.get("MLFLOW_TRACKING_URI")) or "sqlite:///mlflow.db"
    try:
        upload(args.path, args.uri, args.experiment, args.force)
    except Exception as error:  # the store: unreachable, refusing, misconfigured
        return _fail(f"upload of {args.path} to {store} stopped: {describe_error(error)}", 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
