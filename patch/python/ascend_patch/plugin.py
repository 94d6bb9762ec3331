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

# The prefixes of the other variables ascend_patch reads (ASCEND_PATCH_DISABLE, ASCEND_PATCH_LIB,
# ASCEND_PATCH_LOG_LEVEL, HCCL_*_TIMEOUT): Ray workers receive only VLLM_* and a few other prefixes
# unless told, so a switch set on the driver would not reach them.
RAY_PREFIXES = ("ASCEND_PATCH_", "HCCL_")


def _declare_environment() -> None:
    """VLLM_VERSION is declared to vLLM (its strict environment check refuses unknown VLLM_* names),
    and the prefixes above are added to those vLLM copies to Ray workers. (Not declared as vLLM
    variables: every declared variable is part of vLLM's torch.compile cache key.)"""
    try:
        from vllm import envs
    except Exception:  # no vLLM here: nothing to declare to
        return
    envs.environment_variables.setdefault("VLLM_VERSION", lambda: os.getenv("VLLM_VERSION"))
    var = "VLLM_RAY_EXTRA_ENV_VAR_PREFIXES_TO_COPY"
    have = [p.strip() for p in os.environ.get(var, "").split(",") if p.strip()]
    missing = [p for p in RAY_PREFIXES if p not in have]
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
