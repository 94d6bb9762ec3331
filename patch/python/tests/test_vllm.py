"""End to end with real vLLM (0.33.0) on CPU with gloo: worker processes run
init_distributed_environment + initialize_model_parallel with the patches applied, and every
collective and point-to-point path vLLM has is checked against unpatched vLLM, for float32, bfloat16
and float16, and shown to go through AscendCommunicator rather than gloo.

Each spawned run does many checks (importing vLLM costs ~8 s per process): the module-scoped
fixtures run the processes once and the tests read what they saved.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import base_env, plugin_dist_info, run_python, shm_segments, spawn_ranks

from _vllm_worker import DTYPES, make_input

OPS = ["all_reduce", "all_gather", "reduce_scatter", "gather", "broadcast"]


def _run(tmp_path_factory, name, scenario, world, **env):
    before = shm_segments()
    root = tmp_path_factory.mktemp(name)
    ranks = spawn_ranks(scenario, world, base_env(plugin_dist_info(root / "site"), **env), root / "out")
    return {"ranks": ranks, "new_segments": shm_segments() - before}


@pytest.fixture(scope="module")
def tp2(tmp_path_factory):
    """TP=2, 2 processes, patches applied by vLLM's plugin loader (the entry point)."""
    return _run(tmp_path_factory, "tp2", "tp2", 2, ASCEND_TEST_APPLY="plugin")


@pytest.fixture(scope="module")
def tp2_disabled(tmp_path_factory):
    """The same run with the communicator patch disabled: plain vLLM collectives (CpuCommunicator)."""
    return _run(
        tmp_path_factory,
        "tp2_disabled",
        "tp2",
        2,
        ASCEND_TEST_APPLY="plugin",
        ASCEND_PATCH_DISABLE="worker/patch_communicator, worker/patch_nowhere",
    )


@pytest.fixture(scope="module")
def tp2pp2(tmp_path_factory):
    """TP=2 x PP=2, 4 processes, ascend_patch.apply_all(); each operation also run with vLLM's
    CpuCommunicator swapped in on the same groups (unpatched vLLM, same inputs)."""
    return _run(tmp_path_factory, "tp2pp2", "tp2pp2", 4, ASCEND_TEST_APPLY="direct", ASCEND_TEST_COMPARE="1")


def _assert_same(a: dict, b: dict, what: str) -> None:
    assert sorted(a) == sorted(b), f"{what}: different results: {sorted(set(a) ^ set(b))}"
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, f"{what}: {k}"
        assert torch.equal(a[k], b[k]), f"{what}: {k} differs:\n{a[k]}\n{b[k]}"


def _assert_dtypes_covered(results: dict) -> None:
    for dt in DTYPES:
        for op in ("all_reduce", "all_gather_last", "reduce_scatter_0", "broadcast", "btd0_a"):
            assert f"{op}/{dt}" in results, f"{op}/{dt} missing"


def _patch_lines(stderr_or_log: list[str], patch_id: str) -> list[str]:
    return [line for line in stderr_or_log if patch_id in line and ("applied" in line or "skipped" in line)]


# ---------------------------------------------------------------------------------------------
# TP=2, two processes


def test_tp2_plugin_applies_each_patch_once(tp2):
    for rank in tp2["ranks"]:
        info = rank["info"]
        assert [(p["id"], p["status"]) for p in info["report"]] == [
            ("worker/patch_communicator", "applied"),
            ("worker/patch_parallel_state", "applied"),
        ]
        # load_general_plugins() twice and register() once more: still one line per patch.
        for pid in ("worker/patch_communicator", "worker/patch_parallel_state"):
            assert len(_patch_lines(info["log"], pid)) == 1, info["log"]
        assert set(info["wrapped"].values()) == {"worker/patch_parallel_state"}, info["wrapped"]


def test_tp2_goes_through_ascend_not_gloo(tp2):
    for rank in tp2["ranks"]:
        info = rank["info"]
        assert set(info["comm_class"].values()) == {"AscendCommunicator"}, info["comm_class"]
        assert all(info["custom_send_recv"].values())
        assert info["gloo_main"] == {}, f"torch.distributed used for tensors: {info['gloo_main']}"
        calls = info["ascend_calls_main"]
        for op in OPS:
            assert calls.get(op, 0) > 0, (op, calls)
    sender, receiver = (r["info"]["ascend_calls_main"] for r in tp2["ranks"])
    assert sender["send"] > 0 and sender["send_tensor_dict"] > 0
    assert receiver["recv"] > 0 and receiver["recv_tensor_dict"] > 0


