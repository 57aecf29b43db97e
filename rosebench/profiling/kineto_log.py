"""libkineto's routine lines on stderr, held back; every other line it (or anything) writes passes unchanged.

libkineto, torch.profiler's C++ backend, logs with its own ``Logger`` straight to ``std::cerr`` (file
descriptor 2), not through Python. torch raises kineto's threshold to ERROR when a profiler first prepares
a trace (``suppressLibkinetoLogMessages``, unless ``KINETO_LOG_LEVEL`` is set), yet two kinds of line pass:

- ``USDT:<time> <pid>:<tid> SyncActivityProfilerHandler.cpp:NN] profiler_start`` and ``... profiler_stop``:
  markers for USDT probes, at severity USDT (5), above ERROR (4), on every start and stop of a trace;
- ``ERROR:<time> <pid>:<tid> DeviceProperties.cpp:NN] gpuGetDeviceCount failed with code 35``: a CUDA build
  of torch on a machine with no driver (35: ``cudaErrorInsufficientDriver``; 100 with a driver and no GPU),
  once per process, when the first trace stops and kineto reads the devices' properties for its metadata.
  Without CUDA activity in the trace nothing is lost but that metadata.

``KINETO_LOG_LEVEL=6`` would silence both, and every real kineto error with them (CUPTI failing to start on a
GPU, a dropped buffer). So instead fd 2 is captured around the profiler calls that start or stop a trace
(``QuietKineto``); afterwards every captured line is written back to fd 2, except the start/stop markers and,
when no CUDA activity is profiled, the failed GPU count.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator
from typing import BinaryIO

_MARKER = re.compile(r"USDT:[^\]]*\] profiler_(start|stop)\s*")
_NO_GPU = re.compile(r"ERROR:[^\]]*\] gpuGetDeviceCount failed with code \d+\s*")
CLEARS_EVENTS = "Warning: Profiler clears events at the end of each cycle"  # torch's, on a second cycle


def is_kineto_noise(line: str, *, cuda_profiled: bool) -> bool:
    """Whether ``line`` (one line of stderr, with or without its newline) is one of kineto's routine lines."""
    if _MARKER.fullmatch(line):
        return True
    return not cuda_profiled and _NO_GPU.fullmatch(line) is not None


def drop_kineto_noise(text: bytes, *, cuda_profiled: bool) -> bytes:
    """``text`` without kineto's routine lines; every other byte, in order."""
    return b"".join(
        line
        for line in text.splitlines(keepends=True)
        if not is_kineto_noise(line.decode(errors="replace"), cuda_profiled=cuda_profiled)
    )


class QuietKineto:
    """Within ``with QuietKineto(...) as kineto``, wraps the profiler calls that may start or stop a trace
    (``with kineto.quiet():``): kineto's routine lines on fd 2 are dropped, everything else written there (by
    any thread, from C or Python) is written back as the call returns or raises. torch's note that each
    cycle's events are cleared is dropped too: each cycle is exported as it ends (``ProfileSession``).

    The capture file is made once, on entering, so that a wrapped call costs a few system calls: the last
    step of a cycle is still being recorded when the profiler's ``step()`` is called."""

    def __init__(self, *, cuda_profiled: bool) -> None:
        self.cuda_profiled = cuda_profiled
        self._capture: BinaryIO | None = None

    def __enter__(self) -> QuietKineto:
        self._capture = tempfile.TemporaryFile(buffering=0)
        return self

    def __exit__(self, *exc_info: object) -> None:
        capture, self._capture = self._capture, None
        capture.close()

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=CLEARS_EVENTS)
            with self._filtered_fd2():
                yield

    @contextlib.contextmanager
    def _filtered_fd2(self) -> Iterator[None]:
        capture = self._capture
        if capture is None:
            raise RuntimeError("QuietKineto.quiet() used outside its with-block")
        _flush_python_stderr()
        try:
            saved = os.dup(2)
        except OSError:  # no fd 2 to filter
            yield
            return
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            _flush_python_stderr()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            captured = capture.read()
            capture.seek(0)
            capture.truncate()
            _write_all(2, drop_kineto_noise(captured, cuda_profiled=self.cuda_profiled))


def _flush_python_stderr() -> None:
    for stream in {id(s): s for s in (sys.stderr, sys.__stderr__) if s is not None}.values():
        with contextlib.suppress(Exception):  # a closed or replaced stream: nothing buffered to move
            stream.flush()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
