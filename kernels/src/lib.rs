//! Matmul and attention kernels for ascend-rs. One public API per operation; the implementation is
//! chosen by the stream's backend: host SIMD kernels on simulator streams (SIMD level chosen at run
//! time, [`cpu`]), aclnn operators on an NPU.
//!
//! [`matmul`]: GEMM with a bandwidth-bound path for decode shapes. [`attention`]: flash prefill,
//! paged decode and chunked prefill over vLLM's KV cache, and `reshape_and_cache`.

pub mod amx;
mod args;
pub mod attention;
pub mod cpu;
mod decode;
pub mod elementwise;
mod gemm;
mod lines;
pub mod matmul;
pub mod npu;
mod simd;

pub use attention::{reshape_and_cache, BlockTables, Heads, PagedAttention, Prefill};
pub use matmul::{Element, Matmul, Shape};
pub use simd::prefetch_line;