def test_tp2_same_results_as_unpatched_vllm(tp2, tp2_disabled):
    for patched, plain in zip(tp2["ranks"], tp2_disabled["ranks"]):
        _assert_dtypes_covered(patched["results"]["main"])
        _assert_same(patched["results"]["main"], plain["results"]["main"], "tp2 patched vs unpatched")


def test_tp2_values_from_inputs(tp2):
    """Independently of gloo: the results recomputed from the ranks' inputs."""
    r0, r1 = (r["results"]["main"] for r in tp2["ranks"])
    for dt in DTYPES:
        x = [make_input("all_reduce", r, dt, (4, 8)) for r in (0, 1)]
        want = (x[0].double() + x[1].double()).to(x[0].dtype)
        assert torch.equal(r0[f"all_reduce/{dt}"], want) and torch.equal(r1[f"all_reduce/{dt}"], want)
        ag = [make_input("ag", r, dt, (3, 5)) for r in (0, 1)]
        assert torch.equal(r0[f"all_gather_last/{dt}"], torch.cat(ag, -1))
        ag0 = [make_input("ag0", r, dt, (3, 5)) for r in (0, 1)]
        assert torch.equal(r1[f"all_gather_0/{dt}"], torch.cat(ag0, 0))
        rs = [make_input("rs", r, dt, (4, 6)) for r in (0, 1)]
        total = (rs[0].double() + rs[1].double()).to(rs[0].dtype)
        assert torch.equal(r0[f"reduce_scatter_0/{dt}"], total[:2]) and torch.equal(r1[f"reduce_scatter_0/{dt}"], total[2:])
        g0 = [make_input("gather0", r, dt, (2, 3)) for r in (0, 1)]
        assert torch.equal(r0[f"gather_dst0/{dt}"], torch.cat(g0, -1)) and f"gather_dst0/{dt}" not in r1
        g1 = [make_input("gather1", r, dt, (2, 3)) for r in (0, 1)]
        assert torch.equal(r1[f"gather_dst1/{dt}"], torch.cat(g1, 0))
        b = make_input("bcast", 1, dt, (3, 3))
        assert torch.equal(r0[f"broadcast/{dt}"], b) and torch.equal(r1[f"broadcast/{dt}"], b)
        assert torch.equal(r1[f"btd0_a/{dt}"], make_input("btd0", 0, dt, (2, 5)))
        assert torch.equal(r1[f"btd0_mask/{dt}"], torch.tensor([True, False, True]))
        assert r1[f"btd0_empty/{dt}"].shape == (0, 4)
        assert torch.equal(r1[f"tp_recv/{dt}"], make_input("p2p", 0, dt, (2, 7)))
        assert torch.equal(r1[f"tp_recv_dict/{dt}"], make_input("p2pd", 0, dt, (3, 2)))


def test_disabled_patch_is_not_applied(tp2_disabled):
    for rank in tp2_disabled["ranks"]:
        info = rank["info"]
        status = {p["id"]: p for p in info["report"]}
        assert status["worker/patch_communicator"]["status"] == "skipped"
        assert "ASCEND_PATCH_DISABLE" in status["worker/patch_communicator"]["reason"]
        assert status["worker/patch_parallel_state"]["status"] == "applied"
        assert set(info["comm_class"].values()) == {"CpuCommunicator"}, info["comm_class"]
        assert not any(info["custom_send_recv"].values())
        assert info["ascend_calls_main"] == {}
        assert info["gloo_main"].get("all_reduce", 0) > 0
        assert len(_patch_lines(info["log"], "worker/patch_communicator")) == 1, info["log"]
        unknown = [line for line in info["log"] if "worker/patch_nowhere" in line]
        assert len(unknown) == 1 and unknown[0].startswith("WARNING"), info["log"]


# ---------------------------------------------------------------------------------------------
# TP=2 x PP=2, four processes


