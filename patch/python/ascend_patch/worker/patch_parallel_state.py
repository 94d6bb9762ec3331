"""worker/patch_parallel_state: vLLM's model-parallel setup checked against ascend-patch's layout.

Why: ascend-patch publishes vLLM's rank layout (ascend_patch_layout: which global ranks form each
tp, dcp, pcp, pp, dp and ep group) for native callers that build the same groups; it is a copy of
vLLM's group construction, and must fail loudly when vLLM's changes.

How: ``initialize_model_parallel`` is wrapped (in ``vllm.distributed.parallel_state`` and its
re-export ``vllm.distributed``) to compare every group vLLM built (tp, dcp, pcp, pp, dp, ep, eplb
when present) with ``ascend_patch_layout``; a mismatch raises before any collective runs. Teardown
needs nothing: vLLM 0.33's ``GroupCoordinator.destroy()`` calls the communicator's ``destroy()``.

Upstream: none needed (the check guards our own copy of the layout).

Future: keep while the layout is duplicated here; drop with ascend_patch_layout if native callers
come to take their groups from vLLM itself.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging

PATCH_ID = "worker/patch_parallel_state"
PS = "vllm.distributed.parallel_state"

logger = logging.getLogger("ascend_patch")

# (global of parallel_state, ascend_patch_layout kind), in vLLM's creation order.
GROUPS = [("_TP", "tp"), ("_DCP", "dcp"), ("_PCP", "pcp"), ("_PP", "pp"), ("_DP", "dp"), ("_EP", "ep"), ("_EPLB", "eplb")]

#: The groups the last initialize_model_parallel call was checked on (kind -> ranks).
last_checked: dict[str, list[list[int]]] = {}


def check_layout(tp: int, pp: int, pcp: int, dcp: int | None) -> dict[str, list[list[int]]]:
    """Compares the groups vLLM built with ascend-patch's layout; RuntimeError naming the first group
    that differs. Returns the groups checked (kind -> ranks)."""
    import torch.distributed as dist
    from vllm.config import get_current_vllm_config_or_none
    from vllm.distributed import parallel_state as ps

    from ascend_patch import _lib

    world = dist.get_world_size()
    config = get_current_vllm_config_or_none()
    dp = config.parallel_config.data_parallel_size if config is not None else 1
    elastic = bool(getattr(config.parallel_config, "enable_elastic_ep", False)) if config is not None else False
    if elastic:
        # Elastic EP builds tp/dcp/pcp/pp from one engine's own ranks (torch's world is not widened
        # by dp there): check those as a world of tp·pp·pcp without dp.
        world, dp = tp * pp * pcp, 1
    dcp = dcp or 1
    checked = {}
    for var, kind in GROUPS:
        group = getattr(ps, var, None)
        if group is None:
            continue
        if elastic and kind in ("dp", "ep", "eplb"):
            continue  # elastic EP builds these as stateless groups with their own layout
        built = [[int(r) for r in ranks] for ranks in group.group_ranks]
        try:
            ours = _lib.layout(world, tp, pp, dp, pcp, dcp, kind)
        except _lib.AscendPatchError as e:
            raise RuntimeError(
                f"ascend_patch: vLLM built {kind} groups {built} for world={world} tp={tp} pp={pp} dp={dp} "
                f"pcp={pcp} dcp={dcp}, which ascend-patch's layout rejects: {e.message}"
            ) from e
        if built != ours:
            raise RuntimeError(
                f"ascend_patch: vLLM's {kind} groups {built} differ from ascend-patch's layout {ours} "
                f"(world={world} tp={tp} pp={pp} dp={dp} pcp={pcp} dcp={dcp}): native callers of "
                "ascend_patch_layout would build other groups than vLLM's. Update patch/src/layout.rs for "
                "this vLLM, or set ASCEND_PATCH_DISABLE=worker/patch_parallel_state to run without the check"
            )
        checked[kind] = built
    return checked


def _wrap_initialize(original):
    signature = inspect.signature(original)

    @functools.wraps(original)
    def initialize_model_parallel(*args, **kwargs):
        result = original(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        checked = check_layout(
            a["tensor_model_parallel_size"],
            a["pipeline_model_parallel_size"],
            a["prefill_context_model_parallel_size"],
            a["decode_context_model_parallel_size"],
        )
        last_checked.clear()
        last_checked.update(checked)
        return result

    initialize_model_parallel.__ascend_patch__ = PATCH_ID
    return initialize_model_parallel


def _bindings(target: dict) -> list[tuple[object, str]]:
    """(module, attribute) of the target and of each alias whose module imports."""
    out = []
    for dotted in [target["name"], *target["aliases"]]:
        module_name, attr = dotted.rsplit(".", 1)
        try:
            module = importlib.import_module(module_name)
        except Exception as e:  # e.g. a module needing an optional dependency
            # Already noted in the patch's "applied" line (drift detection saw it too).
            logger.debug("%s: %s not patched: %s cannot be imported (%s)", PATCH_ID, dotted, module_name, e)
            continue
        out.append((module, attr))
    return out


def apply() -> None:
    """Wraps initialize_model_parallel under every binding (a no-op when already wrapped)."""
    from ascend_patch._core import registry_entry

    ps = importlib.import_module(PS)
    if getattr(ps.initialize_model_parallel, "__ascend_patch__", None) == PATCH_ID:
        return
    makers = {f"{PS}.initialize_model_parallel": _wrap_initialize}
    plan = []  # (module, attr, original, wrapper): built first, rebound after
    for target in registry_entry(PATCH_ID)["targets"]:
        make = makers[target["name"]]
        original = getattr(ps, target["name"].rsplit(".", 1)[1])
        wrapper = make(original)
        for module, attr in _bindings(target):
            current = getattr(module, attr, None)
            if current is not original:
                raise RuntimeError(f"{module.__name__}.{attr} is not {target['name']} (rebound by someone else?)")
            plan.append((module, attr, wrapper))
    for module, attr, wrapper in plan:
        setattr(module, attr, wrapper)
