#!/usr/bin/env python3
"""Two-rank HCCL test written as an ordinary ctypes client of CANN's libascendcl + libhccl.

It uses only the public CANN C ABI (names, signatures and constant values of acl.h / hccl.h), so the
same code runs against the real libraries; here one file, libascend_sim.so, provides both.

    python3 hccl_ctypes.py /path/to/libascend_sim.so

Each rank runs in its own spawned process. Rank 0 creates the root info and ships its raw 4108 bytes
to rank 1 over a Pipe (out of band, as real jobs do). The ranks report every check to the parent,
which prints one line per check and then "N passed, M failed"; the exit status is 0 only if M == 0.
Standard library only.
"""
import ctypes, multiprocessing as mp, os, queue, struct, sys, time
from ctypes import POINTER, byref, c_char_p, c_int, c_size_t, c_uint32, c_uint64, c_void_p

# Constants from acl.h / hccl_types.h (restated in ascend-sys/include/ascend/types.h).
ACL_MEMCPY_HOST_TO_DEVICE, ACL_MEMCPY_DEVICE_TO_HOST = 1, 2
ACL_ERROR_REPEAT_INITIALIZE = 100002
HCCL_E_PARA = 1
INT32, FP16, FP32, BFP16 = 2, 3, 4, 11  # HcclDataType
SUM, MAX = 0, 2                          # HcclReduceOp
N = 1001                # odd element count: catches chunking / tail bugs
BIG = (1 << 18) + 3     # fp32 elements, a little over 1 MiB: the in-place all-reduce
TIMEOUT_S = 60          # the parent's budget for the whole run

class HcclRootInfo(ctypes.Structure):
    _fields_ = [("internal", ctypes.c_char * 4108)]

def load(path):
    """Declares every function we call exactly as CANN does (one CDLL stands in for both libraries)."""
    lib = ctypes.CDLL(path)
    vp, pvp = c_void_p, POINTER(c_void_p)
    sigs = {
        "aclInit": (c_int, [c_char_p]),
        "aclFinalize": (c_int, []),
        "aclrtSetDevice": (c_int, [c_int]),
        "aclrtResetDevice": (c_int, [c_int]),
        "aclrtCreateStream": (c_int, [pvp]),
        "aclrtDestroyStream": (c_int, [vp]),
        "aclrtSynchronizeStream": (c_int, [vp]),
        "aclrtMalloc": (c_int, [pvp, c_size_t, c_int]),
        "aclrtFree": (c_int, [vp]),
        "aclrtMemcpy": (c_int, [vp, c_size_t, vp, c_size_t, c_int]),
        "HcclGetRootInfo": (c_int, [POINTER(HcclRootInfo)]),
        "HcclCommInitRootInfo": (c_int, [c_uint32, POINTER(HcclRootInfo), c_uint32, pvp]),
        "HcclCommDestroy": (c_int, [vp]),
        "HcclGetRankSize": (c_int, [vp, POINTER(c_uint32)]),
        "HcclGetErrorString": (c_char_p, [c_int]),
        "HcclAllReduce": (c_int, [vp, vp, c_uint64, c_int, c_int, vp, vp]),
        "HcclAllGather": (c_int, [vp, vp, c_uint64, c_int, vp, vp]),
        "HcclBroadcast": (c_int, [vp, c_uint64, c_int, c_uint32, vp, vp]),
    }
    for name, (restype, argtypes) in sigs.items():
        f = getattr(lib, name)
        f.restype, f.argtypes = restype, argtypes
    return lib

# ---- host-side data: encoding and the reference results -------------------------------------------
FMT = {INT32: "i", FP32: "f", BFP16: "H"}  # bf16 travels as uint16: the upper half of a float32
SIZE = {t: struct.calcsize(f) for t, f in FMT.items()}

def pack(dtype, vals):
    if dtype == BFP16:
        vals = [struct.unpack("<I", struct.pack("<f", v))[0] >> 16 for v in vals]
    return struct.pack(f"<{len(vals)}{FMT[dtype]}", *vals)

def unpack(dtype, raw):
    vals = struct.unpack(f"<{len(raw) // SIZE[dtype]}{FMT[dtype]}", raw)
    if dtype == BFP16:
        return [struct.unpack("<f", struct.pack("<I", h << 16))[0] for h in vals]
    return list(vals)

def inputs(rank, dtype, n):
    """Each rank's known input; every result below is exact in its dtype."""
    if dtype == INT32:   # signed, and which rank holds the max varies per element
        return [((i * 37 + rank * 101) % 201) - 100 for i in range(n)]
    if dtype == BFP16:   # sums <= 31 are exact in bf16's 8-bit significand
        return [float((i + rank) % 16) for i in range(n)]
    return [float(i % 1000) + 0.5 * rank for i in range(n)]

