//! A host simulator of the CANN C ABI (ACL runtime, HCCL, aclnn objects).
//!
//! It is the embedded default on every machine without an NPU. It reproduces CANN's observable
//! behaviour — error codes, initialisation counting, per-thread current device and context, stream
//! ordering, events, callbacks, memory alignment and padding — and is stricter where CANN would
//! silently corrupt memory: every copy and memset is checked against live allocations, and every
//! handle is looked up before use.
//!
//! Use it in-process through [`api`] (the same function table the CANN loader fills), or as a shared
//! library (`libascend_sim.so`) from C or Python: every entry point is exported under its CANN name.
//!
//! Configuration (read once, at the first `aclInit`): `ASCEND_SIM_DEVICES`, `ASCEND_SIM_HBM_BYTES`,
//! `ASCEND_SIM_SOC`, `ASCEND_RT_VISIBLE_DEVICES`; `ASCEND_SIM_THREADS` sizes the compute pool.

pub mod capi;
pub mod config;
pub mod event;
pub mod fail;
pub mod hccl;
pub mod memory;
pub mod pool;
pub mod report;
pub mod runtime;
pub mod stream;

pub use config::Config;
pub use pool::Pool;

use ascend_sys::AscendApi;
#[allow(unused_imports)]
use capi::{acl::*, aclnn::*, hccl::*};

macro_rules! sim_table {
    ($($name:ident,)*) => {
        AscendApi { $($name: Some($name),)* }
    };
}

static API: AscendApi = ascend_sys::for_each_api!(sim_table);

/// The simulator's function table: every entry of the C API, implemented in this process.
pub fn api() -> &'static AscendApi {
    &API
}

/// The configuration the simulator runs with (read from the environment on first use).
pub fn config() -> &'static Config {
    &runtime::runtime().config
}
