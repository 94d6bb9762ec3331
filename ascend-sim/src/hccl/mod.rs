//! HCCL in the simulator: communicators across the threads of one process and across the processes of
//! one host, through shared memory, with collectives ordered on streams like any device work.
//!
//! - [`root`]: the root-info blob (segment name, key, format version, checksum).
//! - [`comm`]: the shared segment, the rendezvous, and the waiting rules (timeouts, dead peers).
//! - [`ops`]: the collective algorithms.
//! - [`dtype`]: data types and reductions.
//!
//! Timeouts: `HCCL_CONNECT_TIMEOUT` (seconds, default 120) bounds the rendezvous;
//! `HCCL_EXEC_TIMEOUT` (seconds, default 1836) bounds a collective waiting for its peers. A peer process
//! that dies is noticed within milliseconds; the survivors fail with `HCCL_E_TIMEOUT`.

pub mod comm;
pub mod dtype;
pub mod ops;
pub mod root;

pub use comm::{Comm, HFail};
pub use dtype::{DType, Op};
