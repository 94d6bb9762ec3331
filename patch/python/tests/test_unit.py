"""Fast tests that start no vLLM process: library loading and errors, the version gate, the
ASCEND_PATCH_DISABLE switch, drift detection on stand-in modules, the registry against the package,
and the host communicator's tensor operations (two ranks in two threads of this process)."""

from __future__ import annotations

import _ctypes
import importlib
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from ascend_patch import _core, _lib

PKG = Path(_lib.__file__).resolve().parent


@pytest.fixture
def fresh_lib(monkeypatch):
    """A _lib module state with nothing loaded (restored afterwards)."""
    monkeypatch.setattr(_lib, "_lib", None)
    monkeypatch.setattr(_lib, "_path", None)
    return monkeypatch


# ---------------------------------------------------------------------------------------------
# Library loading


def test_library_from_env(fresh_lib):
    import os

    assert _lib.path() == Path(os.environ["ASCEND_PATCH_LIB"])


def test_missing_library_lists_the_path_tried(fresh_lib, tmp_path):
    fresh_lib.setenv("ASCEND_PATCH_LIB", str(tmp_path / "nowhere.so"))
    with pytest.raises(_lib.LibraryNotFound) as e:
        _lib.load()
    assert str(tmp_path / "nowhere.so") in str(e.value) and "no such file" in str(e.value)
    assert "ASCEND_PATCH_LIB" in str(e.value)


def test_without_env_every_candidate_is_listed(fresh_lib, tmp_path):
    fresh_lib.delenv("ASCEND_PATCH_LIB")
    fresh_lib.setenv("CARGO_TARGET_DIR", str(tmp_path / "tgt"))
    paths = _lib.candidates()
    assert paths[0] == PKG / "libascend_patch.so"
    assert paths[1:3] == [tmp_path / "tgt/release/libascend_patch.so", tmp_path / "tgt/debug/libascend_patch.so"]
    # This checkout is a cargo workspace: its target/release then target/debug come last.
    assert [p.parent.name for p in paths[3:]] == ["release", "debug"]
    assert (paths[3].parents[2] / "Cargo.toml").is_file()
    fresh_lib.setattr(_lib, "candidates", lambda: [tmp_path / "a.so", tmp_path / "b.so"])
    with pytest.raises(_lib.LibraryNotFound) as e:
        _lib.load()
    assert [p for p, _ in e.value.tried] == [str(tmp_path / "a.so"), str(tmp_path / "b.so")]


def test_wrong_files_are_refused_with_the_reason(fresh_lib, tmp_path):
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"not an ELF file")
    fresh_lib.setattr(_lib, "candidates", lambda: [junk, Path(_ctypes.__file__)])
    with pytest.raises(_lib.LibraryNotFound) as e:
        _lib.load()
    reasons = dict(e.value.tried)
    assert reasons[str(junk)].startswith("cannot load")
    assert "not the ascend-patch library" in reasons[_ctypes.__file__]


def test_every_function_is_declared():
    lib = _lib.load()
    for name, restype, argtypes in _lib._FUNCTIONS:
        fn = getattr(lib, name)
        assert fn.restype is restype and fn.argtypes == argtypes
    header = (PKG.parents[1] / "include" / "ascend_patch.h").read_text()
    declared = {line.split("(")[0].split()[-1] for line in header.splitlines() if "ascend_patch_" in line and "(" in line
                and not line.lstrip().startswith(("/*", "*", "#"))}
    assert declared == {name for name, _, _ in _lib._FUNCTIONS}


def test_check_raises_with_the_library_message():
    with pytest.raises(_lib.AscendPatchError) as e:
        _lib.version_supported("banana", "0.33.0")
    assert e.value.code == 1 and "not a version" in e.value.message and "HCCL_E_PARA" in str(e.value)
    _lib.check(0)


# ---------------------------------------------------------------------------------------------
# Version gate


@pytest.mark.parametrize(
    "version, ok",
    [("0.33.0", True), ("0.33.0+cpu", True), ("0.33.1", True), ("0.33.2.post1", True), ("0.34.0", False),
     ("0.9.2", False), ("0.33.1.dev12+gdeadbeef", False), ("0.33.0rc1", False)],
)
def test_version_gate(monkeypatch, version, ok):
    monkeypatch.setenv("VLLM_VERSION", version)
    assert _core.detect_version() == (version, "VLLM_VERSION")
    found, why_not = _core.version_verdict(_core.registry())
    assert found == version and (why_not is None) == ok, why_not


