#!/usr/bin/env bash
# Installs what a fresh Debian machine with the Rust toolchain (rustfmt and clippy included, checked
# at the end) and Python 3 lacks for ascend-rs:
#   - libclang (the test that regenerates ascend-sys/src/bindings.rs runs bindgen against it);
#   - a C compiler (the C ABI test compiles a C program against the simulator's shared library);
#   - python3-venv (the Python tests build their vLLM environment with `python3 -m venv`, which
#     Debian's python3 cannot do without it).
# Idempotent: installs only what is missing. Needs root (or sudo) for apt-get.
set -euo pipefail

need=()
# libclang itself (libclang.so / libclang-N.so), not libclang-cpp, which Debian often has already;
# and clang's own headers (stddef.h), which libclang1 alone (pulled in by doxygen, say) lacks.
{ compgen -G "/usr/lib/llvm-*/lib/libclang.so*" >/dev/null || compgen -G "/usr/lib/*-linux-gnu/libclang-[0-9]*.so*" >/dev/null; } &&
    compgen -G "/usr/lib/llvm-*/lib/clang/*/include/stddef.h" >/dev/null || need+=(libclang-dev)
command -v cc >/dev/null 2>&1 || need+=(gcc)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)

if ((${#need[@]})); then
    echo "setup: installing ${need[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: the Rust toolchain (cargo) is required: https://rustup.rs" >&2; exit 1; }
# scripts/test.sh runs `cargo fmt` and `cargo clippy`: components rustup does not always install.
missing=()
cargo fmt --version >/dev/null 2>&1 || missing+=(rustfmt)
cargo clippy --version >/dev/null 2>&1 || missing+=(clippy)
if ((${#missing[@]})); then
    echo "setup: missing Rust component(s) ${missing[*]} (scripts/test.sh needs them): rustup component add rustfmt clippy" >&2
    exit 1
fi
echo "setup: ok"
