"""``AscendCommunicator``: vLLM's device communicator backed by ascend-rs collectives.

vLLM creates one device communicator per group (``GroupCoordinator``) through the platform's
``get_device_communicator_cls()``; the ``worker/patch_communicator`` patch makes that this class on
the CPU platform. Each instance uses an ascend-rs *host* communicator (device = -1: CPU tensors over
shared memory) for its ranks. Communicators live in a process-wide table keyed by the group's global
ranks and are reference-counted: groups with identical ranks (TP and EP when DP = PCP = 1, say) share
one. The root info is made by group rank 0 and handed to the others over the group's gloo
``cpu_group`` once, when the communicator is created (with a check that every rank shares the
machine and /dev/shm: the host transport is shared memory).

Results follow vLLM's ``CpuCommunicator`` / ``DeviceCommunicatorBase`` (concat-style
``all_gather``, ``reduce_scatter`` along ``dim`` as vLLM cuts it, ``gather`` returning None off
``dst``, ``broadcast`` in place), with one difference: ``all_reduce`` returns the reduction as a new
tensor and leaves its input unchanged, where ``CpuCommunicator`` reduces in place and returns its
input (vLLM's callers use the returned tensor). ``AscendCommunicator.calls`` counts calls per operation.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import pickle
import socket
import threading
from typing import Any

import torch
import torch.distributed as dist
from vllm.distributed.device_communicators.base_device_communicator import DeviceCommunicatorBase

from . import _lib
from ._comm import HostComm, _cpu

logger = logging.getLogger("ascend_patch")

# What a tensor of a tensor dict becomes in the metadata that precedes the payloads.
TensorMeta = collections.namedtuple("TensorMeta", ["device", "dtype", "size"])


class _Shared:
    """A host communicator shared by the groups with the same global ranks."""

    def __init__(self, key: tuple[int, ...], comm: HostComm):
        self.key = key
        #: How the custom ops name it (they take strings, not Python objects).
        self.name = ",".join(map(str, key))
        self.comm = comm
        self.refs = 0
        self.owners: list[str] = []


_table_lock = threading.Lock()
_table: dict[tuple[int, ...], _Shared] = {}


def live_communicators() -> dict[tuple[int, ...], dict]:
    """The ascend-rs communicators of this process: ranks -> {refs, owners} (for tests)."""
    with _table_lock:
        return {k: {"refs": s.refs, "owners": list(s.owners)} for k, s in _table.items()}


def destroy_all() -> int:
    """Destroys every remaining communicator of this process (whatever its reference count) and
    releases its shared memory; returns how many there were."""
    with _table_lock:
        shared = list(reversed(_table.values()))  # the last made first
        _table.clear()
    for s in shared:
        s.refs = 0
        try:
            s.comm.destroy()
        except _lib.AscendPatchError as e:
            logger.warning("destroying the communicator of ranks %s failed: %s", list(s.key), e)
    return len(shared)


def _shm_domain() -> tuple:
    """What ranks must share to reach each other's shared memory: the machine (host name, boot) and
    the /dev/shm mount (containers on one machine may each have their own)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    try:
        st = os.stat("/dev/shm")
        shm = (st.st_dev, st.st_ino)
    except OSError:
        shm = None
    return (socket.gethostname(), boot, shm)


def _exchange_root_info(comm: "AscendCommunicator", info: bytes | None) -> bytes:
    """Group rank 0's root info, after checking that every rank can reach the others' shared memory
    (one all-gather on the gloo cpu_group)."""
    group = comm.cpu_group
    if hasattr(group, "broadcast_obj"):  # vLLM's StatelessProcessGroup
        raise RuntimeError(
            "ascend_patch: stateless process groups are not supported; disable the patch with "
            "ASCEND_PATCH_DISABLE=worker/patch_communicator"
        )
    everyone: list = [None] * comm.world_size
    dist.all_gather_object(everyone, (_shm_domain(), info), group=group)
    domains = {d for d, _ in everyone}
    if len(domains) > 1:
        raise RuntimeError(
            f"ascend_patch: the ranks {list(comm.ranks)} of group {comm.unique_name} do not share one "
            f"machine and /dev/shm ({sorted(str(d[0]) for d in domains)}); AscendCommunicator's host "
            "transport is shared memory. Disable it with ASCEND_PATCH_DISABLE=worker/patch_communicator."
        )
    return everyone[0][1]


