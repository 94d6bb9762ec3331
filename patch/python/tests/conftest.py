"""Shared helpers: the environment of spawned vLLM ranks, spawning them with a timeout, and the
shared-memory segments of ours in /dev/shm.

The library under test is the one ``ASCEND_PATCH_LIB`` names (the cdylib cargo builds); the
interpreter is the one running pytest (``scripts/setup-python.sh`` prints it).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
PKG_ROOT = TESTS.parent  # patch/python: ascend_patch is imported from here, not from site-packages
WORKER = TESTS / "_vllm_worker.py"
SPAWN_TIMEOUT = float(os.environ.get("ASCEND_TEST_TIMEOUT", "240"))

sys.path.insert(0, str(PKG_ROOT))


def pytest_configure(config):
    lib = os.environ.get("ASCEND_PATCH_LIB")
    if not lib:
        raise pytest.UsageError(
            "set ASCEND_PATCH_LIB to the libascend_patch.so cargo builds "
            "(cargo build --release -p ascend-patch; target/release/libascend_patch.so)"
        )
    if not Path(lib).is_file():
        raise pytest.UsageError(f"ASCEND_PATCH_LIB={lib} does not exist")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shm_segments() -> set[str]:
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith("ascend-hccl-")}
    except FileNotFoundError:
        return set()


def plugin_dist_info(root: Path) -> Path:
    """A dist-info declaring the package's entry points (from pyproject.toml), so vLLM's
    load_general_plugins() finds the plugin in PKG_ROOT without installing the package."""
    project = tomllib.loads((PKG_ROOT / "pyproject.toml").read_text())["project"]
    d = root / f"ascend_patch-{project['version']}.dist-info"
    d.mkdir(parents=True, exist_ok=True)
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    lines = []
    for group, entries in project["entry-points"].items():
        lines.append(f"[{group}]")
        lines += [f"{k} = {v}" for k, v in entries.items()]
    (d / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return root


def base_env(extra_path: Path | None = None, **overrides: str) -> dict[str, str]:
    """The environment of a spawned process: CPU platform, this checkout's ascend_patch first on the
    path, short HCCL timeouts (a hang fails instead of waiting half an hour), and none of the
    caller's patch switches."""
    env = dict(os.environ)
    for k in ("ASCEND_PATCH_DISABLE", "VLLM_VERSION", "VLLM_PLUGINS", "ASCEND_TEST_APPLY", "ASCEND_TEST_COMPARE"):
        env.pop(k, None)
    paths = [str(PKG_ROOT)] + ([str(extra_path)] if extra_path else [])
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env.update(
        PYTHONPATH=os.pathsep.join(paths),
        VLLM_TARGET_DEVICE="cpu",
        HCCL_CONNECT_TIMEOUT="90",
        HCCL_EXEC_TIMEOUT="90",
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1",
    )
    env.update(overrides)
    return env


def spawn_ranks(scenario: str, world: int, env: dict[str, str], outdir: Path) -> list[dict]:
    """Runs the worker script as ``world`` processes; returns each rank's saved dict (plus its
    stderr under "stderr"). Fails (after killing them) when they do not finish in time."""
    import torch

    outdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    procs = []
    logs = []
    for rank in range(world):
        log = open(outdir / f"rank{rank}.log", "w+")
        logs.append(log)
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER), scenario, str(rank), str(world), str(port), str(outdir)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    deadline = time.monotonic() + SPAWN_TIMEOUT
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait()
        pytest.fail(f"{scenario}: ranks did not finish in {SPAWN_TIMEOUT:.0f} s\n" + _tails(logs))
    finally:
        for log in logs:
            log.flush()
    codes = [p.returncode for p in procs]
    if any(codes):
        pytest.fail(f"{scenario}: exit codes {codes}\n" + _tails(logs))
    out = []
    for rank, log in enumerate(logs):
        data = torch.load(outdir / f"rank{rank}.pt", weights_only=False)
        log.seek(0)
        data["stderr"] = log.read()
        log.close()
        out.append(data)
    return out


def _tails(logs) -> str:
    parts = []
    for rank, log in enumerate(logs):
        log.flush()
        log.seek(0)
        text = log.read()
        parts.append(f"--- rank {rank} ---\n" + "\n".join(text.splitlines()[-40:]))
    return "\n".join(parts)


def run_python(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Runs this interpreter with ``args``; fails on timeout."""
    try:
        return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{args} did not finish in {timeout} s: {e.stderr}")
