"""``python -m rosebench.serve [overrides]``: compose the config, build the engine, serve it over HTTP.

When it listens, it writes ``server.json`` (its URL, pid, model id and resolved engine config) into its
folder; that is how ``target=serve`` finds a server started on ``serve.port=0``. SIGINT or SIGTERM: it
stops accepting, lets in-flight streams finish within ``serve.grace_s``, ends the rest with a final error
event, and exits 128 + the signal's number.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import hydra
import uvicorn
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rosebench.conf_dir import conf_dir
from rosebench.config import ConfigError
from rosebench.files import write_atomic
from rosebench.serve.config import ServeConfig, load_serve_config, register_serve_config
from rosebench.tracking.settings import redact

if TYPE_CHECKING:
    from rosebench.engine.engine import Engine
    from rosebench.serve.app import ServerState

SERVER_FILE = "server.json"
# Set by the runner (target=serve) to its pid: a server started for a run ends with it.
PARENT_ENV = "ROSEBENCH_SERVE_PARENT_PID"
_PR_SET_PDEATHSIG = 1
register_serve_config()


def serve(config: ServeConfig, out_dir: Path) -> int:
    """Serve until a stop signal; returns the exit code. Imports torch and FastAPI only now, so that a
    config error is told fast."""
    from rosebench.engine.engine import Engine
    from rosebench.engine.weights import model_and_tokenizer
    from rosebench.serve.app import ServerState, build_app
    from rosebench.serve.engine_loop import EngineLoop
    from rosebench.serve.metrics import ServerMetrics

    settings = config.serve
    # The runner's choice (model_and_tokenizer): the model's own tokenizer, and the engine stops at the
    # model's own EOS ids, so that the server answers what the run in-process generates.
    loop = EngineLoop(partial(Engine, config.engine), config.scheduler, ServerMetrics(config.model_name))
    try:
        _, tokenizer = model_and_tokenizer(config.engine)
        listener = _listen(settings.host, settings.port)
        engine = loop.start()
    except (OSError, ValueError) as error:
        raise ConfigError(str(error)) from None
    state = ServerState(
        loop=loop,
        tokenizer=tokenizer,
        model_name=config.model_name,
        defaults=config.sampling,
        profile=config.profile,
        out_dir=out_dir,
        api_key=settings.resolved_api_key(),
        max_queued=settings.max_queued,
    )
    host, port = listener.getsockname()[:2]
    url = f"http://{host}:{port}"
    uvicorn_config = uvicorn.Config(
        build_app(state),
        log_level="info",
        access_log=settings.access_log,
        # A backstop only: streams still open after grace_s are ended by the engine loop first.
        timeout_graceful_shutdown=int(settings.grace_s) + 5,
    )
    server = _Server(uvicorn_config, state, settings.grace_s, lambda: _announce(out_dir, url, config, engine))
    server.run(sockets=[listener])
    return 0 if server.stop_signal is None else 128 + server.stop_signal


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the engine is built: a port in use fails in one line, at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as error:
        listener.close()
        raise OSError(
            f"serve.host={host} serve.port={port}: cannot listen there ({error.strerror})"
        ) from None
    listener.listen(2048)
    listener.set_inheritable(True)
    return listener


def _announce(out_dir: Path, url: str, config: ServeConfig, engine: Engine) -> None:
    # The engine's resolved config (context, slots, block budget, CUDA graphs): what a run's results
    # record as the engine that ran, as in-process.
    about = {"url": url, "pid": os.getpid(), "model": config.model_name, "engine": asdict(engine.config)}
    write_atomic(out_dir / SERVER_FILE, json.dumps(about) + "\n")
    print(
        f"rosebench.serve: {config.model_name} on {engine.device} ({config.engine.dtype}) at {url}; "
        f"folder {out_dir}",
        file=sys.stderr,
        flush=True,
    )


class _Server(uvicorn.Server):
    """uvicorn's server, with rosebench's stop: the first SIGINT or SIGTERM drains (new requests get 503,
    in-flight streams have ``grace_s`` to finish, then end with an error event); a second SIGINT forces the
    exit. The signal is not raised again afterwards (uvicorn's default): the process exits with 128 + its
    number, as the runner does."""

    def __init__(
        self, config: uvicorn.Config, state: ServerState, grace_s: float, announce: Callable[[], None]
    ):
        super().__init__(config)
        self.state, self.grace_s, self.announce = state, grace_s, announce
        self.stop_signal: int | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.announce()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.stop_signal is not None:
            if sig == signal.SIGINT:
                self.force_exit = True
            return
        self.stop_signal = sig
        self.state.draining = True
        name = signal.Signals(sig).name
        print(
            f"rosebench.serve: {name}: draining, {self.grace_s:g} s for open streams",
            file=sys.stderr,
            flush=True,
        )
        self.state.loop.end_all_later(self.grace_s, "the server is shutting down")
        self.should_exit = True


def _end_with_parent() -> None:
    """A server started for a run must not outlive it, even when the runner is killed with SIGKILL and
    cannot stop it: the kernel sends this process SIGTERM (its drain) when the runner dies (Linux)."""
    parent = os.environ.get(PARENT_ENV)
    if parent is None or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(parent):  # it died before the line above took effect
        os.kill(os.getpid(), signal.SIGTERM)


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="serve")
def _hydra_main(cfg: DictConfig) -> None:
    os.chdir(HydraConfig.get().runtime.cwd)  # engine.weights stays relative to where the user launched
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    _scrub_secrets(out_dir)
    try:
        code = serve(load_serve_config(cfg), out_dir)
    except ConfigError as error:
        print(f"rosebench.serve: error: {error}", file=sys.stderr)
        sys.exit(1)
    sys.exit(code)


def _scrub_secrets(out_dir: Path) -> None:
    """Hydra wrote the overrides, an API key included, into .hydra/: the key is taken out of them."""
    for path in (out_dir / ".hydra").glob("*.yaml"):
        if path.is_file() and (clean := redact(text := path.read_text())) != text:
            write_atomic(path, clean)


def main() -> None:
    _end_with_parent()
    _hydra_main()


if __name__ == "__main__":
    main()