def _on_one_machine(cpu_group) -> bool:
    """Whether every rank of ``cpu_group`` runs on this machine and sees this /dev/shm (one
    all-gather on the gloo group, so every rank gets the same answer). True for a group of one and
    for vLLM's stateless groups (AscendCommunicator refuses those with its own message)."""
    if dist.get_world_size(cpu_group) == 1 or hasattr(cpu_group, "broadcast_obj"):
        return True
    everyone: list = [None] * dist.get_world_size(cpu_group)
    dist.all_gather_object(everyone, _shm_domain(), group=cpu_group)
    return len(set(everyone)) == 1


def make_communicator(cpu_group, device=None, device_group=None, unique_name: str = "", **kwargs):
    """The device communicator of a vLLM group while the patch is on (what the CPU platform names):
    an :class:`AscendCommunicator` when the group's ranks share one machine and /dev/shm, which its
    transport needs; otherwise vLLM's own ``CpuCommunicator`` (logged), as vLLM falls back when its
    shared-memory communicator cannot serve a group, so a multi-node pipeline still starts."""
    if _on_one_machine(cpu_group):
        return AscendCommunicator(cpu_group, device, device_group, unique_name, **kwargs)
    from vllm.distributed.device_communicators.cpu_communicator import CpuCommunicator

    logger.warning(
        "group %s spans machines (or /dev/shm namespaces): it uses vLLM's CpuCommunicator, not "
        "AscendCommunicator, whose transport is shared memory",
        unique_name,
    )
    return CpuCommunicator(cpu_group, device, device_group, unique_name, **kwargs)


def distributed_timeout() -> float | None:
    """vLLM's ``--distributed-timeout-seconds`` (its own process groups' timeout), which the host
    communicator honours too; None when unset (HCCL's timeouts then apply)."""
    from vllm.config import get_current_vllm_config_or_none

    config = get_current_vllm_config_or_none()
    seconds = getattr(config.parallel_config, "distributed_timeout_seconds", None) if config is not None else None
    return float(seconds) if seconds else None


def _acquire(comm: "AscendCommunicator") -> _Shared:
    key = tuple(int(r) for r in comm.ranks)
    with _table_lock:
        shared = _table.get(key)
        if shared is None:
            # Every rank of the group makes the same decision: they built the same groups in the
            # same order, so they all find the entry or none of them does.
            info = _lib.root_info(-1) if comm.rank_in_group == 0 else None
            info = _exchange_root_info(comm, info)
            shared = _Shared(key, HostComm(info, comm.world_size, comm.rank_in_group, distributed_timeout()))
            _table[key] = shared
        shared.refs += 1
        shared.owners.append(comm.unique_name)
        return shared


def _release(shared: _Shared, owner: str) -> None:
    with _table_lock:
        if _table.get(shared.key) is not shared:
            return  # already destroyed by destroy_all
        shared.refs -= 1
        if owner in shared.owners:
            shared.owners.remove(owner)
        if shared.refs > 0:
            return
        del _table[shared.key]
    shared.comm.destroy()


@functools.lru_cache(maxsize=256)
def _key(name: str) -> tuple[int, ...]:
    """The table key of a communicator's name (parsed once: it is looked up on every collective)."""
    return tuple(int(r) for r in name.split(","))


def _host_comm(name: str) -> HostComm:
    with _table_lock:
        shared = _table.get(_key(name))
    if shared is None:
        raise RuntimeError(f"ascend_patch: the communicator of ranks {name} was destroyed")
    return shared.comm


# all_reduce, all_gather and reduce_scatter sit in the model's forward, which vLLM compiles with
# torch.compile(fullgraph=True): there they go through opaque custom ops (``torch.ops.ascend_patch.*``),
# so Dynamo never traces into ctypes. In eager mode the same functions are called directly: the custom
# op dispatcher would cost more than a small collective itself. Each returns a new tensor.


