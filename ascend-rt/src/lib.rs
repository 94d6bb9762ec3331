//! The safe layer of ascend-rs: RAII types over the CANN runtime (or its host simulator).
//!
//! - [`Runtime`] picks the backend once per process (`ASCEND_BACKEND=auto|cann|sim`).
//! - [`Context`] opens a device; [`Stream`]s order work on it; [`Event`]s order streams.
//! - [`DeviceBuffer<T>`] is typed device memory, allocated and copied through stream methods;
//!   [`PinnedHostBuffer<T>`] is the host side of asynchronous copies.
//! - [`Communicator`] runs HCCL collectives (typed, stream-ordered) across ranks of threads or processes.
//! - Every fallible call returns [`Result`]; errors carry the ACL code, its name and the runtime's
//!   message. Nothing panics on a runtime error.
//!
//! Guarantees in safe code: memory is never released while queued work uses it (release is ordered
//! after that work; dropping a buffer does not wait for it), and a buffer written on one stream is
//! never read on another before the write is ordered before the read. Dropping the last reference
//! to a stream lets its queued work finish first, and to a context waits (up to 30 s) for the work
//! its released memory waits on.
//!
//! Host tasks ([`Stream::launch_host`], host kernels) may not call the runtime: as CANN requires,
//! such calls fail with [`Error::Unsupported`] before anything is enqueued, and what a task drops
//! is torn down on a separate thread once the task no longer holds its stream.
//!
//! ```no_run
//! use ascend_rt::{Context, Stream};
//! let ctx = Context::new(0)?;
//! let stream = Stream::new(&ctx)?;
//! let x = stream.clone_htod(&[1.0f32, 2.0, 3.0])?;
//! assert_eq!(stream.clone_dtoh(&x)?, vec![1.0, 2.0, 3.0]);
//! # Ok::<(), ascend_rt::Error>(())
//! ```

mod buffer;
mod comm;
mod context;
mod device;
mod error;
mod event;
pub mod host;
mod host_task;
mod launch;
mod pinned;
mod runtime;
mod stream;
mod track;

pub use buffer::{DeviceBuffer, DeviceRepr};
pub use comm::{Communicator, ReduceOp, RootInfo};
pub use context::Context;
pub use device::Device;
pub use error::{Error, Result};
pub use event::Event;
pub use host::{HostLaunch, HostSlice, HostSliceMut};
pub use launch::DeviceLaunch;
pub use pinned::PinnedHostBuffer;
pub use runtime::{Backend, Runtime};
pub use stream::Stream;

pub use half::{bf16, f16};
