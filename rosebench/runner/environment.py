"""The environment block of results.json: enough to tell two machines' numbers apart."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from rosebench.engine.cpu_linear import bf16_matrix_units


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    """The commit of the rosebench checkout, when it runs from one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def package_version() -> str:
    try:
        return version("rosebench")
    except PackageNotFoundError:
        return "unknown"


def environment(device: torch.device) -> dict:
    cuda = device.type == "cuda"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if cuda else cpu_name(),
        "cpu": cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # ATen's kernel level: "AVX2", "AVX512"
        "cpu_bf16_matrix_units": bf16_matrix_units(),  # [] = bf16 runs slower than float32 on this CPU
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "rosebench": package_version(),
        "git_commit": git_commit(),
        "slurm_job_id": slurm_job_id(),
    }


def slurm_job_id() -> str | None:
    """The Slurm job running this process (``123_4`` for a task of a job array), None outside Slurm."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")
