#!/usr/bin/env bash
# Prepare the Python environment used by ascend-rs's vLLM integration work:
# real vLLM 0.33.0 (from PyPI) plus pytest, in a venv OUTSIDE the work tree.
#
#   ASCEND_PY_ENV   venv location
#                   (default: ${XDG_CACHE_HOME:-$HOME/.cache}/ascend-rs/py-vllm-0.33.0): a new or
#                   empty directory, or an existing venv of the same Python major.minor with a
#                   working pip (vLLM is installed into it). Only a venv this script created (it
#                   holds the file .ascend-rs-env; anything at the default location counts as the
#                   script's) is ever deleted and rebuilt; for any other directory that does not
#                   fit, the script stops with an error and changes nothing.
#   PYTHON          interpreter used to create the venv (default: python3;
#                   vLLM 0.33.0 requires >=3.11,<3.15)
#   ASCEND_PY_FULL_DEPS=1
#                   install vLLM with its complete dependency set (~9.4 GB:
#                   flashinfer, tilelang, cutlass-dsl, ...) instead of the
#                   minimal set below (~6.6 GB, almost all of it torch + CUDA libs).
#
# Minimal mode installs vllm==0.33.0 with --no-deps, then only the packages that
# `vllm.distributed`, `vllm.config.VllmConfig()` and vLLM's CPU platform need
# to import, each constrained by vLLM's own Requires-Dist specifiers.  torch
# comes from PyPI at vLLM's pin (torch==2.14.0); PyPI has no CPU-only build of
# it for Linux, so the CUDA 13 wheels (nvidia-*, triton) come along.  They are
# inert on a CPU-only machine: torch.distributed with gloo works on CPU.
#
# The venv is marked complete (file .complete, holding the pinned versions)
# only after the install and an import check succeed; an interrupted run is
# redone on the next call (pip skips what is already installed).
# Progress goes to stderr; the last line of stdout is the venv's python path:
#   PY="$(scripts/setup-python.sh | tail -n 1)"
set -euo pipefail

VLLM_VERSION="0.33.0"
# What `import vllm.distributed.parallel_state` + `VllmConfig()` on the CPU
# platform need beyond torch (found by importing until nothing was missing);
# einops is added so that every module binding destroy_model_parallel /
# destroy_distributed_environment (incl. model_loader.weight_cache.daemon,
# v1.executor.multiproc_executor, v1.worker.cpu_worker) imports too.
MIN_DEPS=(
    torch packaging psutil pyzmq urllib3 regex numpy pydantic cbor2
    transformers aiohttp requests oss-harmony openai pillow pybase64
    cachetools msgspec cloudpickle uvloop py-cpuinfo prometheus_client
    xgrammar fastapi partial-json-parser llguidance einops
)
EXTRA_PKGS=(pytest)

# Absolute and without a trailing slash: callers run the printed interpreter from other directories.
DEFAULT_ENV_DIR="$(realpath -m -- "${XDG_CACHE_HOME:-$HOME/.cache}/ascend-rs/py-vllm-${VLLM_VERSION}")"
ENV_DIR="$(realpath -m -- "${ASCEND_PY_ENV:-$DEFAULT_ENV_DIR}")"
PYTHON_BIN="${PYTHON:-python3}"
FULL_DEPS="${ASCEND_PY_FULL_DEPS:-0}"
MARKER="$ENV_DIR/.complete"
OWN_MARK="$ENV_DIR/.ascend-rs-env"  # this script created the venv: it may delete and rebuild it
LOCK="${ENV_DIR}.lock"
VPY="$ENV_DIR/bin/python"

export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_NO_INPUT=1
export PIP_NO_CACHE_DIR=1  # the venv is the cache: a wheel cache beside it would double the disk used

log() { printf '[setup-python] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

start_ts=$(date +%s)

command -v "$PYTHON_BIN" >/dev/null 2>&1 || die "$PYTHON_BIN not found"
"$PYTHON_BIN" - <<'EOF' || die "vLLM 0.33.0 needs Python >=3.11,<3.15 (set PYTHON=...)"
import sys
sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 15) else 1)
EOF
# major.minor only: a patch update of the interpreter keeps the venv (its python links to it).
PY_VER="$("$PYTHON_BIN" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"

