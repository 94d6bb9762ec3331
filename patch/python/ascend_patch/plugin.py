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

# The variables ascend_patch reads. Declared to vLLM: its strict environment check refuses unknown
# VLLM_* names (VLLM_VERSION among them), and Ray workers receive only declared variables (and a few
# prefixes), so without this a switch set on the driver would not reach them.
ENVIRONMENT = (
    "VLLM_VERSION",
    "ASCEND_PATCH_DISABLE",
    "ASCEND_PATCH_LIB",
    "ASCEND_PATCH_LOG_LEVEL",
    "HCCL_EXEC_TIMEOUT",
    "HCCL_CONNECT_TIMEOUT",
)


def _declare_environment() -> None:
    try:
        from vllm import envs
    except Exception:  # no vLLM here: nothing to declare to
        return
    for name in ENVIRONMENT:
        envs.environment_variables.setdefault(name, lambda name=name: os.getenv(name))


def register() -> None:
    """Declares ascend_patch's environment variables to vLLM, then applies every enabled,
    supported, drift-free patch in this process."""
    try:
        _declare_environment()
        from . import apply_all

        apply_all()
    except Exception:  # never take vLLM down: it keeps working without the patches
        logging.getLogger("ascend_patch").exception("no patch applied: the plugin failed")