def test_unparsable_version(monkeypatch):
    monkeypatch.setenv("VLLM_VERSION", "latest")
    _, why_not = _core.version_verdict(_core.registry())
    assert "cannot be parsed" in why_not and "'latest'" in why_not and "VLLM_VERSION" in why_not


def test_installed_version_is_detected(monkeypatch):
    monkeypatch.delenv("VLLM_VERSION", raising=False)
    # The environment pins vLLM 0.33.0 (scripts/setup-python.sh).
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    assert _core.detect_version() == ("0.33.0", "installed vllm")


def test_the_imported_vllm_wins_over_the_installed_metadata(monkeypatch):
    # A source tree on PYTHONPATH shadows the wheel: the gate follows the vLLM that runs.
    monkeypatch.delenv("VLLM_VERSION", raising=False)
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(__version__="0.34.1.dev3+gabc"))
    assert _core.detect_version() == ("0.34.1.dev3+gabc", "vllm.__version__")
    _, why_not = _core.version_verdict(_core.registry())
    assert why_not is not None and "0.34.1.dev3+gabc" in why_not


def test_apply_with_unsupported_version_logs_one_line(monkeypatch, caplog):
    monkeypatch.setattr(_core, "_decided", {})
    monkeypatch.setattr(_core, "_gate_logged", False)
    monkeypatch.setenv("VLLM_VERSION", "0.9.2")
    caplog.set_level("INFO", logger="ascend_patch")
    import ascend_patch

    report = ascend_patch.apply_all() + ascend_patch.apply("worker")
    assert report and {p["status"] for p in report} == {"skipped"}
    assert len(caplog.records) == 1 and "0.9.2" in caplog.records[0].getMessage()
    with pytest.raises(ValueError):
        ascend_patch.apply("engine")


# ---------------------------------------------------------------------------------------------
# ASCEND_PATCH_DISABLE


def test_disable_parsing(monkeypatch):
    known = ["worker/patch_communicator", "worker/patch_parallel_state"]
    monkeypatch.setenv("ASCEND_PATCH_DISABLE", " worker/patch_communicator,,worker/nope , patch_parallel_state")
    ids, unknown = _core.disabled_ids(known)
    assert ids == {"worker/patch_communicator", "worker/nope", "patch_parallel_state"}
    assert unknown == ["patch_parallel_state", "worker/nope"]
    monkeypatch.delenv("ASCEND_PATCH_DISABLE")
    assert _core.disabled_ids(known) == (set(), [])


def test_unknown_disabled_ids_are_warned_about_whatever_the_version(monkeypatch, caplog):
    monkeypatch.setattr(_core, "_decided", {})
    monkeypatch.setattr(_core, "_gate_logged", False)
    monkeypatch.setattr(_core, "_disable_warned", False)
    monkeypatch.setenv("VLLM_VERSION", "0.9.2")  # supported by no patch: nothing is applied
    monkeypatch.setenv("ASCEND_PATCH_DISABLE", "worker/nope")
    caplog.set_level("INFO", logger="ascend_patch")
    import ascend_patch

    report = ascend_patch.apply_all()
    assert report and {p["status"] for p in report} == {"skipped"}
    warned = [r.getMessage() for r in caplog.records if "unknown patch id" in r.getMessage()]
    assert len(warned) == 1 and "worker/nope" in warned[0], [r.getMessage() for r in caplog.records]


# ---------------------------------------------------------------------------------------------
# Drift detection