if [ "$FULL_DEPS" = "1" ]; then
    MODE="full"
else
    MODE="minimal"
fi
EXPECTED_MARKER="python=${PY_VER}
vllm==${VLLM_VERSION}
mode=${MODE}
deps=${MIN_DEPS[*]} ${EXTRA_PKGS[*]}"

mkdir -p "$(dirname "$ENV_DIR")"

# Serialise concurrent runs (e.g. a developer shell and CI) on the same venv.
if command -v flock >/dev/null 2>&1; then
    # The lock file stays beside the venv: removing it while another run waits on it would let a
    # third run take a new one and install concurrently.
    exec 9>"$LOCK"
    flock 9
fi

# Reuse a completed venv whose marker matches what this script would install.
if [ -x "$VPY" ] && [ -f "$MARKER" ] \
    && [ "$(head -n 4 "$MARKER")" = "$EXPECTED_MARKER" ]; then
    log "reusing complete venv at $ENV_DIR ($(tail -n +5 "$MARKER" | grep -E '^(vllm|torch)==' | tr '\n' ' '))"
    echo "$VPY"
    exit 0
fi

# ---------------------------------------------------------------- venv
make_venv() { "$PYTHON_BIN" -m venv "$ENV_DIR"; }
venv_py_ver() { "$VPY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true; }
# ASCEND_PY_ENV may name a directory of the user's: only what this script created is deleted, i.e.
# a directory holding its mark (written before the venv, so that an interrupted creation counts
# too) or anything at the default location, where only this script writes (venvs made there by
# versions of it without the mark included).
own_env() { [ -f "$OWN_MARK" ] || [ "$ENV_DIR" = "$DEFAULT_ENV_DIR" ]; }
empty_env() {
    local entries
    [ ! -e "$ENV_DIR" ] || { [ -d "$ENV_DIR" ] && entries="$(ls -A -- "$ENV_DIR")" && [ -z "$entries" ]; }
}
# Empties $ENV_DIR (own or empty) and marks it as the script's; the directory itself is kept.
reset_env() {
    if [ -d "$ENV_DIR" ]; then
        find "$ENV_DIR" -mindepth 1 -maxdepth 1 -exec rm -rf -- {} +
    else
        rm -f -- "$ENV_DIR"
        mkdir -p -- "$ENV_DIR"
    fi
    echo "Created by ascend-rs scripts/setup-python.sh, which may delete and rebuild this directory." >"$OWN_MARK"
}
# Why the existing $ENV_DIR cannot be used as it is (MISFIT), and what a user can do (REMEDY).
misfit() {
    local ver elsewhere="set ASCEND_PY_ENV to a new or empty directory"
    ver="$(venv_py_ver)"
    if [ ! -f "$ENV_DIR/pyvenv.cfg" ] && [ ! -x "$VPY" ]; then
        MISFIT="$ENV_DIR exists and is not a Python venv"
        REMEDY="$elsewhere, or to a venv of Python $PY_VER with pip"
    elif [ -z "$ver" ]; then
        MISFIT="$ENV_DIR is a venv whose interpreter ($VPY) does not run"
        REMEDY="$elsewhere, or repair the venv"
    elif [ "$ver" != "$PY_VER" ]; then
        MISFIT="$ENV_DIR is a venv of Python $ver, not $PY_VER (the version of $PYTHON_BIN)"
        REMEDY="$elsewhere (vLLM 0.33.0 needs Python >=3.11,<3.15)"
        case "$ver" in
            3.1[1-4]) REMEDY="$elsewhere, or PYTHON to a Python $ver interpreter" ;;
        esac
    else
        MISFIT="$ENV_DIR is a venv without a working pip ('$VPY -m pip --version' fails)"
        REMEDY="$elsewhere, or install pip into the venv ('$VPY -m ensurepip')"
    fi
}
if [ -x "$VPY" ] && [ "$(venv_py_ver)" = "$PY_VER" ] \
    && "$VPY" -m pip --version >/dev/null 2>&1; then
    log "venv exists but is not marked complete: resuming install in $ENV_DIR"
