"""One rank of an ascend-rs *host* communicator (device = -1), on torch CPU tensors.

Collectives run synchronously on the calling thread over the library's shared-memory transport and
read and write the tensors' memory directly (a non-contiguous tensor goes through a contiguous copy).
Data movement (all_gather, gather, broadcast, send, recv) passes the tensor's HCCL data type and element
count, as HCCL is called, so that ranks passing different dtypes or shapes fail (HCCL_E_PARA) instead of
reinterpreting each other's bytes; a dtype HCCL lacks (complex, float8, ...) moves as bytes (uint8).
Reductions need an HCCL data type (:data:`REDUCE_DTYPES`). This module needs torch but not vLLM.
"""

from __future__ import annotations

import ctypes
import struct
import threading

import torch

from . import _lib

SUM, PROD, MAX, MIN = 0, 1, 2, 3
_BYTES = 7  # HcclDataType uint8: what a dtype with no HCCL data type moves as

# torch dtype -> HcclDataType for reductions (bool is reduced as uint8: sum/max as MAX, i.e. logical
# or; prod/min as MIN, i.e. logical and).
REDUCE_DTYPES: dict[torch.dtype, int] = {
    torch.int8: 0,
    torch.int16: 1,
    torch.int32: 2,
    torch.float16: 3,
    torch.float32: 4,
    torch.int64: 5,
    torch.uint8: 7,
    torch.float64: 10,
    torch.bfloat16: 11,
    torch.bool: 7,
}
for _name, _code in (("uint64", 6), ("uint16", 8), ("uint32", 9)):
    if hasattr(torch, _name):
        REDUCE_DTYPES[getattr(torch, _name)] = _code


_BOOL_OPS = {SUM: MAX, MAX: MAX, PROD: MIN, MIN: MIN}


def _moved(t: torch.Tensor) -> tuple[int, int]:
    """(count, HcclDataType) a data-movement op passes for ``t``: its elements and its HCCL data type
    (bool as uint8), as on HCCL; a dtype HCCL lacks moves as bytes (count = bytes, uint8)."""
    code = REDUCE_DTYPES.get(t.dtype)
    if code is None:
        return t.numel() * t.element_size(), _BYTES
    return t.numel(), code


def hccl_dtype(dtype: torch.dtype) -> int:
    """The HcclDataType a reduction on ``dtype`` uses; TypeError when there is none."""
    try:
        return REDUCE_DTYPES[dtype]
    except KeyError:
        raise TypeError(
            f"ascend_patch: no HCCL data type for {dtype} (reductions support "
            f"{', '.join(str(d).replace('torch.', '') for d in REDUCE_DTYPES)})"
        ) from None


def _cpu(t: torch.Tensor, op: str) -> None:
    """Refuses what the host transport cannot move as bytes: a tensor off the CPU, or a lazy
    conjugate / negative view (its memory holds the values before the conjugation or negation)."""
    if not t.is_cpu:
        raise TypeError(
            f"ascend_patch: {op} takes CPU tensors on the host transport, not a tensor on {t.device} "
            "(the NPU path goes through the device C ABI with a stream)"
        )
    if t.is_conj() or t.is_neg():
        raise TypeError(
            f"ascend_patch: {op} got a lazy conjugate or negative view; resolve it first "
            "(t.resolve_conj() / t.resolve_neg())"
        )