@pytest.fixture
def fakepkg(tmp_path, monkeypatch):
    """A package standing in for vLLM: a definition, a re-export, a module with a missing
    dependency, and a module that rebinds the name to something else."""
    pkg = tmp_path / "fakevllm"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .core import f, C\n")
    (pkg / "core.py").write_text(
        "def f(a, b=1, *args, c=(1, 2), d='x,y', **kw):\n    pass\n"
        "class C:\n    def m(self, x, y=None):\n        pass\n    @classmethod\n    def k(cls):\n        pass\n"
    )
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "needs_dep.py").write_text("import a_dependency_that_is_not_installed\nfrom ..core import f\n")
    (pkg / "sub" / "other.py").write_text("def f(a, b=1, *args, c=(1, 2), d='x,y', **kw):\n    pass\n")
    # Another plugin's wrapper around the definition (functools.wraps keeps the signature).
    (pkg / "wrapped.py").write_text(
        "import functools\nfrom .core import f as _f\n"
        "@functools.wraps(_f)\ndef f(*a, **k):\n    return _f(*a, **k)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "fakevllm"
    for name in [m for m in sys.modules if m.startswith("fakevllm")]:
        del sys.modules[name]


SIG_F = "(a, b=1, *args, c=(1, 2), d='x,y', **kw)"


def test_drift_none(fakepkg):
    problems, notes = _core.check_target(
        {"name": "fakevllm.core.f", "aliases": ["fakevllm.f", "fakevllm.sub.needs_dep.f"], "signature": SIG_F}
    )
    assert problems == []
    assert len(notes) == 1 and "fakevllm.sub.needs_dep" in notes[0] and "not importable" in notes[0]
    assert _core.check_target({"name": "fakevllm.core.C.m", "aliases": [], "signature": "(self, x, y=None)"}) == ([], [])
    assert _core.check_target({"name": "fakevllm.C.k", "aliases": [], "signature": "()"}) == ([], [])


@pytest.mark.parametrize(
    "name, signature, aliases, expected",
    [
        ("fakevllm.core.g", "()", [], "fakevllm.core.g is missing"),
        ("fakevllm.nomodule.f", "()", [], "fakevllm.nomodule does not exist"),
        ("fakevllm.core.C.m", "(self, x)", [], "parameter(s) added: y"),
        ("fakevllm.core.C.m", "(self, x, y=None, z=2)", [], "parameter(s) removed: z"),
        ("fakevllm.core.C.m", "(self, x, y=0)", [], "y: 'y=0' is now 'y=None'"),
        ("fakevllm.core.C.m", "(self, y=None, x)", [], "parameter order changed"),
        ("fakevllm.core.f", SIG_F, ["fakevllm.sub.other.f"], "alias fakevllm.sub.other.f is not the same object"),
        ("fakevllm.core.f", SIG_F, ["fakevllm.core.nothere"], "alias fakevllm.core.nothere of fakevllm.core.f is missing"),
        ("fakevllm.wrapped.f", SIG_F, [], "wrapped.py), not vLLM's own"),
    ],
)
def test_drift_found(fakepkg, name, signature, aliases, expected):
    problems, _ = _core.check_target({"name": name, "aliases": aliases, "signature": signature})
    assert len(problems) == 1 and expected in problems[0], problems
    if "signature changed" in problems[0]:
        assert name in problems[0] and signature in problems[0]


def test_signature_splitting():
    assert _core._split_params("(self, a=(1, 2), b='x,y', *, c={'k': [1, 2]}, **kw)") == [
        "self", "a=(1, 2)", "b='x,y'", "*", "c={'k': [1, 2]}", "**kw",
    ]
    assert _core.signature_diff("(a,b=1)", "(a, b=1)") is None


# ---------------------------------------------------------------------------------------------
# Registry and package


def test_registry_matches_the_package():
    reg = _core.registry()
    assert [p["id"] for p in reg] == ["worker/patch_communicator", "worker/patch_parallel_state"]
    norm = lambda s: " ".join(s.split())  # noqa: E731
    for p in reg:
        path = PKG / f"{p['id']}.py"
        assert path.is_file()
        module = importlib.import_module("ascend_patch." + p["id"].replace("/", "."))
        assert callable(module.apply)
        doc = norm(module.__doc__)
        # The docstring restates the registry (why, upstream, future verbatim; how in more detail).
        assert norm(p["why"]) in doc, p["id"]
        assert "How:" in doc and "Upstream:" in doc and "Future:" in doc
        assert norm(p["future"]).lower().rstrip(".") in doc.lower()
        upstream = norm(p["upstream"]).split(":", 1)[-1].strip().rstrip(".")
        assert upstream.lower()[:60] in doc.lower(), p["id"]
        for t in p["targets"]:
            assert t["signature"].startswith("(") and t["name"].startswith("vllm.")


def test_pyproject_declares_the_plugin():
    import tomllib

    project = tomllib.loads((PKG.parent / "pyproject.toml").read_text())
    eps = project["project"]["entry-points"]["vllm.general_plugins"]
    assert eps == {"ascend_patch": "ascend_patch.plugin:register"}
    assert {"ascend_patch", "ascend_patch.platform", "ascend_patch.worker"} <= set(project["tool"]["setuptools"]["packages"])


def test_layout_through_the_abi():
    assert _lib.layout(4, 2, 2, 1, 1, 1, "tp") == [[0, 1], [2, 3]]
    assert _lib.layout(4, 2, 2, 1, 1, 1, "pp") == [[0, 2], [1, 3]]
    assert _lib.layout(16, 2, 2, 2, 2, 2, "dcp")[:2] == [[0, 2], [1, 3]]
    with pytest.raises(_lib.AscendPatchError):
        _lib.layout(3, 2, 1, 1, 1, 1, "tp")
    with pytest.raises(_lib.AscendPatchError):
        _lib.layout(4, 2, 1, 1, 1, 1, "nope")


# ---------------------------------------------------------------------------------------------
# Host communicator (two ranks as two threads; ctypes releases the GIL during calls)


def _two_ranks(body, timeout=None):
    from ascend_patch._comm import HostComm

    root = _lib.root_info(-1)
    out, errors = [None, None], []

    def run(rank):
        try:
            comm = HostComm(root, 2, rank, timeout)
            try:
                out[rank] = body(comm, rank)
            finally:
                comm.destroy()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "hung"
    if errors:
        raise errors[0]
    return out


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "int64", "int8", "uint8", "float64", "bool"])
def test_host_comm_ops(dtype):
    import torch

    dt = getattr(torch, dtype)

    def inp(rank, shape):
        g = torch.Generator().manual_seed(rank * 17 + len(shape))
        return (torch.randn(shape, generator=g) * 3).to(dt) if dt.is_floating_point else \
            torch.randint(0, 2 if dt is torch.bool else 50, shape, generator=g).to(dt)

    def body(comm, rank):
        res = {}
        t = inp(rank, (3, 5))
        res["all_reduce"] = comm.all_reduce(t.clone())
        # Out of place: the input stays as it was; an output that does not fit is refused.
        res["all_reduce_out"] = comm.all_reduce(t, out=torch.full((3, 5), 7).to(dt))
        res["input_kept"] = torch.equal(t, inp(rank, (3, 5)))
        for bad in (torch.empty((3, 4), dtype=dt), torch.empty((5, 3), dtype=dt).t(), torch.empty(15, dtype=torch.int16)):
            with pytest.raises(ValueError, match="all_reduce output"):
                comm.all_reduce(t, out=bad)
        nc = inp(rank, (5, 3)).t()  # non-contiguous, in place
        comm.all_reduce(nc)
        res["all_reduce_nc"] = nc
        out = torch.empty((2, 3, 5), dtype=dt)
        comm.all_gather_into(out, t)
        res["all_gather"] = out
        if dt is not torch.bool:
            rs = torch.empty((2, 5), dtype=dt)
            comm.reduce_scatter_into(rs, inp(rank, (4, 5)))
            res["reduce_scatter"] = rs
        g = torch.empty((2, 3, 5), dtype=dt) if rank == 1 else None
        comm.gather_into(g, t, 1)
        res["gather"] = g
        b = inp(rank, (4,))
        res["broadcast"] = comm.broadcast(b, 0)
        if rank == 0:
            comm.send(inp(0, (2, 2)), 1)
            comm.send_bytes(b"hello", 1)
            comm.send_bytes(b"", 1)
        else:
            res["recv"] = comm.recv(torch.empty((2, 2), dtype=dt), 0)
            res["bytes"] = (comm.recv_bytes(0), comm.recv_bytes(0))
        comm.barrier()
        return res

    r0, r1 = _two_ranks(body)
    t0, t1 = inp(0, (3, 5)), inp(1, (3, 5))
    if dt is torch.bool:
        want = t0 | t1
    else:
        want = (t0.double() + t1.double()).to(dt)
    assert torch.equal(r0["all_reduce"], want) and torch.equal(r1["all_reduce"], want)
    assert torch.equal(r0["all_reduce_out"], want) and torch.equal(r1["all_reduce_out"], want)
    assert r0["input_kept"] and r1["input_kept"]
    nc_want = (inp(0, (5, 3)).t() | inp(1, (5, 3)).t()) if dt is torch.bool else \
        (inp(0, (5, 3)).t().double() + inp(1, (5, 3)).t().double()).to(dt)
    assert torch.equal(r0["all_reduce_nc"], nc_want)
    assert torch.equal(r1["all_gather"], torch.stack([t0, t1]))
    if dt is not torch.bool:
        total = (inp(0, (4, 5)).double() + inp(1, (4, 5)).double()).to(dt)
        assert torch.equal(r0["reduce_scatter"], total[:2]) and torch.equal(r1["reduce_scatter"], total[2:])
    assert r0["gather"] is None and torch.equal(r1["gather"], torch.stack([t0, t1]))
    assert torch.equal(r1["broadcast"], inp(0, (4,)))
    assert torch.equal(r1["recv"], inp(0, (2, 2)))
    assert r1["bytes"] == (b"hello", b"")


