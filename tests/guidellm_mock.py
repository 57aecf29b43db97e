"""GuideLLM's mock-server: an OpenAI-compatible server nobody here wrote, whose TTFT and ITL a test sets.

It takes prompts as text only (a list of token ids is a 400), streams one chunk per token and counts them
in ``usage``; with its default stop list it generates min(--output-tokens, max_tokens) tokens.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

START_TIMEOUT_S = 90


@dataclass
class MockServer:
    url: str
    process: subprocess.Popen[bytes]
    log: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mock_server(folder: Path, *options: str) -> Iterator[MockServer]:
    """``guidellm mock-server OPTIONS`` on 127.0.0.1 and a free port, in its own session; answering /health
    inside the block, and its whole process group killed and waited for after it."""
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"mock-{port}.log"
    command = [str(Path(sys.executable).parent / "guidellm"), "mock-server", "--host", "127.0.0.1"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, "--port", str(port), *options],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = MockServer(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(server.url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"guidellm mock-server did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.2)
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