class HostComm:
    """Joins the host communicator of ``root`` (from :func:`ascend_patch._lib.root_info`) as
    ``rank`` of ``nranks``; returns once every rank has joined. ``timeout`` (seconds) bounds the
    join and every collective; None takes ``HCCL_CONNECT_TIMEOUT`` and ``HCCL_EXEC_TIMEOUT``.

    Errors: the constructor and every operation raise :class:`ascend_patch.AscendPatchError` when
    the library fails (``HCCL_E_TIMEOUT`` when a peer does not join or take part in time, or died;
    ``HCCL_E_PARA`` when the ranks disagree on an operation's size, type, op or root); operations
    raise TypeError for a tensor off the CPU or a lazy conjugate / negative view, and RuntimeError
    once :meth:`destroy` was called. A timeout, a dead peer or a send/recv (or gather) mismatch
    fails the communicator for every rank: later operations raise AscendPatchError ("failed
    earlier"). :meth:`destroy` aborts operations in progress on other threads, waits for them to
    return, then frees the handle.
    """

    def __init__(self, root: bytes, nranks: int, rank: int, timeout: float | None = None):
        self._lib = lib = _lib.load()
        handle = ctypes.c_void_p()
        seconds = float(timeout) if timeout else 0.0
        _lib.check(
            lib.ascend_patch_comm_init_timeout(root, len(root), nranks, rank, -1, seconds, ctypes.byref(handle))
        )
        self._h = handle
        self.nranks = nranks
        self.rank = rank
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when no call uses the handle
        self._busy = 0  # calls using the handle now
        self._all_reduce = lib.ascend_patch_all_reduce
        self._all_gather = lib.ascend_patch_all_gather
        self._reduce_scatter = lib.ascend_patch_reduce_scatter
        self._gather = lib.ascend_patch_gather
        self._broadcast = lib.ascend_patch_broadcast
        self._send = lib.ascend_patch_send
        self._recv = lib.ascend_patch_recv

    def _call(self, fn, *args) -> None:
        """``fn(handle, *args)``, checked; the handle cannot be freed by :meth:`destroy` meanwhile."""
        with self._lock:
            h = self._h
            if h is None:
                raise RuntimeError("ascend_patch: this communicator was destroyed")
            self._busy += 1
        try:
            _lib.check(fn(h, *args))
        finally:
            with self._lock:
                self._busy -= 1
                if not self._busy and self._h is None:  # a destroy() waits for the last call
                    self._idle.notify_all()

    def destroy(self) -> None:
        """Leaves the communicator (idempotent), in bounded time; its shared memory is released when
        every rank has left. Operations running on other threads then are aborted (they raise
        AscendPatchError, HCCL_E_REMOTE, within milliseconds, and so do the other ranks' calls on
        it); later ones raise RuntimeError. Peers waiting for this rank fail at once once it has left,
        instead of at their timeout. AscendPatchError when the library fails to destroy it."""
        with self._lock:
            h, self._h = self._h, None
            busy = self._busy
        if h is not None and busy:
            # They may wait for peers until the exec timeout (1836 s by default): fail them now.
            _lib.check(self._lib.ascend_patch_comm_abort(h))
        with self._lock:
            while self._busy:
                self._idle.wait()
        if h is not None:
            _lib.check(self._lib.ascend_patch_comm_destroy(h))

    # -- collectives ----------------------------------------------------------------------------

    def all_reduce(self, t: torch.Tensor, op: int = SUM, out: torch.Tensor | None = None) -> torch.Tensor:
        """Every rank's ``t`` reduced over ranks: in place (returns ``t``), or into ``out`` (a
        contiguous tensor of ``t``'s dtype and size, returned; ``t`` is left unchanged), which saves
        copying ``t`` first. ValueError when ``out`` does not fit, before anything is sent."""
        _cpu(t, "all_reduce")
        dtype = t.dtype
        code = REDUCE_DTYPES.get(dtype)
        if code is None:
            hccl_dtype(dtype)
        if out is not None:
            _cpu(out, "all_reduce")
            if out.dtype != dtype or out.numel() != t.numel() or not out.is_contiguous():
                raise ValueError(
                    f"ascend_patch: all_reduce output must be contiguous {dtype} with {t.numel()} elements, "
                    f"not {out.dtype} {tuple(out.shape)}"
                )
        if dtype is torch.bool:
            op = _BOOL_OPS.get(op, op)
        n = t.numel()
        if n == 0:
            return t if out is None else out
        src = t.contiguous()
        dst = src if out is None else out
        self._call(self._all_reduce, src.data_ptr(), dst.data_ptr(), n, code, op, None)
        if out is not None:
            return out
        if src is not t:
            t.copy_(src)
        return t

    def all_gather_into(self, out: torch.Tensor, inp: torch.Tensor) -> None:
        """``out`` (contiguous, nranks × inp's bytes) = every rank's ``inp`` in rank order."""
        _cpu(inp, "all_gather")
        _cpu(out, "all_gather")
        inp = inp.contiguous()
        nbytes = inp.numel() * inp.element_size()
        if out.numel() * out.element_size() != nbytes * self.nranks or not out.is_contiguous():
            raise ValueError("ascend_patch: all_gather output must be contiguous with nranks × the input")
        if nbytes:
            self._call(self._all_gather, inp.data_ptr(), out.data_ptr(), *_moved(inp), None)

    def reduce_scatter_into(self, out: torch.Tensor, inp: torch.Tensor, op: int = SUM) -> None:
        """``out`` (count elements) = this rank's block of the reduction over every rank's ``inp``
        (nranks × count elements)."""
        _cpu(inp, "reduce_scatter")
        _cpu(out, "reduce_scatter")
        code = hccl_dtype(inp.dtype)
        if inp.dtype is torch.bool:
            op = _BOOL_OPS.get(op, op)
        inp = inp.contiguous()
        n = out.numel()
        if inp.numel() != n * self.nranks or out.dtype != inp.dtype or not out.is_contiguous():
            raise ValueError("ascend_patch: reduce_scatter input must hold nranks × the output's elements")
        if n:
            self._call(self._reduce_scatter, inp.data_ptr(), out.data_ptr(), n, code, op, None)

    def gather_into(self, out: torch.Tensor | None, inp: torch.Tensor, root: int) -> None:
        """On ``root``, ``out`` (contiguous, nranks × inp) = every rank's ``inp``; ``out`` is unused
        (may be None) elsewhere."""
        _cpu(inp, "gather")
        inp = inp.contiguous()
        nbytes = inp.numel() * inp.element_size()
        recv = 0
        if self.rank == root:
            if out is None or not out.is_contiguous() or out.numel() * out.element_size() != nbytes * self.nranks:
                raise ValueError("ascend_patch: gather output must be contiguous with nranks × the input")
            _cpu(out, "gather")
            recv = out.data_ptr()
        if nbytes:
            self._call(self._gather, inp.data_ptr(), recv or None, *_moved(inp), root, None)

    def broadcast(self, t: torch.Tensor, root: int) -> torch.Tensor:
        """In place: every rank's ``t`` becomes root's."""
        _cpu(t, "broadcast")
        nbytes = t.numel() * t.element_size()
        if nbytes == 0:
            return t
        count, code = _moved(t)
        if t.is_contiguous():
            self._call(self._broadcast, t.data_ptr(), count, code, root, None)
        else:
            work = t.contiguous()
            self._call(self._broadcast, work.data_ptr(), count, code, root, None)
            if self.rank != root:
                t.copy_(work)
        return t

    def send(self, t: torch.Tensor, peer: int) -> None:
        """Sends ``t`` to ``peer`` (returns once the peer took it)."""
        _cpu(t, "send")
        t = t.contiguous()
        nbytes = t.numel() * t.element_size()
        if nbytes:
            self._call(self._send, t.data_ptr(), *_moved(t), peer, None)

    def recv(self, t: torch.Tensor, peer: int) -> torch.Tensor:
        """Fills ``t`` with what ``peer`` sends and returns it. ``t`` must have the size and the
        dtype sent: otherwise both ranks raise AscendPatchError (HCCL_E_PARA) and the communicator
        fails for good, for every rank."""
        _cpu(t, "recv")
        nbytes = t.numel() * t.element_size()
        if nbytes == 0:
            return t
        count, code = _moved(t)
        if t.is_contiguous():
            self._call(self._recv, t.data_ptr(), count, code, peer, None)
        else:
            work = torch.empty_like(t, memory_format=torch.contiguous_format)
            self._call(self._recv, work.data_ptr(), count, code, peer, None)
            t.copy_(work)
        return t

    def send_bytes(self, data: bytes, peer: int) -> None:
        """Sends a length header, then ``data``."""
        header = struct.pack("<Q", len(data))
        self._call(self._send, header, 8, _BYTES, peer, None)
        if data:
            self._call(self._send, data, len(data), _BYTES, peer, None)

    def recv_bytes(self, peer: int) -> bytes:
        """What ``send_bytes`` on ``peer`` sent."""
        header = ctypes.create_string_buffer(8)
        self._call(self._recv, header, 8, _BYTES, peer, None)
        (n,) = struct.unpack("<Q", header.raw)
        if n == 0:
            return b""
        buf = ctypes.create_string_buffer(n)
        self._call(self._recv, buf, n, _BYTES, peer, None)
        return buf.raw

    def barrier(self) -> None:
        """Returns once every rank called it; AscendPatchError on a timeout or a dead peer."""
        self._call(self._lib.ascend_patch_barrier, None)
