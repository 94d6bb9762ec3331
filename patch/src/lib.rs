//! The patch module through which vLLM uses ascend-rs: patch registry, version gate and the C ABI for
//! the engine.
//!
//! Skeleton: the registry and C ABI arrive with their own issue.