def _all_reduce(x: torch.Tensor, comm: str) -> torch.Tensor:
    AscendCommunicator.calls["all_reduce"] += 1
    # empty_like with an explicit format costs half of torch.empty(shape, dtype) (~1 µs at 4 KiB).
    return _host_comm(comm).all_reduce(x, out=torch.empty_like(x, memory_format=torch.contiguous_format))


def _gathered_shape(x: torch.Tensor, dim: int, n: int) -> tuple[int, ...]:
    return tuple(x.shape[:dim]) + (n * x.shape[dim],) + tuple(x.shape[dim + 1 :])


def _all_gather(x: torch.Tensor, dim: int, world_size: int, comm: str) -> torch.Tensor:
    AscendCommunicator.calls["all_gather"] += 1
    out = torch.empty((world_size,) + tuple(x.shape), dtype=x.dtype, device=x.device)
    _host_comm(comm).all_gather_into(out, x)
    return out.movedim(0, dim).reshape(_gathered_shape(x, dim, world_size))


def _reduce_scatter(x: torch.Tensor, dim: int, world_size: int, comm: str) -> torch.Tensor:
    AscendCommunicator.calls["reduce_scatter"] += 1
    # Cut as vLLM's communicators do: dimension `dim` is brought to the front with movedim(0, dim).
    inp = x.movedim(0, dim).contiguous()
    out = torch.empty((inp.shape[0] // world_size,) + tuple(inp.shape[1:]), dtype=inp.dtype, device=inp.device)
    _host_comm(comm).reduce_scatter_into(out, inp)
    return out.movedim(0, dim).contiguous()


_all_reduce_op = torch.library.custom_op("ascend_patch::all_reduce", _all_reduce, mutates_args=())
_all_gather_op = torch.library.custom_op("ascend_patch::all_gather", _all_gather, mutates_args=())
_reduce_scatter_op = torch.library.custom_op("ascend_patch::reduce_scatter", _reduce_scatter, mutates_args=())


@_all_reduce_op.register_fake
def _(x: torch.Tensor, comm: str) -> torch.Tensor:
    return torch.empty_like(x)


@_all_gather_op.register_fake
def _(x: torch.Tensor, dim: int, world_size: int, comm: str) -> torch.Tensor:
    return x.new_empty(_gathered_shape(x, dim, world_size))


@_reduce_scatter_op.register_fake
def _(x: torch.Tensor, dim: int, world_size: int, comm: str) -> torch.Tensor:
    inp = x.movedim(0, dim)
    return inp.new_empty((inp.shape[0] // world_size,) + tuple(inp.shape[1:])).movedim(0, dim).contiguous()


def _traced(op, eager):
    """The custom op while torch.compile traces, the plain function otherwise."""
    return op if torch.compiler.is_compiling() else eager


class AscendCommunicator(DeviceCommunicatorBase):
    """A vLLM device communicator whose collectives run on ascend-rs (host transport, CPU tensors).
    Every collective raises RuntimeError once the group's ascend-rs communicator was destroyed."""

    #: Calls per operation in this process (all_reduce, all_gather, ...), for tests and benchmarks.
    calls: collections.Counter = collections.Counter()

    def __init__(
        self,
        cpu_group,
        device: torch.device | None = None,
        device_group=None,
        unique_name: str = "",
        global_ranks: list[int] | None = None,
        global_world_size: int | None = None,
        use_all2all: bool = False,
    ):
        super().__init__(
            cpu_group,
            device,
            device_group,
            unique_name,
            global_ranks=global_ranks,
            global_world_size=global_world_size,
            use_all2all=use_all2all,
        )
        if self.device.type != "cpu":
            raise RuntimeError(
                f"ascend_patch: AscendCommunicator runs the host transport on CPU tensors; group "
                f"{unique_name} is on {self.device}"
            )
        # PP tensor dicts go through send_tensor_dict / recv_tensor_dict (vLLM checks this flag).
        self.supports_tensor_dict = True
        self._released = False
        self._shared = _acquire(self)
        self._comm = self._shared.comm
        if self.use_all2all:  # as vLLM's CpuCommunicator does for MoE on CPU
            from vllm.distributed.device_communicators.all2all import AgRsAll2AllManager

            self.all2all_manager = AgRsAll2AllManager(self.cpu_group)

    # -- collectives ----------------------------------------------------------------------------
    # all_reduce, all_gather and reduce_scatter: custom ops while compiling, plain calls in eager mode
    # (see `_traced`); each returns a new tensor.

    def all_reduce(self, input_: torch.Tensor) -> torch.Tensor:
        """A new tensor, the sum of every rank's ``input_`` (left unchanged); TypeError for a tensor off
        the CPU or a dtype HCCL cannot reduce, AscendPatchError on a timeout or a dead peer."""
        return _traced(torch.ops.ascend_patch.all_reduce, _all_reduce)(input_, self._shared.name)

    def all_gather(self, input_: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Every rank's ``input_`` concatenated along ``dim`` in rank order (a new tensor); TypeError
        for a tensor off the CPU, AscendPatchError on a timeout or a dead peer."""
        if dim < 0:
            dim += input_.dim()
        return _traced(torch.ops.ascend_patch.all_gather, _all_gather)(input_, dim, self.world_size, self._shared.name)

    def reduce_scatter(self, input_: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """This rank's block of the sum of every rank's ``input_``, cut as vLLM's communicators cut it:
        along the dimension ``input_.movedim(0, dim)`` brings to the front, moved back the same way (so
        ``dim`` itself for 2-D inputs). A new tensor (the input itself with one rank); AssertionError
        when ``dim`` is out of range or that size is not a multiple of the world size, otherwise as
        :meth:`all_reduce`."""
        world_size = self.world_size
        if world_size == 1:
            return input_
        assert -input_.dim() <= dim < input_.dim(), (
            f"Invalid dim ({dim}) for input tensor with shape {input_.size()}"
        )
        if dim < 0:
            dim += input_.dim()
        # The size vLLM divides: of the dimension movedim(0, dim) brings to the front.
        assert input_.movedim(0, dim).shape[0] % world_size == 0
        return _traced(torch.ops.ascend_patch.reduce_scatter, _reduce_scatter)(input_, dim, world_size, self._shared.name)

    def gather(self, input_: torch.Tensor, dst: int = 0, dim: int = -1) -> torch.Tensor | None:
        """On group rank ``dst``, every rank's ``input_`` concatenated along ``dim``; None elsewhere.
        AssertionError for a ``dim`` out of range, otherwise as :meth:`all_gather`."""
        AscendCommunicator.calls["gather"] += 1
        assert -input_.dim() <= dim < input_.dim(), (
            f"Invalid dim ({dim}) for input tensor with shape {input_.size()}"
        )
        if dim < 0:
            dim += input_.dim()
        if self.rank_in_group == dst:
            out = torch.empty((self.world_size,) + tuple(input_.shape), dtype=input_.dtype, device=input_.device)
            self._comm.gather_into(out, input_, dst)
            return torch.cat(out.unbind(0), dim=dim)
        self._comm.gather_into(None, input_, dst)
        return None

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        """In place: ``tensor`` becomes group rank ``src``'s, and is returned; TypeError for a tensor
        off the CPU, AscendPatchError on a timeout or a dead peer."""
        AscendCommunicator.calls["broadcast"] += 1
        if self.world_size == 1:
            return tensor
        self._comm.broadcast(tensor, src)
        return tensor

    # -- point to point -------------------------------------------------------------------------

    def send(self, tensor: torch.Tensor, dst: int | None = None) -> None:
        """Sends ``tensor`` to group rank ``dst`` (default: the next rank), returning once it was taken;
        TypeError for a tensor off the CPU, AscendPatchError on a timeout, a dead peer or a size the
        receiver does not expect."""
        AscendCommunicator.calls["send"] += 1
        if dst is None:
            dst = (self.rank_in_group + 1) % self.world_size
        self._comm.send(tensor, dst)

    def recv(self, size: torch.Size, dtype: torch.dtype, src: int | None = None) -> torch.Tensor:
        """A new tensor of ``size`` and ``dtype`` holding what group rank ``src`` (default: the previous
        rank) sent; AscendPatchError on a timeout, a dead peer or a size mismatch (which fails the
        communicator for good, see :meth:`HostComm.recv`)."""
        AscendCommunicator.calls["recv"] += 1
        if src is None:
            src = (self.rank_in_group - 1) % self.world_size
        tensor = torch.empty(size, dtype=dtype, device=self.device)
        self._comm.recv(tensor, src)
        return tensor

    def send_tensor_dict(self, tensor_dict: dict[str, torch.Tensor | Any], dst: int) -> None:
        """Sends the metadata (keys, dtypes, shapes and the non-tensor values, pickled after a length
        header), then each non-empty tensor's bytes; TypeError, before anything is sent, when a tensor
        is off the CPU; AscendPatchError on a timeout or a dead peer."""
        AscendCommunicator.calls["send_tensor_dict"] += 1
        metadata, tensors = split_tensor_dict(tensor_dict)
        # Refuse before anything is sent: a receiver given the metadata would wait for the tensors.
        for t in tensors:
            _cpu(t, "send_tensor_dict")
        self._comm.send_bytes(pickle.dumps(metadata, protocol=pickle.HIGHEST_PROTOCOL), dst)
        for t in tensors:
            if t.numel():
                self._comm.send(t, dst)

    def recv_tensor_dict(self, src: int) -> dict[str, torch.Tensor | Any]:
        """What :meth:`send_tensor_dict` on group rank ``src`` sent, the tensors new CPU tensors;
        AscendPatchError on a timeout or a dead peer."""
        AscendCommunicator.calls["recv_tensor_dict"] += 1
        metadata = pickle.loads(self._comm.recv_bytes(src))
        out: dict[str, Any] = {}
        for key, value in metadata:
            if isinstance(value, TensorMeta):
                t = torch.empty(value.size, dtype=value.dtype, device=self.device)
                if t.numel():
                    self._comm.recv(t, src)
                out[key] = t
            else:
                out[key] = value
        return out

    # -- MoE (as vLLM's CpuCommunicator: through the all2all manager when there is one) ----------

    def dispatch_router_logits(self, hidden_states, router_logits, is_sequence_parallel=False, extra_tensors=None):
        """MoE: the all2all manager's ``dispatch_router_logits`` (``use_all2all``); without one,
        NotImplementedError from vLLM's base class."""
        if self.all2all_manager is None:
            return super().dispatch_router_logits(hidden_states, router_logits, is_sequence_parallel, extra_tensors)
        return self.all2all_manager.dispatch_router_logits(
            hidden_states, router_logits, is_sequence_parallel, extra_tensors
        )

    def dispatch(self, hidden_states, topk_weights, topk_ids, is_sequence_parallel=False, extra_tensors=None):
        """MoE: the all2all manager's ``dispatch`` (``use_all2all``); without one, NotImplementedError
        from vLLM's base class."""
        if self.all2all_manager is None:
            return super().dispatch(hidden_states, topk_weights, topk_ids, is_sequence_parallel, extra_tensors)
        return self.all2all_manager.dispatch(
            hidden_states, topk_weights, topk_ids, is_sequence_parallel, extra_tensors=extra_tensors
        )

    def combine(self, hidden_states, is_sequence_parallel=False):
        """MoE: the all2all manager's ``combine`` (``use_all2all``); without one, NotImplementedError
        from vLLM's base class."""
        if self.all2all_manager is None:
            return super().combine(hidden_states, is_sequence_parallel)
        return self.all2all_manager.combine(hidden_states, is_sequence_parallel)

    # -- lifecycle ------------------------------------------------------------------------------

    def destroy(self) -> None:
        """Drops this group's reference; the ascend-rs communicator is destroyed (and its shared
        memory released) with the last group using it."""
        if self._released:
            return
        self._released = True
        if self.all2all_manager is not None:
            self.all2all_manager.destroy()
            self.all2all_manager = None
        _release(self._shared, self.unique_name)


def split_tensor_dict(tensor_dict: dict[str, Any]) -> tuple[list[tuple[str, Any]], list[torch.Tensor]]:
    """(metadata: (key, value or TensorMeta) per entry in order, the tensors in order)."""
    metadata: list[tuple[str, Any]] = []
    tensors: list[torch.Tensor] = []
    for key, value in tensor_dict.items():
        if isinstance(value, torch.Tensor):
            metadata.append((key, TensorMeta(value.device.type, value.dtype, value.size())))
            tensors.append(value)
        else:
            metadata.append((key, value))
    return metadata, tensors
