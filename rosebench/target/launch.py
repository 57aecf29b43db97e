"""Start rosebench's own server (``python -m rosebench.serve``) for one run, and make sure it ends with it.

The server runs in its own session (so its process group is its own, and a terminal's Ctrl-C reaches only
the runner, which stops it in order); its stdout and stderr go to ``<run_dir>/server.log`` and its Hydra
folder is ``<run_dir>/server``. It says where it listens in ``server.json`` there. ``stop`` ends the whole
process group (SIGTERM, then SIGKILL after a grace) and waits for it, and is called on every way out: a
finished run, a failed one, Ctrl-C or SIGTERM to the runner. Only rosebench.serve's command line is known
here: this package talks to the server over HTTP only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rosebench.target.client import Connection, TargetError, call

SERVER_LOG = "server.log"
SERVER_DIR = "server"  # the server's Hydra run folder, inside the run folder
SERVER_FILE = "server.json"  # written there by the server once it listens: {"url", "pid", "model"}
STOP_GRACE_S = 20.0  # after SIGTERM (the server drains its streams within serve.grace_s, 10 s by default)
POLL_S = 0.1
LOG_TAIL_LINES = 3


def hydra_value(value: Any) -> str:
    """``value`` as a Hydra override writes it: ``null``, ``true``, ``inf``, ``16``, ``'a path'``. Strings
    are quoted so that a comma (``cpu,cuda``) is not read as a sweep, nor a path's characters as grammar."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def node_overrides(prefix: str, node: Any) -> list[str]:
    """A config dataclass as ``prefix.key=value`` overrides, one per leaf (nested nodes flattened)."""
    overrides = []
    for key, value in dataclasses.asdict(node).items():
        overrides += _leaf_overrides(f"{prefix}.{key}", value)
    return overrides


def _leaf_overrides(key: str, value: Any) -> list[str]:
    if isinstance(value, dict):
        return [line for k, v in value.items() for line in _leaf_overrides(f"{key}.{k}", v)]
    return [f"{key}={hydra_value(value)}"]


class LocalServer:
    """``with LocalServer(overrides, run_dir, startup_timeout_s) as server:`` the server is listening and
    healthy at ``server.url`` inside the block, and gone (its whole process group, waited for) after it."""

    def __init__(self, overrides: list[str], run_dir: Path, startup_timeout_s: float) -> None:
        self.run_dir = run_dir
        self.folder = run_dir / SERVER_DIR
        self.log_path = run_dir / SERVER_LOG
        self.command = [
            sys.executable,
            "-m",
            "rosebench.serve",
            *overrides,
            "serve.port=0",
            f"hydra.run.dir={hydra_value(str(self.folder))}",
        ]
        self.startup_timeout_s = startup_timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.model = ""
        self.pid = 0
        # The engine config as the server resolved it when it built the engine (cuda_graphs, the block
        # budget), when its server.json says (an "engine" object); None otherwise.
        self.engine: dict[str, Any] | None = None

    def __enter__(self) -> LocalServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the server and wait until it has written server.json and ``GET /health`` answers 200."""
        self.folder.mkdir(parents=True, exist_ok=True)
        # The server reads $ROSEBENCH_API_KEY when serve.api_key is null: one started for a run on loopback
        # needs no key, and the runner would not send it.
        env = {k: v for k, v in os.environ.items() if k != "ROSEBENCH_API_KEY"}
        # rosebench.serve ends itself when this process dies, even by SIGKILL (its PARENT_ENV).
        env["ROSEBENCH_SERVE_PARENT_PID"] = str(os.getpid())
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.startup_timeout_s
        announced = self.folder / SERVER_FILE
        while not announced.is_file():
            self._check_alive("before it listened")
            if time.monotonic() > deadline:
                raise TargetError(self._late(f"no {announced} after {self.startup_timeout_s:g} s"))
            time.sleep(POLL_S)
        about = json.loads(announced.read_text())
        self.url, self.model, self.pid = about["url"], about["model"], int(about["pid"])
        self.engine = about.get("engine")
        connection = Connection(self.url)
        while True:
            self._check_alive("before /health answered")
            with contextlib.suppress(TargetError):
                if call(connection, "GET", "/health").status == 200:
                    return
            if time.monotonic() > deadline:
                raise TargetError(self._late(f"GET {self.url}/health did not answer 200"))
            time.sleep(POLL_S)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check_alive(self) -> None:
        """A ``TargetError`` with the end of server.log when the server has exited (died mid-run)."""
        self._check_alive("during the run")

    def _check_alive(self, when: str) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise TargetError(
                f"rosebench.serve exited with code {self.process.returncode} {when}; "
                f"{self.log_path} ends: {self.log_tail()}"
            )

    def _late(self, what: str) -> str:
        return f"rosebench.serve did not start: {what} (target.startup_timeout_s); {self.log_path} ends: " + (
            self.log_tail()
        )

    def log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        tail = [line.strip() for line in lines if line.strip()][-LOG_TAIL_LINES:]
        return " | ".join(tail) or "(empty)"

    def peak_rss_mb(self) -> float | None:
        """The server's peak resident memory so far (Linux's VmHWM: the in-process runner reports its own
        ``ru_maxrss``, the same high-water mark); None where /proc has no such figure."""
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text() if self.alive() else ""
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return None

    def stop(self) -> None:
        """End the server's process group and wait for it: SIGTERM (it drains), SIGKILL after STOP_GRACE_S.
        Safe to call again, and when it never started or already ended."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            self._signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=STOP_GRACE_S)
        # Whatever of the group is left (the server, or a helper process it started): a group id stays
        # reserved while any member lives, so this cannot reach another process.
        self._signal_group(signal.SIGKILL)
        process.wait()

    def _signal_group(self, signum: int) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)  # its own session: the group id is its pid
