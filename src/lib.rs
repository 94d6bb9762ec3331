//! ascend-rs: a Rust runtime for Huawei Ascend NPUs, with an embedded host simulator of the CANN C API
//! so that everything builds, runs and is tested on machines without an NPU.
//!
//! This facade re-exports the workspace's crates:
//! - [`sys`]: the raw C declarations and the run-time loader of the CANN libraries;
//! - [`sim`]: the host simulator of the same C ABI;
//! - [`rt`]: the safe layer (`Context`, `Stream`, `Event`, `DeviceBuffer<T>`, ...);
//! - [`kernels`] and [`patch`]: matmul/attention kernels and the vLLM patch module.
//!
//! [`bench`] holds the benchmark implementations shared by `benches/` (criterion) and `ascend bench`.

pub use ascend_kernels as kernels;
pub use ascend_patch as patch;
pub use ascend_rt as rt;
pub use ascend_sim as sim;
pub use ascend_sys as sys;

pub mod bench;
pub mod demo;

/// Facts recorded when this crate was built (`ascend info` prints them).
pub mod build_info {
    /// Crate version.
    pub const VERSION: &str = env!("CARGO_PKG_VERSION");
    /// Target triple.
    pub const TARGET: &str = env!("ASCEND_BUILD_TARGET");
    /// Cargo profile.
    pub const PROFILE: &str = env!("ASCEND_BUILD_PROFILE");
    /// Whether CANN headers were found at build time, and where.
    pub const CANN_HEADERS: &str = env!("ASCEND_BUILD_CANN_HEADERS");
}