def test_host_comm_errors():
    import torch

    from ascend_patch._comm import hccl_dtype

    with pytest.raises(TypeError, match="no HCCL data type"):
        hccl_dtype(torch.complex64)

    def body(comm, rank):
        with pytest.raises(TypeError, match="CPU tensors"):
            comm.all_reduce(torch.empty(2, device="meta"))
        # A lazy conjugate's memory holds the unconjugated values: refused, not sent wrong.
        with pytest.raises(TypeError, match="conjugate"):
            comm.send(torch.tensor([1 + 2j]).conj(), 1 - rank)
        with pytest.raises(_lib.AscendPatchError, match="itself"):
            comm.send(torch.ones(2), rank)
        with pytest.raises(ValueError):
            comm.all_gather_into(torch.empty(3), torch.ones(2))
        comm.barrier()
        return True

    assert _two_ranks(body) == [True, True]

    def destroyed(comm, rank):
        comm.destroy()
        comm.destroy()  # idempotent
        with pytest.raises(RuntimeError, match="destroyed"):
            comm.all_reduce(torch.ones(2))
        return True

    assert _two_ranks(destroyed) == [True, True]
    with open("/proc/self/maps") as f:
        assert "ascend-hccl-" not in f.read(), "a destroyed communicator's shared memory is still mapped"