def test_tp2pp2_same_results_as_unpatched_vllm(tp2pp2):
    for rank in tp2pp2["ranks"]:
        res = rank["results"]
        _assert_dtypes_covered(res["main"])
        _assert_same(res["main"], res["unpatched"], f"rank {rank['info']['group_ranks']}")
    stage1 = tp2pp2["ranks"][2]["results"]["main"]
    for dt in DTYPES:
        for k in ("hidden_states", "residual", "odd"):
            assert f"pp_dict_{k}/{dt}" in stage1 and f"pp_dict_ag_{k}/{dt}" in stage1
        # Rank 2 receives from rank 0 (TP rank 0 of stage 0); recomputed from the inputs.
        assert torch.equal(stage1[f"pp_dict_hidden_states/{dt}"], make_input("pp_h", 0, dt, (4, 6)))
        assert torch.equal(stage1[f"pp_dict_ag_residual/{dt}"], make_input("residual", 0, dt, (4, 6)))
        assert torch.equal(stage1[f"pp_recv/{dt}"], make_input("pp_send", 0, dt, (5, 2)))
    assert torch.equal(tp2pp2["ranks"][1]["results"]["main"]["pp_reply/float16"], make_input("pp_reply", 1, "float16", (2, 2)))


def test_tp2pp2_goes_through_ascend_not_gloo(tp2pp2):
    for rank in tp2pp2["ranks"]:
        info = rank["info"]
        assert set(info["comm_class"]) == {"tp:0", "pp:0", "ep:0"}
        assert set(info["comm_class"].values()) == {"AscendCommunicator"}
        assert info["gloo_main"] == {}, info["gloo_main"]
        calls = info["ascend_calls_main"]
        for op in OPS + ["send_tensor_dict", "recv_tensor_dict"]:
            assert calls.get(op, 0) > 0, (op, calls)
        # The comparison pass really used gloo (the counters work) and not us.
        assert info["gloo_unpatched"].get("all_reduce", 0) > 0 and info["ascend_calls_unpatched"] == {}
    assert tp2pp2["ranks"][0]["info"]["ascend_calls_main"]["send"] > 0
    assert tp2pp2["ranks"][2]["info"]["ascend_calls_main"]["recv"] > 0


def test_tp2pp2_groups_with_same_ranks_share_one_communicator(tp2pp2):
    for rank, data in enumerate(tp2pp2["ranks"]):
        info = data["info"]
        assert info["tp_ep_share"]
        tp_ranks = [0, 1] if rank < 2 else [2, 3]
        pp_ranks = [0, 2] if rank % 2 == 0 else [1, 3]
        assert info["live"] == {
            str(tp_ranks): {"refs": 2, "owners": ["tp:0", "ep:0"]},
            str(pp_ranks): {"refs": 1, "owners": ["pp:0"]},
        }


def test_tp2pp2_layout_checked(tp2pp2):
    checked = tp2pp2["ranks"][0]["info"]["layout_checked"]
    assert checked["tp"] == [[0, 1], [2, 3]] and checked["pp"] == [[0, 2], [1, 3]]
    assert checked["ep"] == [[0, 1], [2, 3]] and checked["dp"] == [[0], [2], [1], [3]]
    assert {"dcp", "pcp"} <= set(checked)


def test_destroy_releases_shared_memory(tp2, tp2pp2):
    for run in (tp2, tp2pp2):
        for rank in run["ranks"]:
            info = rank["info"]
            assert info["maps_before_destroy"], "the communicators' shared memory was mapped"
            assert info["maps_after_destroy"] == [], info["maps_after_destroy"]
            assert info["live_after_destroy"] == {}
        assert run["new_segments"] == set(), f"left in /dev/shm: {run['new_segments']}"


# ---------------------------------------------------------------------------------------------
# Gate, drift, list: single processes


def _one_line(stderr: str, needle: str) -> list[str]:
    return [line for line in stderr.splitlines() if needle in line]


@pytest.mark.parametrize(
    "version, needle",
    [("0.9.2", "is not supported"), ("0.33.x-banana", "cannot be parsed")],
)
def test_unsupported_version_skips_every_patch_with_one_line(version, needle):
    code = "import ascend_patch, json, sys; r = ascend_patch.apply_all(); r += ascend_patch.apply_all(); " \
           "print(json.dumps({'report': r, 'vllm_imported': 'vllm' in sys.modules}))"
    out = run_python(["-c", code], base_env(VLLM_VERSION=version))
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["report"] and all(p["status"] == "skipped" for p in data["report"])
    assert not data["vllm_imported"], "nothing of vLLM was touched"
    lines = [line for line in out.stderr.splitlines() if "ascend_patch" in line]
    assert len(lines) == 1, out.stderr
    assert needle in lines[0] and version in lines[0] and "VLLM_VERSION" in lines[0] and "no patch applied" in lines[0]


