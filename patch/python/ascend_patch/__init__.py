"""ascend_patch: runs vLLM's distributed layer on ascend-rs collectives.

A vLLM general plugin (entry point ``vllm.general_plugins: ascend_patch``) applies the patches
registered in the ascend-patch library (``patch/src/registry.rs``, listed in ``patch/PATCHES.md``) in
every vLLM process. Use from Python::

    import ascend_patch
    ascend_patch.apply("platform")   # or "worker"; returns a report (one dict per patch)
    ascend_patch.apply_all()

``python -m ascend_patch list`` shows every patch and whether it applies to the installed vLLM.

Environment: ``ASCEND_PATCH_LIB`` (the library), ``ASCEND_PATCH_DISABLE=id,id`` (patches to skip),
``VLLM_VERSION`` (overrides the detected vLLM version).
"""

from __future__ import annotations

from ._core import apply, describe, registry, report
from ._lib import AscendPatchError, LibraryNotFound

__version__ = "0.1.0"

__all__ = [
    "AscendPatchError",
    "LibraryNotFound",
    "apply",
    "apply_all",
    "describe",
    "registry",
    "report",
]


def apply_all() -> list[dict]:
    """Platform patches, then worker patches (what the vLLM plugin does in every process)."""
    return apply("platform") + apply("worker")
