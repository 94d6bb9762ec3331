"""One rank of the end-to-end tests (run by test_vllm.py, one process per rank).

    python _vllm_worker.py SCENARIO RANK WORLD PORT OUTDIR

SCENARIO is ``tp2`` (TP=2, 2 ranks) or ``tp2pp2`` (TP=2 x PP=2, 4 ranks). ``ASCEND_TEST_APPLY``
says how patches are applied: ``plugin`` (vLLM's ``load_general_plugins()``, i.e. the installed entry
point), ``direct`` (``ascend_patch.apply_all()``) or ``none``. With ``ASCEND_TEST_COMPARE=1`` every
operation is run a second time with vLLM's own ``CpuCommunicator`` swapped in on the same groups
(unpatched vLLM, same process, same inputs).

The rank writes ``OUTDIR/rank<R>.pt``: ``{"info": {...}, "results": {tag: {name: tensor}}}``.
Inputs are deterministic (:func:`make_input`), so the test can recompute expected values.
"""

from __future__ import annotations

import collections
import logging
import os
import sys
import time

DTYPES = ["float32", "bfloat16", "float16"]
# torch.distributed entry points vLLM calls for tensors; counted to prove they are not used.
GLOO_FUNCS = [
    "all_reduce", "all_gather_into_tensor", "reduce_scatter_tensor", "gather", "broadcast",
    "send", "recv", "isend", "irecv", "all_gather",
]


def make_input(name: str, rank: int, dtype: str, shape: tuple[int, ...]):
    """Deterministic input of ``name`` on ``rank``."""
    import torch

    seed = (hash_name(name) * 131 + rank * 7 + DTYPES.index(dtype)) % (2**31)
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 4).to(getattr(torch, dtype))


def hash_name(name: str) -> int:
    h = 0
    for c in name.encode():
        h = (h * 31 + c) % (2**31)
    return h


