"""worker/patch_communicator: vLLM's device communicator replaced by one backed by ascend-rs.

Why: vLLM's CPU collectives go through gloo over loopback TCP (milliseconds per call); ascend-rs
runs them over shared memory in microseconds.

How: the CPU platform's ``get_device_communicator_cls()`` returns
``ascend_patch.communicator.make_communicator``, which builds an ``AscendCommunicator`` for a group
whose ranks share one machine and /dev/shm (vLLM's own ``CpuCommunicator`` otherwise): a
``DeviceCommunicatorBase`` whose all_reduce,
all_gather, reduce_scatter, gather, broadcast, send and recv (and the tensor-dict send/recv that
pipeline parallelism uses, enabled by ``supports_tensor_dict``) call the ascend-patch C ABI on the
tensors' memory. ``GroupCoordinator.broadcast`` and ``GroupCoordinator.broadcast_tensor_dict`` call
torch.distributed directly; they are wrapped so that, when the group's communicator is ours, the
tensors go through it (the tensor dict's metadata keeps vLLM's object path). Groups with identical
ranks share one ascend-rs communicator (reference-counted). all_reduce, all_gather and
reduce_scatter run as custom torch ops (``torch.ops.ascend_patch.*``, returning new tensors), so a
model forward that vLLM compiles with ``torch.compile(fullgraph=True)`` traces them as opaque calls
instead of failing on ctypes.

Upstream: none yet. vLLM selects the communicator per platform, and an out-of-tree platform plugin
would replace the whole CPU platform to change one class. A hook to choose the device communicator
independently of the platform would remove this patch.

Future: remove once vLLM accepts a communicator class from configuration or a plugin hook.
"""

from __future__ import annotations

import functools

PATCH_ID = "worker/patch_communicator"
COMMUNICATOR = "ascend_patch.communicator.make_communicator"



def _get_device_communicator_cls(cls) -> str:
    return COMMUNICATOR


def _root(coordinator, comm, src: int) -> int:
    """The communicator's rank of the coordinator's rank ``src``: the coordinator numbers its ranks
    in vLLM's order, the communicator in its process group's (sorted) order, and they differ for
    groups such as DCP with PCP > 1."""
    return list(comm.ranks).index(coordinator.ranks[src])


def _wrap_broadcast(original):
    from ascend_patch.communicator import AscendCommunicator

    @functools.wraps(original)
    def broadcast(self, input_, src=0):
        comm = self.device_communicator
        if not isinstance(comm, AscendCommunicator):
            return original(self, input_, src)
        assert src < self.world_size, f"Invalid src rank ({src})"
        if self.world_size == 1:
            return input_
        comm.broadcast(input_, _root(self, comm, src))
        return input_

    broadcast.__ascend_patch__ = PATCH_ID
    return broadcast


def _wrap_broadcast_tensor_dict(original):
    import torch

    from ascend_patch.communicator import AscendCommunicator, TensorMeta, split_tensor_dict

    def payload(self, comm, tensor, src):
        if tensor.numel() == 0:
            return
        if tensor.is_cpu:
            comm.broadcast(tensor, _root(self, comm, src))
        else:  # not ours to move: as vLLM does for device tensors
            torch.distributed.broadcast(tensor, src=self.ranks[src], group=self.device_group)

    @functools.wraps(original)
    def broadcast_tensor_dict(self, tensor_dict=None, src=0, group=None, metadata_group=None):
        comm = self.device_communicator
        if (
            not isinstance(comm, AscendCommunicator)
            or not torch.distributed.is_initialized()
            or self.world_size == 1
        ):
            return original(self, tensor_dict, src, group, metadata_group)
        assert src < self.world_size, f"Invalid src rank ({src})"
        if self.rank_in_group == src:
            assert isinstance(tensor_dict, dict), f"Expecting a dictionary, got {type(tensor_dict)}"
            metadata, tensors = split_tensor_dict(tensor_dict)
            self.broadcast_object(metadata, src=src)
            for tensor in tensors:
                payload(self, comm, tensor, src)
            return tensor_dict
        metadata = self.broadcast_object(None, src=src)
        out = {}
        for key, value in metadata:
            if isinstance(value, TensorMeta):
                tensor = torch.empty(value.size, dtype=value.dtype, device=value.device)
                payload(self, comm, tensor, src)
                out[key] = tensor
            else:
                out[key] = value
        return out

    broadcast_tensor_dict.__ascend_patch__ = PATCH_ID
    return broadcast_tensor_dict


def apply() -> None:
    """Installs the communicator and the broadcast wrappers (a no-op when already installed)."""
    from vllm.distributed.parallel_state import GroupCoordinator
    from vllm.platforms.cpu import CpuPlatform

    if getattr(GroupCoordinator.broadcast, "__ascend_patch__", None) == PATCH_ID:
        return
    # Build everything first, then rebind, so a failure leaves vLLM untouched.
    broadcast = _wrap_broadcast(GroupCoordinator.broadcast)
    broadcast_tensor_dict = _wrap_broadcast_tensor_dict(GroupCoordinator.broadcast_tensor_dict)
    CpuPlatform.get_device_communicator_cls = classmethod(_get_device_communicator_cls)
    GroupCoordinator.broadcast = broadcast
    GroupCoordinator.broadcast_tensor_dict = broadcast_tensor_dict