def test_invalid_log_level_falls_back_to_info_and_patches_still_apply():
    code = "import json, ascend_patch; from ascend_patch import plugin; plugin.register(); " \
           "print('RESULT ' + json.dumps(ascend_patch.report()))"
    out = run_python(["-c", code], base_env(ASCEND_PATCH_LOG_LEVEL="verbose"))
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.split("RESULT ", 1)[1])
    assert [p["status"] for p in report] == ["applied", "applied"], report
    lines = _one_line(out.stderr, "ASCEND_PATCH_LOG_LEVEL")
    assert len(lines) == 1 and "'verbose'" in lines[0] and "using INFO" in lines[0], out.stderr
    assert _one_line(out.stderr, "applied worker/patch_communicator"), "INFO lines are shown"


def test_the_variables_ascend_patch_reads_pass_vllm_checks_and_reach_ray_workers():
    code = "import json; from ascend_patch import plugin; plugin.register(); " \
           "from vllm.platforms.cpu import CpuPlatform; CpuPlatform.validate_environ(hard_fail=True); " \
           "from vllm.ray.ray_env import get_env_vars_to_copy; v = get_env_vars_to_copy(); " \
           "names = ('ASCEND_PATCH_', 'HCCL_', 'VLLM_VERSION', 'MY'); " \
           "print('RESULT ' + json.dumps(sorted(n for n in v if n.startswith(names))))"
    env = base_env(
        VLLM_VERSION="0.33.0", ASCEND_PATCH_DISABLE="platform/nope", HCCL_EXEC_TIMEOUT="30",
        HCCL_CONNECT_TIMEOUT="40",
        # Node-specific HCCL settings: each worker node keeps its own, the driver's are not copied.
        HCCL_IF_IP="10.0.0.1", HCCL_SOCKET_IFNAME="eth0", HCCL_WHITELIST_DISABLE="1",
        # A user's own additions are kept.
        VLLM_RAY_EXTRA_ENV_VAR_PREFIXES_TO_COPY="MYLIB_", VLLM_RAY_EXTRA_ENV_VARS_TO_COPY="MY_FLAG",
        MYLIB_X="1", MY_FLAG="1",
    )
    out = run_python(["-c", code], env)
    assert out.returncode == 0, out.stderr[-3000:]
    copied = set(json.loads(out.stdout.split("RESULT ", 1)[1]))
    for name in ["ASCEND_PATCH_DISABLE", "HCCL_EXEC_TIMEOUT", "HCCL_CONNECT_TIMEOUT", "VLLM_VERSION",
                 "MYLIB_X", "MY_FLAG"]:
        assert name in copied, out.stdout
    assert sorted(n for n in copied if n.startswith("HCCL_")) == ["HCCL_CONNECT_TIMEOUT", "HCCL_EXEC_TIMEOUT"], \
        out.stdout


DRIFT_SCRIPT = textwrap.dedent(
    """
    import json
    import torch
    from vllm.distributed import parallel_state as ps

    def broadcast(self, input_, src=0, async_op=False):  # a vLLM whose broadcast changed
        raise AssertionError("not called")

    ps.GroupCoordinator.broadcast = broadcast
    # ... and whose device communicators take one more keyword (AscendCommunicator's __init__ would
    # not accept it): still constructible the old way, for vLLM's own CpuCommunicator below.
    from vllm.distributed.device_communicators.base_device_communicator import DeviceCommunicatorBase
    base_init = DeviceCommunicatorBase.__init__

    def init(self, cpu_group, device=None, device_group=None, unique_name="", global_ranks=None,
             global_world_size=None, use_all2all=False, tcp_store=None):
        base_init(self, cpu_group, device, device_group, unique_name, global_ranks, global_world_size,
                  use_all2all)

    DeviceCommunicatorBase.__init__ = init
    import ascend_patch
    report = ascend_patch.apply_all()
    from vllm.platforms.cpu import CpuPlatform
    out = {"report": report, "comm_cls": CpuPlatform.get_device_communicator_cls(),
           "btd": getattr(ps.GroupCoordinator.broadcast_tensor_dict, "__ascend_patch__", None)}

    # The layout check (patch_parallel_state was applied): passes on what vLLM built, raises
    # naming the group when the groups differ from ascend-patch's layout.
    from vllm.config import VllmConfig, set_current_vllm_config
    from ascend_patch.worker import patch_parallel_state as pps
    with set_current_vllm_config(VllmConfig()):
        ps.init_distributed_environment(1, 0, "tcp://127.0.0.1:%d", 0, "gloo")
        ps.initialize_model_parallel(1, 1)
        out["checked"] = sorted(pps.last_checked)
        ps._PP.group_ranks = [[1, 0]]
        try:
            pps.check_layout(1, 1, 1, 1)
        except RuntimeError as e:
            out["mismatch"] = str(e)
        ps._PP.group_ranks = [[0]]
    # Elastic EP: dp counts engines, not ranks of this torch world; tp/dcp/pcp/pp are checked alone.
    elastic = VllmConfig()
    object.__setattr__(elastic.parallel_config, "data_parallel_size", 2)
    object.__setattr__(elastic.parallel_config, "enable_elastic_ep", True)
    with set_current_vllm_config(elastic):
        out["elastic"] = sorted(pps.check_layout(1, 1, 1, 1))
    with set_current_vllm_config(VllmConfig()):
        ps.destroy_model_parallel()
        ps.destroy_distributed_environment()
    print("RESULT " + json.dumps(out))
    """
)


