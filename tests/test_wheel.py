"""The built wheel is a working rosebench: configs and tokenizer ship inside it, and the CLI runs from it.

The wheel is built from a copy of the working tree (so the checkout gets no build/ folder), installed
without dependencies into a fresh venv that reuses the packages of the interpreter running the tests
(torch, hydra, ...), and run from a folder outside the repository.

That interpreter may be the machine's own, a venv's or a conda environment's. ``venv --system-site-packages``
would expose the *base* interpreter's packages, not an active venv's, so the new venv is pointed at this
interpreter's site-packages with a ``.pth`` file instead.
"""

from __future__ import annotations

import re
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from cli_helpers import REPO, assert_ok, cli_env, describe, read_results, run_cli

pytestmark = pytest.mark.slow

_SKIP = shutil.ignore_patterns(
    ".git",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".venv",
    "outputs",
    "multirun",
    "mlruns",
    "mlflow.db*",
)


def _copy_source(dest: Path) -> Path:
    """The files git would ship (tracked or not ignored), else the tree without build and run outputs."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=REPO,
            capture_output=True,
            check=True,
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(REPO, dest, ignore=_SKIP)
        return dest
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=cli_env(pythonpath=False), capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = _copy_source(tmp_path_factory.mktemp("src"))
    outdir = tmp_path_factory.mktemp("dist")
    # No isolation: build with the setuptools installed here instead of downloading one (no network in CI
    # sandboxes); no dependency check: setuptools >= 70.1 builds wheels without the "wheel" distribution.
    build = [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--skip-dependency-check"]
    proc = _run([*build, "--outdir", str(outdir)], source)
    assert proc.returncode == 0, describe(proc)
    (built,) = outdir.glob("rosebench-*.whl")
    return built


def _site_dirs() -> list[str]:
    """Where this interpreter finds installed packages, in its own order."""
    paths = sysconfig.get_paths()
    dirs = [*site.getsitepackages(), paths["purelib"], paths["platlib"]]
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return [d for d in dict.fromkeys(dirs) if Path(d).is_dir()]


def _requirements(wheel: Path) -> list[str]:
    """The distribution names the wheel depends on (extras left out)."""
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        message = Parser().parsestr(archive.read(metadata).decode())
    requires = [r for r in message.get_all("Requires-Dist") or [] if "extra ==" not in r]
    return [re.match(r"[A-Za-z0-9._-]+", r).group(0) for r in requires]


_MISSING = """
import importlib.metadata as metadata, sys
missing = []
for name in sys.argv[1:]:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        missing.append(name)
print(" ".join(missing))
"""


@pytest.fixture(scope="module")
def venv_python(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("venv")
    proc = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], venv)
    assert proc.returncode == 0, describe(proc)
    python = venv / "bin" / "python"
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], venv)
    assert purelib.returncode == 0, describe(purelib)
    # Plain directory lines: the .pth files inside them (this checkout's editable install) stay unread.
    pth = Path(purelib.stdout.strip()) / "tests_running_interpreter.pth"
    pth.write_text("\n".join(_site_dirs()) + "\n")

    needed = [*_requirements(wheel), "pip"]
    missing = _run([str(python), "-c", _MISSING, *needed], venv)
    assert missing.returncode == 0, describe(missing)
    if missing.stdout.split():
        pytest.fail(
            f"the test venv cannot see {missing.stdout.split()} through {sys.executable}'s site-packages "
            f"{_site_dirs()}: install the test extras into the interpreter that runs pytest "
            '(pip install -e ".[test]")'
        )
    # --ignore-installed: pip must not touch the editable rosebench it can see through the .pth file.
    install = [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed"]
    proc = _run([*install, str(wheel)], venv)
    assert proc.returncode == 0, describe(proc)
    return python


def test_documented_launchers_come_with_a_plain_install(wheel: Path) -> None:
    """README: hydra/launcher=parallel (joblib) and slurm (submitit) after `pip install -e .`."""
    assert {"hydra-joblib-launcher", "hydra-submitit-launcher", "filelock"} <= set(_requirements(wheel))


def test_wheel_ships_configs_and_tokenizer(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in (
        "rosebench/__main__.py",
        "rosebench/conf/config.yaml",
        "rosebench/conf/engine/tiny.yaml",
        "rosebench/conf/engine/gpt2.yaml",
        "rosebench/conf/sampling/top_k_top_p.yaml",
        "rosebench/conf/tracking/off.yaml",
        "rosebench/conf/hydra/launcher/parallel.yaml",
        "rosebench/engine/assets/gpt2.tiktoken",
    ):
        assert name in names, f"{name} is not in {wheel.name}"
    assert not any(n.startswith(("tests/", "conf/")) for n in names), "the wheel ships top-level folders"


def test_installed_wheel_runs_outside_the_repo(venv_python: Path, tmp_path: Path) -> None:
    venv = venv_python.parent.parent
    where = _run([str(venv_python), "-c", "import rosebench; print(rosebench.__file__)"], tmp_path)
    assert where.returncode == 0, describe(where)
    module = Path(where.stdout.strip()).resolve()
    assert module.is_relative_to(venv.resolve()), f"the venv imports {module}, not the wheel's rosebench"
    # Its dependencies are those of the interpreter running the tests, whatever kind of environment that is.
    deps = "import hydra, torch; print(torch.__file__); print(hydra.__file__)"
    seen = _run([str(venv_python), "-c", deps], tmp_path)
    assert seen.returncode == 0, describe(seen)
    import hydra
    import torch

    assert seen.stdout.split() == [torch.__file__, hydra.__file__]

    proc = run_cli(
        tmp_path,
        "engine=tiny",
        "tracking=off",
        "num_requests=2",
        "max_new_tokens=4",
        "warmup=0",
        "repeat=1",
        python=str(venv_python),
        pythonpath=False,
    )
    assert_ok(proc)
    (results_file,) = tmp_path.glob("outputs/*/*/results.json")
    results = read_results(results_file.parent)
    assert results["metrics"]["requests"] == 2
    assert results["config"]["engine"]["model"] == "tiny"
    assert (results_file.parent / "outputs.jsonl").is_file()
