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


def register() -> None:
    """Applies every enabled, supported, drift-free patch in this process."""
    try:
        from . import apply_all

        apply_all()
    except Exception:  # never take vLLM down: it keeps working without the patches
        logging.getLogger("ascend_patch").exception("no patch applied: the plugin failed")