def test_changed_signature_is_reported_and_skipped():
    from conftest import free_port

    out = run_python(["-c", DRIFT_SCRIPT % free_port()], base_env())
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads(out.stdout.split("RESULT ", 1)[1])
    status = {p["id"]: p for p in data["report"]}
    skipped = status["worker/patch_communicator"]
    assert skipped["status"] == "skipped"
    assert "vllm.distributed.parallel_state.GroupCoordinator.broadcast" in skipped["reason"]
    assert "async_op" in skipped["reason"] and "drift" in skipped["reason"]
    assert "DeviceCommunicatorBase.__init__ signature changed" in skipped["reason"], skipped["reason"]
    assert "tcp_store" in skipped["reason"], skipped["reason"]
    assert data["comm_cls"].endswith("CpuCommunicator") and data["btd"] is None, "nothing of the patch applied"
    assert status["worker/patch_parallel_state"]["status"] == "applied"
    lines = _one_line(out.stderr, "worker/patch_communicator")
    assert len(lines) == 1 and "async_op" in lines[0] and "tcp_store" in lines[0], out.stderr
    assert data["checked"] == ["dcp", "dp", "ep", "pcp", "pp", "tp"]
    assert "pp groups [[1, 0]]" in data["mismatch"], data["mismatch"]
    assert "ASCEND_PATCH_DISABLE=worker/patch_parallel_state" in data["mismatch"], data["mismatch"]
    assert data["elastic"] == ["dcp", "pcp", "pp", "tp"]


def test_list_cli():
    env = base_env(ASCEND_PATCH_DISABLE="worker/patch_parallel_state")
    out = run_python(["-m", "ascend_patch", "list", "--json"], env)
    assert out.returncode == 0, out.stderr[-3000:]
    info = json.loads(out.stdout)
    assert info["vllm"] == "0.33.0"
    patches = {p["id"]: p for p in info["patches"]}
    comm, ps = patches["worker/patch_communicator"], patches["worker/patch_parallel_state"]
    assert comm["applies"] and comm["reasons"] == [] and comm["process"] == "worker"
    assert "0.33.0" in comm["versions"]
    assert [t["status"] for t in comm["targets"]] == ["ok"] * 4
    assert not ps["applies"] and ps["reasons"] == ["disabled by ASCEND_PATCH_DISABLE"]
    assert [t["name"] for t in ps["targets"]] == ["vllm.distributed.parallel_state.initialize_model_parallel"]
    assert ps["targets"][0]["aliases"] == ["vllm.distributed.initialize_model_parallel"]

    out = run_python(["-m", "ascend_patch", "list"], base_env(VLLM_VERSION="0.34.0"))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert re.search(r"^worker/patch_communicator +\[worker\] +versions: 0\.33\.0, ==0\.33\.\* +-> does not apply", text, re.M)
    assert "why not: vLLM 0.34.0 (from VLLM_VERSION) is not supported" in text
    assert "vllm.distributed.parallel_state.GroupCoordinator.broadcast(self, input_, src=0)" in text


def test_the_readme_all_reduce_benchmark_runs():
    """bench_allreduce.py, as the README runs it (one small size): both modes, checked results."""
    bench = Path(__file__).resolve().parent.parent / "bench_allreduce.py"
    out = run_python([str(bench), "--sizes", "4K", "--json-only", "--timeout", "240"], base_env(), timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    (row,) = json.loads(out.stdout.strip().splitlines()[-1])["results"]
    assert row["bytes"] == 4096 and row["patched_us"] > 0 and row["unpatched_us"] > 0, row
