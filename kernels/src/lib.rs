//! Matmul and attention kernels for ascend-rs (host SIMD path and NPU aclnn path).
//!
//! Skeleton: the kernels arrive with their own issues. The crate exists so the workspace has its final
//! shape and the facade can re-export it.
