//! The patch module through which vLLM uses ascend-rs.
//!
//! - [`registry`]: every patch, its targets (under every name vLLM binds them), supported vLLM
//!   versions, and why / how / upstream PR / removal plan; `patch/PATCHES.md` is generated from it.
//! - [`version`]: vLLM version strings (PEP 440) and the specifiers patches declare.
//! - [`layout`]: vLLM's model-parallel rank layout (TP, DCP, PCP, PP, DP, EP groups).
//! - [`comm`]: communicators on host memory (vLLM's CPU tensors, over shared memory) or on device
//!   memory (stream-ordered HCCL).
//! - [`ffi`]: the C ABI the Python package (`patch/python/ascend_patch`) calls through ctypes,
//!   declared in `patch/include/ascend_patch.h`.
//!
//! The cdylib links the simulator's host transport; it exports only `ascend_patch_*` entry points
//! that the engine needs plus the simulator's C API symbols (loaded `RTLD_LOCAL` by ctypes, they do
//! not interpose on a real CANN runtime in the same process).

pub mod comm;
pub mod ffi;
pub mod layout;
pub mod registry;
pub mod version;
