#!/usr/bin/env python3
"""vLLM's tensor_model_parallel_all_reduce with 2 worker processes (TP=2, CPU, gloo), patched by
ascend_patch vs unpatched vLLM, in the same run.

    python bench_allreduce.py [--sizes 4K,16M] [--json-only]

Each mode starts its own 2 processes (the unpatched run never imports ascend_patch's patches). In
each process: warm-up calls, then best-of-N batches of back-to-back calls (time per call = batch
time / calls; the slowest rank's best counts). The tensor is float32 and reset between batches.

Each rank gets its share of the cores for torch's OpenMP threads (OMP_NUM_THREADS = cores / 2 unless
set; --omp-threads overrides), as vLLM's CPU worker splits the cores between its ranks
(VLLM_CPU_OMP_THREADS_BIND): with more OpenMP threads than cores, idle OpenMP workers spin on the
cores the collectives need (both modes get slower; on 2 cores the patched 16 MiB figure doubles).
Prints a table and one JSON line: {"bench": "vllm_all_reduce", "results": [{bytes, patched_us,
unpatched_us, ratio}]}. The library is found as ascend_patch finds it (ASCEND_PATCH_LIB, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def parse_size(s: str) -> int:
    s = s.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1], 1)
    return int(s[:-1] if s[-1] in "KMG" else s) * mult


def plan(nbytes: int) -> tuple[int, int, int]:
    """(warm-up calls, calls per batch, batches) for a size."""
    if nbytes <= 64 << 10:
        return 200, 100, 15
    return 3, 4, 20


def worker(rank: int, port: int, mode: str, sizes: list[int], out: str) -> None:
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    import torch

    if mode == "patched":
        sys.path.insert(0, str(HERE))
        import ascend_patch

        report = ascend_patch.apply_all()
        assert all(p["status"] == "applied" for p in report), report
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.distributed import parallel_state as ps
    from vllm.distributed.communication_op import tensor_model_parallel_all_reduce

    results = {}
    with set_current_vllm_config(VllmConfig()):
        ps.init_distributed_environment(2, rank, f"tcp://127.0.0.1:{port}", rank, "gloo")
        ps.initialize_model_parallel(tensor_model_parallel_size=2)
        tp = ps.get_tp_group()
        comm = type(tp.device_communicator).__name__
        for nbytes in sizes:
            x = torch.ones(nbytes // 4, dtype=torch.float32)
            # The result is what the call returns (AscendCommunicator's is a new tensor; gloo's is x).
            y = tensor_model_parallel_all_reduce(x)
            assert torch.all(y == 2), f"wrong all-reduce result: {y[:4].tolist()}"
            warm, calls, batches = plan(nbytes)
            for _ in range(warm):
                tensor_model_parallel_all_reduce(x)
            best = float("inf")
            for _ in range(batches):
                x.fill_(1.0)
                tp.barrier()
                t0 = time.perf_counter()
                for _ in range(calls):
                    tensor_model_parallel_all_reduce(x)
                best = min(best, (time.perf_counter() - t0) / calls)
            results[nbytes] = best * 1e6
        ps.destroy_model_parallel()
        ps.destroy_distributed_environment()
    with open(out, "w") as f:
        json.dump({"comm": comm, "us": results}, f)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_mode(mode: str, sizes: list[int], timeout: float, omp_threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        env = dict(os.environ, VLLM_TARGET_DEVICE="cpu", OMP_NUM_THREADS=str(omp_threads))
        env.pop("ASCEND_PATCH_DISABLE", None)
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--worker", str(rank), str(port), mode,
                 ",".join(map(str, sizes)), f"{tmp}/rank{rank}.json"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for rank in range(2)
        ]
        deadline = time.monotonic() + timeout
        errs = []
        for p in procs:
            try:
                _, err = p.communicate(timeout=max(1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                for q in procs:
                    if q.poll() is None:
                        q.kill()
                raise SystemExit(f"{mode}: workers did not finish in {timeout} s")
            errs.append(err)
        if any(p.returncode for p in procs):
            raise SystemExit(f"{mode}: worker failed:\n" + "\n".join(e[-3000:] for e in errs))
        ranks = [json.load(open(f"{tmp}/rank{r}.json")) for r in range(2)]
    return {
        "comm": ranks[0]["comm"],
        "us": {int(n): max(r["us"][str(n)] for r in ranks) for n in sizes},
    }


def human(n: int) -> str:
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        rank, port, mode, sizes, out = sys.argv[2:7]
        worker(int(rank), int(port), mode, [int(s) for s in sizes.split(",")], out)
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="4K,16M", help="tensor sizes in bytes (suffixes K, M)")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--json-only", action="store_true")
    default_omp = int(os.environ.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 2) // 2))
    ap.add_argument("--omp-threads", type=int, default=default_omp, help="OpenMP threads per rank")
    args = ap.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    patched = run_mode("patched", sizes, args.timeout, args.omp_threads)
    unpatched = run_mode("unpatched", sizes, args.timeout, args.omp_threads)
    rows = []
    for n in sizes:
        p, u = patched["us"][n], unpatched["us"][n]
        rows.append({"bytes": n, "patched_us": round(p, 2), "unpatched_us": round(u, 2), "ratio": round(u / p, 1)})
    if not args.json_only:
        print(
            "vLLM tensor_model_parallel_all_reduce, TP=2 (2 processes), float32, best of N, slowest rank, "
            f"{args.omp_threads} OpenMP thread(s) per rank on {os.cpu_count()} cores"
        )
        print(f"patched: {patched['comm']}   unpatched: {unpatched['comm']} (gloo)")
        print(f"{'size':>8} {'patched µs':>12} {'unpatched µs':>14} {'speed-up':>9}")
        for r in rows:
            print(f"{human(r['bytes']):>8} {r['patched_us']:>12.2f} {r['unpatched_us']:>14.2f} {r['ratio']:>8.1f}x")
    print(json.dumps({"bench": "vllm_all_reduce", "tp": 2, "dtype": "float32", "omp_threads": args.omp_threads,
                      "results": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