elif own_env || empty_env; then
    if ! empty_env; then
        misfit
        log "$MISFIT; this script created it: rebuilding it"
    fi
    reset_env
    log "creating venv at $ENV_DIR with $PYTHON_BIN ($PY_VER)"
    if ! make_venv >/dev/null 2>&1; then
        reset_env
        log "'$PYTHON_BIN -m venv' failed; installing Debian's python3-venv"
        command -v apt-get >/dev/null 2>&1 || die "python3 -m venv failed and apt-get is unavailable"
        SUDO=""
        [ "$(id -u)" = "0" ] || SUDO="sudo"
        $SUDO apt-get update -qq >&2
        minor="$("$PYTHON_BIN" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
        # The interpreter's own venv package first (python3-venv serves only the default python3).
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python${minor}-venv" >&2 \
            || $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
        make_venv || die "'$PYTHON_BIN -m venv' still fails after installing python3-venv"
    fi
else
    misfit
    die "$MISFIT; this script did not create it (no $OWN_MARK), so it is left unchanged: $REMEDY"
fi
rm -f "$MARKER"

log "upgrading pip"
"$VPY" -m pip install -q --progress-bar off --upgrade pip >&2

# ---------------------------------------------------------------- packages
if [ "$MODE" = "full" ]; then
    log "installing vllm==${VLLM_VERSION} with all of its dependencies + ${EXTRA_PKGS[*]}"
    "$VPY" -m pip install -q --progress-bar off "vllm==${VLLM_VERSION}" "${EXTRA_PKGS[@]}" >&2
else
    log "installing vllm==${VLLM_VERSION} (--no-deps)"
    "$VPY" -m pip install -q --progress-bar off --no-deps "vllm==${VLLM_VERSION}" >&2

    # Constraints = vLLM's own requirement specifiers (extras stripped from
    # names; extra-only requirements dropped), so e.g. torch==2.14.0 and
    # transformers<5.21 are honoured for whatever subset we install.
    CONSTRAINTS="$ENV_DIR/vllm-constraints.txt"
    "$VPY" - "$CONSTRAINTS" <<'EOF'
import re
import sys
from importlib.metadata import requires

lines = []
for req in requires("vllm") or []:
    if "extra ==" in req:
        continue
    lines.append(re.sub(r"^([A-Za-z0-9_.\-]+)\[[^\]]*\]", r"\1", req))
with open(sys.argv[1], "w") as f:
    f.write("\n".join(lines) + "\n")
EOF
    log "installing torch + minimal vLLM runtime deps + ${EXTRA_PKGS[*]} (torch pulls CUDA wheels, ~4 GB)"
    log "(pip's 'vllm 0.33.0 requires X, which is not installed' lines are expected in minimal mode)"
    "$VPY" -m pip install -q --progress-bar off -c "$CONSTRAINTS" \
        "${MIN_DEPS[@]}" "${EXTRA_PKGS[@]}" >&2
fi

# ---------------------------------------------------------------- check
log "import check (VLLM_TARGET_DEVICE=cpu)"
VLLM_TARGET_DEVICE=cpu "$VPY" - >&2 <<'EOF'
import importlib.metadata as md
import vllm
import vllm.distributed.parallel_state  # noqa: F401  (the required check)
from vllm.config import VllmConfig, set_current_vllm_config
import torch
import pytest  # noqa: F401

assert vllm.__version__ == "0.33.0", vllm.__version__
assert torch.distributed.is_gloo_available(), "torch.distributed gloo backend missing"
with set_current_vllm_config(VllmConfig()):
    pass
from vllm.platforms import current_platform
print(
    "[setup-python] ok: vllm", vllm.__version__, "torch", torch.__version__,
    "pytest", md.version("pytest"), "platform", type(current_platform).__name__,
)
EOF

{
    echo "$EXPECTED_MARKER"
    "$VPY" - <<'EOF'
import importlib.metadata as md
for name in ("vllm", "torch", "transformers", "pytest"):
    print(f"{name}=={md.version(name)}")
EOF
} > "$MARKER.tmp"
mv "$MARKER.tmp" "$MARKER"

elapsed=$(( $(date +%s) - start_ts ))
size="$(du -sh "$ENV_DIR" 2>/dev/null | cut -f1 || echo '?')"
log "done in ${elapsed}s; venv size ${size}; marker $MARKER"
echo "$VPY"