def test_destroy_aborts_calls_in_flight_in_bounded_time():
    """A destroy while another thread's collective waits for a peer (which never comes) returns in
    bounded time, not at the exec timeout: the call in flight fails (HCCL_E_REMOTE), and so do the
    peer's calls on the aborted communicator."""
    import torch

    destroyed = threading.Event()

    def body(comm, rank):
        if rank == 1:
            assert destroyed.wait(30)
            with pytest.raises(_lib.AscendPatchError) as e:
                comm.all_reduce(torch.ones(2))
            return e.value.code
        failure = []

        def waits():
            try:
                comm.all_reduce(torch.ones(2))  # rank 1 never takes part
            except _lib.AscendPatchError as e:
                failure.append(e.code)

        t = threading.Thread(target=waits)
        t.start()
        time.sleep(0.2)
        start = time.monotonic()
        comm.destroy()
        took = time.monotonic() - start
        t.join(10)
        destroyed.set()
        assert took < 10 and not t.is_alive(), f"destroy took {took:.1f} s"
        return failure

    assert _two_ranks(body, timeout=600) == [[21], 21]


def test_a_peer_that_left_fails_a_collective_at_once():
    """A rank that destroyed its communicator is not waited for until the timeout."""
    import torch

    def body(comm, rank):
        if rank == 1:
            comm.destroy()
            return None
        start = time.monotonic()
        with pytest.raises(_lib.AscendPatchError, match="left the communicator"):
            comm.all_reduce(torch.ones(2))
        return time.monotonic() - start

    took = _two_ranks(body, timeout=600)[0]
    assert took < 10, f"{took:.1f} s"


