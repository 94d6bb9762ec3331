"""Deciding and applying patches: the registry (from the library), the version gate, the per-patch
switch ``ASCEND_PATCH_DISABLE``, drift detection, and one log line per patch.

Decisions are made once per process: a patch that was applied (or skipped) stays so, and calling
:func:`apply` again returns the same report without patching or logging again.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import sys
import threading
import types
from typing import Any

from . import _lib

logger = logging.getLogger("ascend_patch")

PROCESSES = ("platform", "worker")

_lock = threading.RLock()
_decided: dict[str, dict] = {}  # patch id -> its report entry (applied / skipped / failed)
_gate_logged = False
_disable_warned = False


def _ensure_log_handler() -> None:
    """Makes the INFO lines visible when nobody configured logging (vLLM configures only "vllm"):
    when the logger has no level, sets ``ASCEND_PATCH_LOG_LEVEL`` (INFO, also when that is not a
    level name, with a warning); adds a stderr handler when neither it nor the root logger has one."""
    bad = None
    if logger.level == logging.NOTSET:
        name = os.environ.get("ASCEND_PATCH_LOG_LEVEL", "").strip() or "INFO"
        try:
            logger.setLevel(name.upper())
        except ValueError:
            logger.setLevel(logging.INFO)
            bad = name
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s [ascend_patch] %(message)s"))
        logger.addHandler(handler)
    if bad is not None:
        logger.warning("ASCEND_PATCH_LOG_LEVEL=%r is not a logging level; using INFO", bad)


# ---------------------------------------------------------------------------------------------
# Registry


def registry() -> list[dict]:
    """Every patch (see ``patch/src/registry.rs``): id, process, targets (name, aliases, signature),
    versions, why, how, upstream, future."""
    return _lib.registry()


def registry_entry(patch_id: str) -> dict:
    """The registry entry of one patch."""
    for p in registry():
        if p["id"] == patch_id:
            return p
    raise KeyError(f"no patch {patch_id!r} in the registry")


# ---------------------------------------------------------------------------------------------
# Version gate


def detect_version() -> tuple[str | None, str]:
    """(version, where it came from): ``VLLM_VERSION`` overrides; else ``vllm.__version__`` of the
    vLLM already imported (what runs: a source tree on ``PYTHONPATH`` shadows the installed wheel,
    whose metadata would name the wheel's version); else the installed vLLM's version
    (``importlib.metadata``, falling back to importing vLLM); None when vLLM is not found."""
    override = os.environ.get("VLLM_VERSION")
    if override is not None and override.strip():
        return override.strip(), "VLLM_VERSION"
    running = getattr(sys.modules.get("vllm"), "__version__", None)
    if running:
        return str(running), "vllm.__version__"
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("vllm"), "installed vllm"
    except PackageNotFoundError:
        pass
    try:
        import vllm  # noqa: PLC0415

        return str(vllm.__version__), "vllm.__version__"
    except Exception:
        return None, "vllm is not installed"


def version_verdict(patches: list[dict]) -> tuple[str | None, str | None]:
    """(version, None) when some patch supports the detected version, else (version, reason) with
    the reason no patch applies (vLLM missing, version unparsable or supported by no patch)."""
    version, source = detect_version()
    if version is None:
        return None, "vLLM is not installed (and VLLM_VERSION is not set)"
    specs = sorted({s for p in patches for s in p["versions"]})
    try:
        ok = _lib.version_supported(version, specs)
    except _lib.AscendPatchError as e:
        return version, f"vLLM version {version!r} (from {source}) cannot be parsed: {e.message}"
    if not ok:
        return version, f"vLLM {version} (from {source}) is not supported (patches support {', '.join(specs)})"
    return version, None


# ---------------------------------------------------------------------------------------------
# ASCEND_PATCH_DISABLE


def disabled_ids(known: list[str] | None = None) -> tuple[set[str], list[str]]:
    """(ids disabled by ``ASCEND_PATCH_DISABLE=id,id``, the listed ids that are not patches)."""
    raw = os.environ.get("ASCEND_PATCH_DISABLE", "")
    ids = {s.strip() for s in raw.split(",") if s.strip()}
    if known is None:
        known = [p["id"] for p in registry()]
    return ids, sorted(ids - set(known))


# ---------------------------------------------------------------------------------------------
# Drift detection


class _Unimportable(Exception):
    """A module on the way to a name cannot be imported (a dependency is missing)."""


def resolve(dotted: str) -> Any:
    """The object named ``dotted`` (``pkg.module.Class.attr``), importing modules as needed.
    Raises AttributeError when a part does not exist, :class:`_Unimportable` when a module exists
    but fails to import."""
    parts = dotted.split(".")
    try:
        obj: Any = importlib.import_module(parts[0])
    except ImportError as e:
        raise _Unimportable(f"{parts[0]}: {e}") from e
    path = parts[0]
    for part in parts[1:]:
        path += "." + part
        if isinstance(obj, types.ModuleType) and hasattr(obj, "__path__"):
            try:
                obj = importlib.import_module(path)
                continue
            except ModuleNotFoundError as e:
                if e.name != path:
                    raise _Unimportable(f"{path}: {e}") from e
            except Exception as e:  # a submodule that exists but fails while importing
                raise _Unimportable(f"{path}: {type(e).__name__}: {e}") from e
        if not hasattr(obj, part):
            raise AttributeError(f"{path} does not exist")
        obj = getattr(obj, part)
    return obj


def _split_params(sig: str) -> list[str]:
    """The parameters of a signature string ``(a, b=1, *, c=(1, 2))``, split at top-level commas."""
    body = sig.strip()
    if body.startswith("(") and ")" in body:
        body = body[1 : body.rindex(")")]
    out, depth, cur, quote = [], 0, "", ""
    for ch in body:
        if quote:
            cur += ch
            if ch == quote:
                quote = ""
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        cur += ch
    if cur.strip():
        out.append(cur.strip())
    return [" ".join(p.split()) for p in out]


def signature_of(obj: Any) -> str:
    """``inspect.signature`` of obj without annotations, as text."""
    sig = inspect.signature(obj)
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    return str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))


def signature_diff(expected: str, found: str) -> str | None:
    """None when the two signatures agree, else what differs (parameters added, removed, defaults
    or order changed)."""
    exp, got = _split_params(expected), _split_params(found)
    if exp == got:
        return None
    name = lambda p: p.split("=", 1)[0].strip()  # noqa: E731
    en, gn = [name(p) for p in exp], [name(p) for p in got]
    what = []
    removed = [n for n in en if n not in gn]
    added = [n for n in gn if n not in en]
    if removed:
        what.append("parameter(s) removed: " + ", ".join(removed))
    if added:
        what.append("parameter(s) added: " + ", ".join(added))
    for p in exp:
        for q in got:
            if name(p) == name(q) and p != q:
                what.append(f"{name(p)}: {p!r} is now {q!r}")
    common_e = [n for n in en if n in gn]
    common_g = [n for n in gn if n in en]
    if common_e != common_g:
        what.append("parameter order changed")
    return "; ".join(what) or "differs"


def _same_object(a: Any, b: Any) -> bool:
    return getattr(a, "__func__", a) is getattr(b, "__func__", b)


def check_target(target: dict) -> tuple[list[str], list[str]]:
    """(drift problems, notes) of one registry target: the name must resolve and have the expected
    signature; each alias must resolve to the same object (an alias whose module cannot be
    imported is only a note: there is nothing to rebind there)."""
    problems: list[str] = []
    notes: list[str] = []
    name = target["name"]
    try:
        obj = resolve(name)
    except AttributeError as e:
        return [f"{name} is missing ({e})"], notes
    except _Unimportable as e:
        return [f"{name} cannot be imported ({e})"], notes
    wrapper = getattr(obj, "__wrapped__", None) is not None and getattr(obj, "__ascend_patch__", None) is None
    if wrapper:
        # Something else (another plugin) already rebound it: stacking on it would hide that.
        # functools.wraps copies the original's names: the wrapper's own code says where it is from.
        code = getattr(getattr(obj, "__func__", obj), "__code__", None)
        where = code.co_filename if code is not None else type(obj).__name__
        problems.append(f"{name} is already wrapped (by {where}), not vLLM's own; ascend-patch does not stack on it")
    try:
        found = signature_of(obj)
    except (TypeError, ValueError) as e:
        problems.append(f"{name} has no signature ({e})")
    else:
        diff = signature_diff(target["signature"], found)
        if diff is not None:
            problems.append(f"{name} signature changed: expected {target['signature']}, found {found} ({diff})")
    for alias in target.get("aliases", []):
        try:
            other = resolve(alias)
        except AttributeError as e:
            problems.append(f"alias {alias} of {name} is missing ({e})")
            continue
        except _Unimportable as e:
            notes.append(f"alias {alias} not importable ({e})")
            continue
        if not _same_object(other, obj):
            problems.append(f"alias {alias} is not the same object as {name}")
    return problems, notes


def drift(patch: dict) -> tuple[list[str], list[str]]:
    """(problems, notes) over every target of a patch."""
    problems, notes = [], []
    for t in patch["targets"]:
        p, n = check_target(t)
        problems += p
        notes += n
    return problems, notes


# ---------------------------------------------------------------------------------------------
# Applying


def _module_name(patch_id: str) -> str:
    return "ascend_patch." + patch_id.replace("/", ".")


def _entry(patch: dict, status: str, reason: str) -> dict:
    return {
        "id": patch["id"],
        "process": patch["process"],
        "status": status,
        "reason": reason,
        "versions": list(patch["versions"]),
        "targets": [t["name"] for t in patch["targets"]],
    }


def apply(process: str) -> list[dict]:
    """Applies the patches of ``process`` ("platform" or "worker") that are enabled, support the
    running vLLM and whose targets did not drift. Returns one report entry per patch of the process:
    ``{"id", "process", "status": "applied"|"skipped"|"failed", "reason", ...}``."""
    if process not in PROCESSES:
        raise ValueError(f"process must be one of {PROCESSES}, not {process!r}")
    global _gate_logged, _disable_warned
    _ensure_log_handler()
    with _lock:
        try:
            all_patches = registry()
        except ImportError as e:  # the library is missing: say so once, patch nothing
            if not _gate_logged:
                _gate_logged = True
                logger.error("no patch applied: %s", e)
            return []
        patches = [p for p in all_patches if p["process"] == process]
        pending = [p for p in patches if p["id"] not in _decided]
        if pending:
            # Before the version gate: a misspelt id is worth knowing whatever the vLLM version.
            disabled, unknown = disabled_ids([p["id"] for p in all_patches])
            if unknown and not _disable_warned:
                _disable_warned = True
                logger.warning(
                    "ASCEND_PATCH_DISABLE names unknown patch id(s): %s (known: %s)",
                    ", ".join(unknown),
                    ", ".join(p["id"] for p in all_patches),
                )
            version, why_not = version_verdict(all_patches)
            if why_not is not None:
                # One line for the whole process, whatever the number of patches.
                if not _gate_logged:
                    _gate_logged = True
                    logger.warning("no patch applied: %s", why_not)
                for p in pending:
                    _decided[p["id"]] = _entry(p, "skipped", why_not)
            else:
                for p in pending:
                    _decided[p["id"]] = _apply_one(p, version, disabled)
        return [dict(_decided[p["id"]]) for p in patches]


def _blockers(patch: dict, version: str | None, why_not: str | None, disabled: set[str]) -> list[str]:
    """Why ``patch`` cannot apply, its targets aside: the process-wide version verdict
    (``why_not``), its own supported versions, ``ASCEND_PATCH_DISABLE``."""
    reasons = [why_not] if why_not is not None else []
    if why_not is None:
        try:
            if not _lib.version_supported(version, patch["versions"]):
                reasons.append(f"vLLM {version} is not among its versions ({', '.join(patch['versions'])})")
        except _lib.AscendPatchError as e:
            reasons.append(e.message)
    if patch["id"] in disabled:
        reasons.append("disabled by ASCEND_PATCH_DISABLE")
    return reasons


def _apply_one(patch: dict, version: str, disabled: set[str]) -> dict:
    pid = patch["id"]
    blockers = _blockers(patch, version, None, disabled)
    if blockers:
        reason = "; ".join(blockers)
        logger.info("skipped %s: %s", pid, reason)
        return _entry(patch, "skipped", reason)
    problems, notes = drift(patch)
    if problems:
        reason = "drift: " + "; ".join(problems)
        logger.warning("skipped %s: %s", pid, reason)
        return _entry(patch, "skipped", reason)
    try:
        module = importlib.import_module(_module_name(pid))
        module.apply()
    except Exception as e:
        reason = f"apply failed: {type(e).__name__}: {e}"
        logger.error("failed %s: %s", pid, reason)
        return _entry(patch, "failed", reason)
    extra = f" ({'; '.join(notes)})" if notes else ""
    logger.info("applied %s for vLLM %s%s", pid, version, extra)
    return _entry(patch, "applied", f"vLLM {version}{extra}")


def report() -> list[dict]:
    """What was decided so far in this process (in registry order)."""
    with _lock:
        return [dict(v) for v in _decided.values()]


# ---------------------------------------------------------------------------------------------
# Listing


def describe() -> dict:
    """Every patch and whether it applies to the installed vLLM (and why not), without applying
    anything: ``{"vllm": version, "library": path, "patches": [...]}``."""
    patches = registry()
    version, why_not = version_verdict(patches)
    disabled, unknown = disabled_ids([p["id"] for p in patches])
    out = []
    for p in patches:
        reasons = _blockers(p, version, why_not, disabled)
        targets = []
        check_drift = why_not is None
        for t in p["targets"]:
            if check_drift:
                problems, notes = check_target(t)
            else:
                problems, notes = [], ["not checked (vLLM version not supported)"]
            reasons += [f"drift: {x}" for x in problems]
            targets.append(
                {
                    "name": t["name"],
                    "aliases": list(t["aliases"]),
                    "signature": t["signature"],
                    "status": "drift" if problems else ("ok" if check_drift else "unchecked"),
                    "problems": problems,
                    "notes": notes,
                }
            )
        applied = _decided.get(p["id"], {}).get("status") == "applied"
        out.append(
            {
                "id": p["id"],
                "process": p["process"],
                "versions": list(p["versions"]),
                "applies": not reasons,
                "applied_here": applied,
                "reasons": reasons,
                "targets": targets,
                "why": p["why"],
                "future": p["future"],
            }
        )
    return {
        "vllm": version,
        "vllm_source": detect_version()[1],
        "library": str(_lib.path()),
        "unknown_disabled_ids": unknown,
        "patches": out,
    }
