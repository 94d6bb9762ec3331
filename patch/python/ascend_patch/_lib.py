"""ctypes binding of the ascend-patch C ABI (``patch/include/ascend_patch.h``).

The library is looked for, in order:

1. ``$ASCEND_PATCH_LIB`` when set (and only there);
2. ``libascend_patch.so`` beside this package;
3. ``$CARGO_TARGET_DIR/{release,debug}`` when set;
4. the checkout this package sits in: walking up from the package to the first ``Cargo.toml``
   declaring a ``[workspace]``, then its ``target/release`` and ``target/debug``.

Every entry point has its argtypes and restype declared; :func:`check` turns a non-zero result code
into :class:`AscendPatchError` carrying the library's message for the calling thread.
"""

from __future__ import annotations

import ctypes
import json
import os
import threading
from ctypes import POINTER, c_char_p, c_double, c_int32, c_size_t, c_uint8, c_uint32, c_uint64, c_void_p
from pathlib import Path

LIB_NAME = "libascend_patch.so"
ROOT_INFO_BYTES = 4108

# HCCL result codes (the ones the C ABI documents).
HCCL_RESULTS = {
    0: "HCCL_SUCCESS",
    1: "HCCL_E_PARA",
    2: "HCCL_E_PTR",
    3: "HCCL_E_MEMORY",
    4: "HCCL_E_INTERNAL",
    5: "HCCL_E_NOT_SUPPORT",
    9: "HCCL_E_TIMEOUT",
    15: "HCCL_E_RUNTIME",
    21: "HCCL_E_REMOTE",
}


class AscendPatchError(RuntimeError):
    """A failed C ABI call: ``code`` is the HCCL result code, ``message`` the library's reason."""

    def __init__(self, code: int, message: str):
        self.code = code
        self.message = message
        name = HCCL_RESULTS.get(code, "HCCL error")
        super().__init__(f"{message} ({name} {code})")


class LibraryNotFound(ImportError):
    """libascend_patch could not be loaded; ``tried`` lists (path, reason) for every place looked at."""

    def __init__(self, tried: list[tuple[str, str]]):
        self.tried = tried
        lines = "\n".join(f"  {p}: {why}" for p, why in tried)
        super().__init__(
            f"cannot load {LIB_NAME}; tried:\n{lines}\n"
            "Build it with `cargo build --release -p ascend-patch` and set ASCEND_PATCH_LIB to the "
            f"resulting {LIB_NAME} (or copy it beside the ascend_patch package)."
        )


def _workspace_root(start: Path) -> Path | None:
    """The first directory at or above ``start`` whose Cargo.toml declares a [workspace]."""
    for d in [start, *start.parents]:
        manifest = d / "Cargo.toml"
        try:
            if manifest.is_file() and "[workspace]" in manifest.read_text(errors="replace"):
                return d
        except OSError:
            continue
    return None


def candidates() -> list[Path]:
    """Where the library is looked for, in order (see the module docstring)."""
    explicit = os.environ.get("ASCEND_PATCH_LIB")
    if explicit:
        return [Path(explicit)]
    here = Path(__file__).resolve().parent
    out = [here / LIB_NAME]
    target_dir = os.environ.get("CARGO_TARGET_DIR")
    if target_dir:
        out += [Path(target_dir) / "release" / LIB_NAME, Path(target_dir) / "debug" / LIB_NAME]
    root = _workspace_root(here)
    if root is not None:
        out += [root / "target" / "release" / LIB_NAME, root / "target" / "debug" / LIB_NAME]
    return out