def test_host_comm_timeout_bounds_a_collective_a_live_peer_never_joins():
    import time

    import torch

    def body(comm, rank):
        if rank == 1:
            time.sleep(4)  # alive, but never takes part
            return True
        t = time.monotonic()
        with pytest.raises(_lib.AscendPatchError, match="TIMEOUT"):
            comm.all_reduce(torch.ones(4))
        return time.monotonic() - t

    waited, _ = _two_ranks(body, timeout=1.0)
    assert 0.9 < waited < 3.5, waited


def test_distributed_timeout_comes_from_the_vllm_config():
    from vllm.config import ParallelConfig, VllmConfig, set_current_vllm_config

    from ascend_patch.communicator import distributed_timeout

    with set_current_vllm_config(VllmConfig(parallel_config=ParallelConfig(distributed_timeout_seconds=7))):
        assert distributed_timeout() == 7.0
    with set_current_vllm_config(VllmConfig()):
        assert distributed_timeout() is None


def test_host_comm_p2p_size_mismatch_fails_the_communicator():
    import torch

    def body(comm, rank):
        # 16 bytes sent, 32 expected: both ranks fail, and since the pair's counters now disagree,
        # nothing may run on the communicator any more (a later receive would get the stale bytes).
        with pytest.raises(_lib.AscendPatchError):
            comm.send(torch.zeros(4), 1) if rank == 0 else comm.recv(torch.empty(8), 0)
        with pytest.raises(_lib.AscendPatchError, match="failed earlier"):
            comm.all_reduce(torch.ones(2))
        with pytest.raises(_lib.AscendPatchError, match="failed earlier"):
            comm.send(torch.zeros(4), 1) if rank == 0 else comm.recv(torch.empty(4), 0)
        return True

    assert _two_ranks(body) == [True, True]


def test_host_comm_point_to_point_and_gather_check_dtype_not_just_bytes():
    """16 bytes of float32 received as bfloat16 fail both ranks (HCCL_E_PARA), for send/recv and
    for gather (point-to-point underneath), instead of handing over reinterpreted bits."""
    import torch

    def p2p(comm, rank):
        with pytest.raises(_lib.AscendPatchError, match="HCCL_E_PARA"):
            if rank == 0:
                comm.send(torch.arange(4, dtype=torch.float32), 1)
            else:
                comm.recv(torch.zeros(8, dtype=torch.bfloat16), 0)
        return True

    def gather(comm, rank):
        t = torch.arange(4, dtype=torch.float32) if rank == 0 else torch.zeros(8, dtype=torch.bfloat16)
        out = torch.zeros(16, dtype=torch.bfloat16) if rank == 1 else None
        with pytest.raises(_lib.AscendPatchError, match="HCCL_E_PARA"):
            comm.gather_into(out, t, 1)
        return out

    assert _two_ranks(p2p) == [True, True]
    _, out = _two_ranks(gather)
    assert torch.equal(out[:8], torch.zeros(8, dtype=torch.bfloat16)), "rank 0's part was not written"


def test_host_comm_data_movement_checks_dtype_and_count_not_just_bytes():
    """float32[4] on one rank and bfloat16[8] on the other are 16 bytes each: HCCL refuses the pair
    (HCCL_E_PARA) instead of reinterpreting one rank's floats as the other's bfloat16s."""
    import torch

    def body(comm, rank):
        t = torch.arange(4, dtype=torch.float32) if rank == 0 else torch.zeros(8, dtype=torch.bfloat16)
        with pytest.raises(_lib.AscendPatchError, match="HCCL_E_PARA"):
            comm.broadcast(t, 0)
        out = torch.empty(2 * t.numel(), dtype=t.dtype)
        with pytest.raises(_lib.AscendPatchError, match="HCCL_E_PARA"):
            comm.all_gather_into(out, t)
        # Refused before any data moved, and the communicator still works.
        b = torch.full((3,), float(rank + 1), dtype=torch.bfloat16)
        comm.broadcast(b, 1)
        return t, b

    (t0, b0), (t1, b1) = _two_ranks(body)
    assert torch.equal(t0, torch.arange(4, dtype=torch.float32))
    assert torch.equal(t1, torch.zeros(8, dtype=torch.bfloat16))
    assert torch.equal(b0, torch.full((3,), 2.0, dtype=torch.bfloat16)) and torch.equal(b1, b0)


