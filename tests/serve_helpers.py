"""Start a real ``python -m rosebench.serve`` (uvicorn on 127.0.0.1, a free port); stop it, group and all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.cli_helpers import cli_env

START_TIMEOUT_S = 120


@dataclass
class Server:
    process: subprocess.Popen[str]
    folder: Path
    url: str
    log: Path

    def stop(self) -> None:
        """Kill the server's whole process group and wait: no test leaves a process behind."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def metric(self, name: str) -> float:
        """One figure from ``/metrics`` (its first series)."""
        for line in httpx.get(f"{self.url}/metrics").text.splitlines():
            if line.startswith(name) and line[len(name)] in "{ ":
                return float(line.rsplit(" ", 1)[1])
        raise KeyError(name)


def start_server(folder: Path, *overrides: str) -> Server:
    """``python -m rosebench.serve overrides`` in its own session; returns once it answers /health."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "rosebench.serve", "serve.port=0", f"hydra.run.dir={folder}", *overrides],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=cli_env(),
            text=True,
            start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    announced = folder / "server.json"
    while not announced.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
            raise RuntimeError(f"the server did not start (exit {process.returncode}):\n{log.read_text()}")
        time.sleep(0.1)
    server = Server(process, folder, json.loads(announced.read_text())["url"], log)
    assert httpx.get(f"{server.url}/health").status_code == 200
    return server
