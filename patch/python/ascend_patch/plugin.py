"""The vLLM general plugin (entry point group ``vllm.general_plugins``, name ``ascend_patch``).

vLLM calls :func:`register` in every process it starts — the API/main process, the EngineCore
process and each worker — through ``vllm.plugins.load_general_plugins()``. Platform patches are
applied first, then worker patches; worker patches only take effect when the worker builds its
distributed groups, so applying them early (or in a process that never builds groups) is harmless.

Cheap and safe to call any number of times: decisions are made once per process, and a failure is
logged, never raised into vLLM (which then runs unpatched).
"""

from __future__ import annotations

import logging
import os

# The other variables ascend_patch reads: its own (ASCEND_PATCH_DISABLE, ASCEND_PATCH_LIB,
# ASCEND_PATCH_LOG_LEVEL) by prefix, and the two HCCL timeouts of the host transport by name. Ray
# workers receive only VLLM_* and a few other prefixes unless told, so a switch set on the driver
# would not reach them. Not the HCCL_ prefix: HCCL_IF_IP, HCCL_SOCKET_IFNAME, ... are node-specific,
# and copying the driver's would override each worker node's own.
RAY_PREFIXES = ("ASCEND_PATCH_",)
RAY_VARS = ("HCCL_CONNECT_TIMEOUT", "HCCL_EXEC_TIMEOUT")


def _declare_environment() -> None:
    """VLLM_VERSION is declared to vLLM (its strict environment check refuses unknown VLLM_* names),
    and the prefixes and names above are added to those vLLM copies to Ray workers
    (VLLM_RAY_EXTRA_ENV_VAR_PREFIXES_TO_COPY, VLLM_RAY_EXTRA_ENV_VARS_TO_COPY). (Not declared as
    vLLM variables: every declared variable is part of vLLM's torch.compile cache key.)"""
    try:
        from vllm import envs
    except Exception:  # no vLLM here: nothing to declare to
        return
    envs.environment_variables.setdefault("VLLM_VERSION", lambda: os.getenv("VLLM_VERSION"))
    for var, wanted in (
        ("VLLM_RAY_EXTRA_ENV_VAR_PREFIXES_TO_COPY", RAY_PREFIXES),
        ("VLLM_RAY_EXTRA_ENV_VARS_TO_COPY", RAY_VARS),
    ):
        have = [p.strip() for p in os.environ.get(var, "").split(",") if p.strip()]
        missing = [p for p in wanted if p not in have]
        if missing:
            os.environ[var] = ",".join(have + missing)


def register() -> None:
    """Declares ascend_patch's environment variables to vLLM, then applies every enabled,
    supported, drift-free patch in this process."""
    try:
        _declare_environment()
        from . import apply_all

        apply_all()
    except Exception:  # never take vLLM down: it keeps working without the patches
        logging.getLogger("ascend_patch").exception("no patch applied: the plugin failed")