# (name, restype, argtypes) of every C ABI function.
_FUNCTIONS = [
    ("ascend_patch_last_error", c_size_t, [c_char_p, c_size_t]),
    ("ascend_patch_root_info", c_int32, [c_int32, POINTER(c_uint8), c_size_t]),
    ("ascend_patch_comm_init", c_int32, [c_void_p, c_size_t, c_uint32, c_uint32, c_int32, POINTER(c_void_p)]),
    (
        "ascend_patch_comm_init_timeout",
        c_int32,
        [c_void_p, c_size_t, c_uint32, c_uint32, c_int32, c_double, POINTER(c_void_p)],
    ),
    ("ascend_patch_comm_destroy", c_int32, [c_void_p]),
    ("ascend_patch_comm_abort", c_int32, [c_void_p]),
    ("ascend_patch_all_reduce", c_int32, [c_void_p, c_void_p, c_void_p, c_uint64, c_int32, c_int32, c_void_p]),
    ("ascend_patch_all_gather", c_int32, [c_void_p, c_void_p, c_void_p, c_uint64, c_int32, c_void_p]),
    ("ascend_patch_reduce_scatter", c_int32, [c_void_p, c_void_p, c_void_p, c_uint64, c_int32, c_int32, c_void_p]),
    ("ascend_patch_gather", c_int32, [c_void_p, c_void_p, c_void_p, c_uint64, c_int32, c_int32, c_void_p]),
    ("ascend_patch_broadcast", c_int32, [c_void_p, c_void_p, c_uint64, c_int32, c_int32, c_void_p]),
    ("ascend_patch_send", c_int32, [c_void_p, c_void_p, c_uint64, c_int32, c_int32, c_void_p]),
    ("ascend_patch_recv", c_int32, [c_void_p, c_void_p, c_uint64, c_int32, c_int32, c_void_p]),
    ("ascend_patch_barrier", c_int32, [c_void_p, c_void_p]),
    (
        "ascend_patch_layout",
        c_int32,
        [
            c_uint32, c_uint32, c_uint32, c_uint32, c_uint32, c_uint32,
            c_char_p, POINTER(c_int32), c_size_t, POINTER(c_size_t), POINTER(c_size_t),
        ],
    ),
    ("ascend_patch_registry_json", c_int32, [c_char_p, c_size_t, POINTER(c_size_t)]),
    ("ascend_patch_version_supported", c_int32, [c_char_p, c_char_p, POINTER(c_int32)]),
]

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_path: Path | None = None


def load() -> ctypes.CDLL:
    """The loaded library (loaded once per process); raises :class:`LibraryNotFound`."""
    global _lib, _path
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is not None:
            return _lib
        tried: list[tuple[str, str]] = []
        for path in candidates():
            if not path.is_file():
                tried.append((str(path), "no such file"))
                continue
            try:
                lib = ctypes.CDLL(str(path))
            except OSError as e:
                tried.append((str(path), f"cannot load: {e}"))
                continue
            missing = [name for name, _, _ in _FUNCTIONS if not hasattr(lib, name)]
            if missing:
                tried.append((str(path), f"not the ascend-patch library (missing {', '.join(missing)})"))
                continue
            for name, restype, argtypes in _FUNCTIONS:
                fn = getattr(lib, name)
                fn.restype = restype
                fn.argtypes = argtypes
            _lib, _path = lib, path
            return lib
        raise LibraryNotFound(tried)


def path() -> Path:
    """Where the loaded library came from."""
    load()
    assert _path is not None
    return _path


def last_error() -> str:
    """The calling thread's last failure message from the library."""
    lib = load()
    need = lib.ascend_patch_last_error(None, 0)
    buf = ctypes.create_string_buffer(max(need, 1))
    lib.ascend_patch_last_error(buf, len(buf))
    return buf.value.decode("utf-8", errors="replace")


def check(code: int) -> None:
    """Raises :class:`AscendPatchError` for a non-zero result code."""
    if code != 0:
        raise AscendPatchError(code, last_error() or "no message")


def registry() -> list[dict]:
    """The patch registry (a list of dicts, see ``patch/src/registry.rs``)."""
    lib = load()
    needed = c_size_t(0)
    lib.ascend_patch_registry_json(None, 0, ctypes.byref(needed))
    buf = ctypes.create_string_buffer(needed.value)
    check(lib.ascend_patch_registry_json(buf, len(buf), ctypes.byref(needed)))
    return json.loads(buf.value.decode("utf-8"))


def version_supported(version: str, specs: list[str] | str) -> bool:
    """Whether ``version`` satisfies any of ``specs``; :class:`AscendPatchError` (HCCL_E_PARA) when
    the version or a specifier does not parse."""
    if not isinstance(specs, str):
        specs = ";".join(specs)
    out = c_int32(0)
    check(load().ascend_patch_version_supported(version.encode(), specs.encode(), ctypes.byref(out)))
    return out.value == 1


def layout(world: int, tp: int, pp: int, dp: int, pcp: int, dcp: int, kind: str) -> list[list[int]]:
    """vLLM's groups of ``kind`` for these sizes, as ascend-patch computes them."""
    lib = load()
    groups, size = c_size_t(0), c_size_t(0)
    cap = max(world, 1)
    out = (c_int32 * cap)()
    check(lib.ascend_patch_layout(world, tp, pp, dp, pcp, dcp, kind.encode(), out, cap,
                                  ctypes.byref(groups), ctypes.byref(size)))
    flat = list(out)[: groups.value * size.value]
    return [flat[i * size.value:(i + 1) * size.value] for i in range(groups.value)]


def root_info(device: int = -1) -> bytes:
    """A new root info (made by one rank, handed to the others)."""
    buf = (c_uint8 * ROOT_INFO_BYTES)()
    check(load().ascend_patch_root_info(device, buf, ROOT_INFO_BYTES))
    return bytes(buf)
