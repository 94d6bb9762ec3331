//! Matmul and attention kernels for ascend-rs. One public API per operation; the implementation is
//! chosen by the stream's backend: host SIMD kernels on simulator streams (SIMD level chosen at run
//! time, [`cpu`]), aclnn operators on an NPU.
//!
//! Status: matmul's host path is here ([`matmul`]), with a bandwidth-bound path for decode shapes;
//! its NPU path and the attention kernels are still to come.

pub mod cpu;
mod decode;
mod gemm;
pub mod matmul;
pub mod npu;

pub use matmul::{Element, Matmul, Shape};