class LogLines(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(f"{record.levelname} {record.getMessage()}")


def count_gloo():
    """Wraps torch.distributed's tensor entry points with counters; returns the Counter."""
    import torch.distributed as dist

    counts: collections.Counter = collections.Counter()
    for name in GLOO_FUNCS:
        original = getattr(dist, name)

        def wrapper(*args, __name=name, __orig=original, **kwargs):
            counts[__name] += 1
            return __orig(*args, **kwargs)

        setattr(dist, name, wrapper)
    return counts


def shm_mappings() -> list[str]:
    with open("/proc/self/maps") as f:
        return sorted({w for line in f for w in line.split() if "ascend-hccl-" in w})


def tp_ops(results: dict, rank_in_tp: int, tp, pp_stage: int, p2p_on_tp: bool) -> None:
    """Every TP operation, for each dtype; results[name] = tensor (or dict entries)."""
    import torch
    from vllm.distributed.communication_op import (
        broadcast_tensor_dict,
        tensor_model_parallel_all_gather,
        tensor_model_parallel_all_reduce,
        tensor_model_parallel_gather,
        tensor_model_parallel_reduce_scatter,
    )

    r = tp.rank  # global rank: inputs differ per rank
    if p2p_on_tp:
        # vLLM compiles the model's forward with fullgraph=True, collectives included: they must be
        # traceable (the patched ones are opaque custom ops) and give what the eager ones give.
        import torch

        def forward(t):
            t = tensor_model_parallel_all_reduce(t * 2) + 1
            return tensor_model_parallel_reduce_scatter(tensor_model_parallel_all_gather(t, dim=0), dim=0)

        x = make_input("compiled", r, "float32", (4, 8))
        results["compiled/float32"] = torch.compile(forward, fullgraph=True)(x)
        results["compiled_eager/float32"] = forward(x)
        assert torch.equal(results["compiled/float32"], results["compiled_eager/float32"]), "compiled != eager"
    for dt in DTYPES:
        x = make_input("all_reduce", r, dt, (4, 8))
        y = tensor_model_parallel_all_reduce(x)
        results[f"all_reduce/{dt}"] = y.clone()
        big = make_input("all_reduce_big", r, dt, (300, 1000))  # above the 1 MiB staging slot
        results[f"all_reduce_big/{dt}"] = tensor_model_parallel_all_reduce(big).clone()
        results[f"all_gather_last/{dt}"] = tensor_model_parallel_all_gather(make_input("ag", r, dt, (3, 5)), dim=-1)
        results[f"all_gather_0/{dt}"] = tensor_model_parallel_all_gather(make_input("ag0", r, dt, (3, 5)), dim=0)
        results[f"reduce_scatter_0/{dt}"] = tensor_model_parallel_reduce_scatter(make_input("rs", r, dt, (4, 6)), dim=0)
        results[f"reduce_scatter_last/{dt}"] = tensor_model_parallel_reduce_scatter(
            make_input("rs1", r, dt, (3, 4)), dim=-1
        )
        for dst in (0, 1):
            g = tensor_model_parallel_gather(make_input(f"gather{dst}", r, dt, (2, 3)), dst=dst, dim=dst - 1)
            if rank_in_tp == dst:
                results[f"gather_dst{dst}/{dt}"] = g
            else:
                assert g is None, "gather returns None off dst"
        for src in (0,):  # vLLM's TP group broadcasts metadata through its message queue: src 0 only
            sent = {
                "a": make_input(f"btd{src}", r, dt, (2, 5)),
                "ids": torch.arange(6, dtype=torch.int64) + 10 * pp_stage,
                "mask": torch.tensor([True, False, True]),
                "empty": torch.empty(0, 4, dtype=getattr(torch, dt)),
                "tag": f"stage{pp_stage}",
                "n": 7,
            }
            d = broadcast_tensor_dict(sent if rank_in_tp == src else None, src=src)
            if rank_in_tp == src:
                assert d is sent, "the source gets its own dict back"
            else:
                assert list(d) == list(sent), f"keys in order: {list(d)}"
                assert d["tag"] == f"stage{pp_stage}" and d["n"] == 7
            for k, v in d.items():
                if isinstance(v, torch.Tensor):
                    results[f"btd{src}_{k}/{dt}"] = v.clone()
        t = make_input("bcast", r, dt, (3, 3))
        out = tp.broadcast(t, src=1)
        assert out is t
        results[f"broadcast/{dt}"] = t.clone()
        if p2p_on_tp:
            if rank_in_tp == 0:
                tp.send(make_input("p2p", r, dt, (2, 7)), dst=1)
                tp.send_tensor_dict({"h": make_input("p2pd", r, dt, (3, 2)), "s": "x", "e": torch.empty(0)}, dst=1)
            else:
                results[f"tp_recv/{dt}"] = tp.recv(torch.Size([2, 7]), getattr(torch, dt), src=0)
                d = tp.recv_tensor_dict(src=0)
                assert d["s"] == "x" and d["e"].numel() == 0
                results[f"tp_recv_dict/{dt}"] = d["h"]


def pp_ops(results: dict, pp, tp) -> None:
    """Stage 0 -> stage 1 (tensor dicts with and without all_gather_group, send/recv), a reply
    stage 1 -> stage 0, and a broadcast_tensor_dict on the PP group."""
    import torch

    r = pp.rank  # global rank
    for dt in DTYPES:
        dtype = getattr(torch, dt)
        if pp.is_first_rank:
            payload = {
                "hidden_states": make_input("pp_h", tp.rank_in_group, dt, (4, 6)),
                "residual": make_input("pp_r", tp.rank_in_group, dt, (4, 6)),
                "odd": make_input("pp_o", tp.rank_in_group, dt, (3,)),  # not divisible by TP
                "empty": torch.empty(0, dtype=dtype),
                "step": 3,
            }
            assert pp.send_tensor_dict(payload) is None
            # The all_gather_group path assumes tensors replicated over TP (as activations are).
            replicated = {k: (make_input(k, 0, dt, v.shape) if isinstance(v, torch.Tensor) and v.numel() else v)
                          for k, v in payload.items()}
            pp.send_tensor_dict(replicated, all_gather_group=tp)
            pp.send(make_input("pp_send", tp.rank_in_group, dt, (5, 2)))
            back = pp.recv_tensor_dict(src=1)
            results[f"pp_reply/{dt}"] = back["reply"]
        else:
            got = pp.recv_tensor_dict()
            assert got["step"] == 3 and got["empty"].numel() == 0
            for k in ("hidden_states", "residual", "odd"):
                results[f"pp_dict_{k}/{dt}"] = got[k].clone()
            got = pp.recv_tensor_dict(all_gather_group=tp)
            for k in ("hidden_states", "residual", "odd"):
                results[f"pp_dict_ag_{k}/{dt}"] = got[k].clone()
            results[f"pp_recv/{dt}"] = pp.recv(torch.Size([5, 2]), dtype)
            pp.send_tensor_dict({"reply": make_input("pp_reply", tp.rank_in_group, dt, (2, 2))}, dst=0)
        for src in (0, 1):  # the PP group has no message queue: metadata over gloo, any src
            d = pp.broadcast_tensor_dict(
                {"x": make_input(f"pp_btd{src}", r, dt, (3, 4)), "k": "v"} if pp.rank_in_group == src else None,
                src=src,
            )
            assert d["k"] == "v"
            results[f"pp_btd{src}/{dt}"] = d["x"].clone()


def unpatched(groups):
    """Context: each group's communicator swapped for vLLM's CpuCommunicator on the same process
    groups (what unpatched vLLM builds), with the tensor-dict fast path off."""
    import contextlib

    from vllm.distributed.device_communicators.cpu_communicator import CpuCommunicator

    @contextlib.contextmanager
    def swap():
        saved = []
        for g in groups:
            saved.append((g, g.device_communicator, g.use_cpu_custom_send_recv))
            g.device_communicator = CpuCommunicator(
                cpu_group=g.cpu_group, device=g.device, device_group=g.device_group, unique_name=g.unique_name
            )
            g.use_cpu_custom_send_recv = False
        try:
            yield
        finally:
            for g, comm, flag in saved:
                g.device_communicator = comm
                g.use_cpu_custom_send_recv = flag

    return swap()


def main() -> None:
    scenario, rank, world, port, outdir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    t0 = time.time()
    lines = LogLines()
    logging.getLogger("ascend_patch").addHandler(lines)
    logging.getLogger("ascend_patch").setLevel(logging.DEBUG)

    import torch
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.distributed import parallel_state as ps

    mode = os.environ.get("ASCEND_TEST_APPLY", "direct")
    report = []
    if mode == "plugin":
        from vllm.plugins import load_general_plugins

        load_general_plugins()
        load_general_plugins()  # vLLM's guard; ours too (register twice below)
        import ascend_patch.plugin

        ascend_patch.plugin.register()
        import ascend_patch

        report = ascend_patch.report()
    elif mode == "direct":
        import ascend_patch

        report = ascend_patch.apply_all()
        again = ascend_patch.apply_all()
        assert again == report, "applying twice changes nothing"
    info: dict = {"report": report, "import_s": time.time() - t0}

    gloo = count_gloo()
    tp_size, pp_size = {"tp2": (2, 1), "tp2pp2": (2, 2)}[scenario]
    results: dict[str, dict] = {}
    with set_current_vllm_config(VllmConfig()):
        ps.init_distributed_environment(
            world_size=world, rank=rank, distributed_init_method=f"tcp://127.0.0.1:{port}",
            local_rank=rank, backend="gloo",
        )
        # Through the re-export, which the patch rebinds too.
        import vllm.distributed

        vllm.distributed.initialize_model_parallel(tensor_model_parallel_size=tp_size, pipeline_model_parallel_size=pp_size)
        tp, pp, ep = ps.get_tp_group(), ps.get_pp_group(), ps.get_ep_group()
        groups = [g for g in (tp, pp, ep, ps.get_dp_group(), ps.get_pcp_group(), ps.get_dcp_group()) if g.device_communicator]
        info["comm_class"] = {g.unique_name: type(g.device_communicator).__name__ for g in groups}
        info["custom_send_recv"] = {g.unique_name: bool(g.use_cpu_custom_send_recv) for g in groups}
        info["group_ranks"] = {g.unique_name: g.group_ranks for g in (tp, pp, ep)}
        from ascend_patch.worker import patch_parallel_state

        info["layout_checked"] = dict(patch_parallel_state.last_checked)
        try:
            from ascend_patch.communicator import AscendCommunicator, live_communicators

            info["live"] = {str(list(k)): v for k, v in live_communicators().items()}
            info["tp_ep_share"] = (
                isinstance(tp.device_communicator, AscendCommunicator)
                and tp.device_communicator._comm is ep.device_communicator._comm
            )
        except ImportError:
            AscendCommunicator = None
        info["wrapped"] = {
            name: getattr(obj, "__ascend_patch__", None)
            for name, obj in [
                ("ps.initialize_model_parallel", ps.initialize_model_parallel),
                ("vllm.distributed.initialize_model_parallel", vllm.distributed.initialize_model_parallel),
            ]
        }

        def run(tag: str) -> None:
            res: dict = {}
            gloo.clear()
            calls_before = collections.Counter(AscendCommunicator.calls) if AscendCommunicator else collections.Counter()
            tp_ops(res, tp.rank_in_group, tp, pp.rank_in_group, p2p_on_tp=pp_size == 1)
            if pp_size > 1:
                pp_ops(res, pp, tp)
            tp.barrier()
            results[tag] = res
            info[f"gloo_{tag}"] = dict(gloo)
            after = collections.Counter(AscendCommunicator.calls) if AscendCommunicator else collections.Counter()
            info[f"ascend_calls_{tag}"] = dict(after - calls_before)

        run("main")
        if os.environ.get("ASCEND_TEST_COMPARE") == "1":
            with unpatched(groups):
                run("unpatched")
        tp.barrier()
        info["maps_before_destroy"] = shm_mappings()
        vllm.distributed.destroy_model_parallel()
        vllm.distributed.destroy_distributed_environment()
    info["maps_after_destroy"] = shm_mappings()
    if AscendCommunicator is not None:
        info["live_after_destroy"] = {str(list(k)): v for k, v in live_communicators().items()}
    info["log"] = lines.lines
    info["seconds"] = time.time() - t0
    torch.save({"info": info, "results": results}, os.path.join(outdir, f"rank{rank}.pt"))


if __name__ == "__main__":
    main()