def reduce2(op, a, b):
    return [x + y if op == SUM else max(x, y) for x, y in zip(a, b)]

class Abort(Exception):
    """A step that later steps depend on failed (already reported)."""

# ---- one rank ------------------------------------------------------------------------------------
def rank_main(rank, libpath, root_conn, results):
    failures = []

    def check(name, ok, detail=""):
        results.put((rank, name, bool(ok), detail))
        if not ok:
            failures.append(name)
        return ok

    def must(rc, name, quiet=False):
        """A step later ones depend on; `quiet` ones are only reported when they fail."""
        if rc != 0 or not quiet:
            check(name, rc == 0, f"rc={rc}")
        if rc != 0:
            raise Abort(name)

    try:
        lib = load(libpath)
        rc = lib.aclInit(None)
        if not check("aclInit", rc in (0, ACL_ERROR_REPEAT_INITIALIZE), f"rc={rc}"):
            raise Abort("aclInit")
        must(lib.aclrtSetDevice(rank), "aclrtSetDevice")
        stream = c_void_p()
        must(lib.aclrtCreateStream(byref(stream)), "aclrtCreateStream")

        # Root info: rank 0 creates it, everybody else receives its raw bytes out of band.
        root = HcclRootInfo()
        if rank == 0:
            must(lib.HcclGetRootInfo(byref(root)), "HcclGetRootInfo")
            root_conn.send_bytes(bytes(root))          # all 4108 bytes, NULs included
        else:
            if not root_conn.poll(30):
                raise RuntimeError("no root info from rank 0 within 30 s")
            root = HcclRootInfo.from_buffer_copy(root_conn.recv_bytes())
        comm = c_void_p()
        must(lib.HcclCommInitRootInfo(2, byref(root), rank, byref(comm)), "HcclCommInitRootInfo")
        size = c_uint32()
        rc = lib.HcclGetRankSize(comm, byref(size))
        check("HcclGetRankSize == 2", rc == 0 and size.value == 2, f"rc={rc} size={size.value}")

        bufs = []

        def dev(data_or_size):
            """aclrtMalloc a device buffer; fill it (H2D) when given bytes."""
            nbytes = len(data_or_size) if isinstance(data_or_size, bytes) else data_or_size
            p = c_void_p()
            must(lib.aclrtMalloc(byref(p), nbytes, 0), f"aclrtMalloc({nbytes})", quiet=True)
            bufs.append(p)
            if isinstance(data_or_size, bytes):
                must(lib.aclrtMemcpy(p, nbytes, data_or_size, nbytes, ACL_MEMCPY_HOST_TO_DEVICE), "aclrtMemcpy H2D", quiet=True)
            return p

        def run(name, rc, out, dtype, want):
            """After enqueueing: synchronize, copy `out` back, compare with `want`."""
            if rc != 0:
                return check(name, False, f"enqueue rc={rc} {lib.HcclGetErrorString(rc)!r}")
            rc = lib.aclrtSynchronizeStream(stream)
            if rc != 0:
                return check(name, False, f"aclrtSynchronizeStream rc={rc}")
            nbytes = len(want) * SIZE[dtype]
            host = ctypes.create_string_buffer(nbytes)
            rc = lib.aclrtMemcpy(host, nbytes, out, nbytes, ACL_MEMCPY_DEVICE_TO_HOST)
            got = unpack(dtype, host.raw)
            bad = next((i for i, (g, w) in enumerate(zip(got, want)) if g != w), None)
            return check(name, rc == 0 and bad is None,
                         f"memcpy rc={rc}" if bad is None else f"[{bad}] got {got[bad]} want {want[bad]}")

        # All-reduce, out of place, one dtype/op pair at a time.
        for dtype, op, label in ((FP32, SUM, "fp32 sum"), (INT32, MAX, "int32 max"), (BFP16, SUM, "bf16 sum")):
            send = dev(pack(dtype, inputs(rank, dtype, N)))
            recv = dev(N * SIZE[dtype])
            want = reduce2(op, inputs(0, dtype, N), inputs(1, dtype, N))
            run(f"allreduce {label} n={N}", lib.HcclAllReduce(send, recv, N, dtype, op, comm, stream),
                recv, dtype, want)

        # All-reduce in place (send == recv) on a buffer over 1 MiB.
        buf = dev(pack(FP32, inputs(rank, FP32, BIG)))
        run(f"allreduce fp32 sum in-place n={BIG} ({BIG * 4} B)",
            lib.HcclAllReduce(buf, buf, BIG, FP32, SUM, comm, stream), buf, FP32,
            reduce2(SUM, inputs(0, FP32, BIG), inputs(1, FP32, BIG)))

        # All-gather: recv holds rank 0's block then rank 1's.
        send, recv = dev(pack(FP32, inputs(rank, FP32, N))), dev(2 * N * SIZE[FP32])
        run(f"allgather fp32 sendCount={N}", lib.HcclAllGather(send, recv, N, FP32, comm, stream),
            recv, FP32, inputs(0, FP32, N) + inputs(1, FP32, N))

        # Broadcast from rank 1: both ranks end with rank 1's input.
        buf = dev(pack(FP32, inputs(rank, FP32, N)))
        run(f"broadcast fp32 root=1 n={N}", lib.HcclBroadcast(buf, N, FP32, 1, comm, stream),
            buf, FP32, inputs(1, FP32, N))

        # Error path: an unknown dtype is rejected at the call, before anything is enqueued.
        t0 = time.monotonic()
        rc = lib.HcclAllReduce(send, recv, N, 99, SUM, comm, stream)
        dt = time.monotonic() - t0
        check("allreduce dtype=99 -> HCCL_E_PARA at once", rc == HCCL_E_PARA and dt < 1.0, f"rc={rc} in {dt:.3f} s")
        msg = lib.HcclGetErrorString(HCCL_E_PARA)
        check("HcclGetErrorString(1) == b'HCCL_E_PARA'", msg == b"HCCL_E_PARA", f"got {msg!r}")
        rc = lib.aclrtSynchronizeStream(stream)
        check("stream still healthy after the rejected call", rc == 0, f"rc={rc}")

        # Teardown, in the order a client would do it.
        codes = {"HcclCommDestroy": lib.HcclCommDestroy(comm)}
        codes["aclrtFree"] = max([lib.aclrtFree(p) for p in bufs])  # worst code (all are >= 0)
        codes["aclrtDestroyStream"] = lib.aclrtDestroyStream(stream)
        codes["aclrtResetDevice"] = lib.aclrtResetDevice(rank)
        codes["aclFinalize"] = lib.aclFinalize()
        check("teardown", not any(codes.values()), repr(codes))
    except Abort:
        pass
    except Exception as e:  # report instead of dying silently
        check("unexpected exception", False, repr(e))
    results.put((rank, None, None, None))  # "done" marker
    sys.exit(1 if failures else 0)