# ---------------------------------------------------------------------------------------------
# Broadcast roots


def test_broadcast_wrappers_name_the_root_in_the_communicators_order(monkeypatch):
    """A group whose ranks vLLM lists out of order (DCP with PCP > 1: [0, 2, 1, 3]): src=1 is global
    rank 2, which is rank 2 of the communicator (its ranks are sorted)."""
    import torch

    from ascend_patch.communicator import AscendCommunicator, split_tensor_dict
    from ascend_patch.worker import patch_communicator as pc

    roots = []
    comm = AscendCommunicator.__new__(AscendCommunicator)
    comm.ranks = [0, 1, 2, 3]
    comm.broadcast = lambda tensor, root: roots.append(root)
    metadata, _ = split_tensor_dict({"x": torch.zeros(3)})

    class Coordinator:
        ranks = [0, 2, 1, 3]
        world_size = 4
        rank_in_group = 2  # global rank 1: a receiver
        device_communicator = comm

        def broadcast_object(self, obj, src):
            return metadata

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    pc._wrap_broadcast(None)(Coordinator(), torch.zeros(3), src=1)
    pc._wrap_broadcast_tensor_dict(None)(Coordinator(), None, src=1)
    assert roots == [2, 2]


def test_reduce_scatter_cuts_three_dimensional_inputs_as_vllm_does(monkeypatch):
    """vLLM cuts the dimension that movedim(0, dim) brings to the front (for (2, 4, 3) and dim -1,
    the one of size 4) and moves the result back the same way: the check, the op and its fake agree."""
    from types import SimpleNamespace

    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from ascend_patch import communicator

    comm = communicator.AscendCommunicator.__new__(communicator.AscendCommunicator)
    comm.world_size = 2
    comm._shared = SimpleNamespace(name="0,1")
    # One rank's view of a sum over ranks that all hold x: its half, times two.
    rank0 = SimpleNamespace(reduce_scatter_into=lambda out, inp: out.copy_(2 * inp[: out.shape[0]]))
    monkeypatch.setattr(communicator, "_host_comm", lambda name: rank0)
    x = torch.arange(24.0).reshape(2, 4, 3)
    got = comm.reduce_scatter(x, dim=-1)
    want = (2 * x.movedim(0, 2)[:2]).movedim(0, 2)
    assert torch.equal(got, want)
    with FakeTensorMode() as mode:
        fake = torch.ops.ascend_patch.reduce_scatter(mode.from_tensor(x), 2, 2, "0,1")
    assert fake.shape == want.shape


def test_every_code_the_library_returns_has_its_name():
    from ascend_patch._lib import AscendPatchError

    for code, name in [(3, "HCCL_E_MEMORY"), (15, "HCCL_E_RUNTIME"), (9, "HCCL_E_TIMEOUT")]:
        assert name in str(AscendPatchError(code, "x"))


def test_a_group_across_machines_gets_vllm_cpu_communicator(monkeypatch):
    """A group whose ranks do not share one machine and /dev/shm (pipeline parallel across nodes)
    falls back to vLLM's CpuCommunicator instead of failing vLLM's start-up; one machine gets ours."""
    import vllm.distributed.device_communicators.cpu_communicator as cpu

    from ascend_patch import communicator as c

    built = []
    monkeypatch.setattr(c, "AscendCommunicator", lambda *a, **k: built.append(("ascend", k)) or "ascend")
    monkeypatch.setattr(cpu, "CpuCommunicator", lambda *a, **k: built.append(("cpu", k)) or "cpu")
    monkeypatch.setattr(c.dist, "get_world_size", lambda group: 2)
    for hosts, want in [(["node0", "node0"], "ascend"), (["node0", "node1"], "cpu")]:

        def gather(out, obj, group, hosts=hosts):
            out[:] = [(h, "boot", (1, 2)) for h in hosts]

        monkeypatch.setattr(c.dist, "all_gather_object", gather)
        assert c.make_communicator(object(), unique_name="pp:0", use_all2all=True) == want
    assert built == [("ascend", {"use_all2all": True}), ("cpu", {"use_all2all": True})]