# ---- parent --------------------------------------------------------------------------------------
def main():
    if len(sys.argv) != 2:
        print(f"usage: {sys.argv[0]} /path/to/libascend_sim.so", file=sys.stderr)
        return 2
    libpath = os.path.abspath(sys.argv[1])
    os.environ["HCCL_CONNECT_TIMEOUT"] = "20"   # a broken rendezvous fails instead of hanging
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    rx, tx = ctx.Pipe(duplex=False)             # rank 0 -> rank 1: the root info
    procs = [ctx.Process(target=rank_main, args=(r, libpath, c, results)) for r, c in ((0, tx), (1, rx))]
    for p in procs:
        p.start()
    tx.close(), rx.close()                      # so rank 1 sees EOF if rank 0 dies early

    rows, done, deadline = [], 0, time.monotonic() + TIMEOUT_S
    while done < 2 and time.monotonic() < deadline:
        try:
            rank, name, ok, detail = results.get(timeout=0.2)
        except queue.Empty:
            if not any(p.is_alive() for p in procs) and results.empty():
                break                           # a rank died without its "done" marker
            continue
        if name is None:
            done += 1
        else:
            rows.append((f"rank{rank}", name, ok, detail))
    for p in procs:
        p.join(max(0.1, deadline - time.monotonic()))
    if any(p.is_alive() for p in procs):
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(5)
        rows.append(("parent", f"ranks finished within {TIMEOUT_S} s", False, "terminated"))
    for r, p in enumerate(procs):
        rows.append(("parent", f"rank {r} exited 0", p.exitcode == 0, f"exitcode={p.exitcode}"))

    rows.sort(key=lambda row: (row[0] == "parent", row[0]))  # rank0, rank1, parent; stable
    for who, name, ok, detail in rows:
        print(f"{'PASS' if ok else 'FAIL'} {who}: {name}" + ("" if ok or not detail else f" ({detail})"))
    failed = sum(1 for row in rows if not row[2])
    print(f"{len(rows) - failed} passed, {failed} failed")
    return 0 if failed == 0 else 1

if __name__ == "__main__":
    sys.exit(main())
