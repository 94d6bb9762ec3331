//! Host kernels: code that runs on a stream, in stream order, reading and writing device memory
//! directly. Only possible where device memory is host memory (the simulator); the NPU path uses aclnn.

use crate::buffer::{DeviceBuffer, DeviceRepr};
use crate::error::{Error, Result};
use crate::stream::Stream;
use crate::track::Tracker;
use std::marker::PhantomData;
use std::sync::Arc;

/// The shared compute pool (one thread per core, whatever the number of devices): split the heavy part
/// of a host kernel over it with [`ascend_sim::Pool::parallel_for`].
pub fn pool() -> &'static ascend_sim::Pool {
    ascend_sim::Pool::global()
}

/// A read-only view of a device buffer, to be dereferenced inside a host kernel.
#[derive(Clone, Copy, Debug)]
pub struct HostSlice<T> {
    ptr: usize,
    len: usize,
    _t: PhantomData<fn() -> T>,
}

/// A writable view of a device buffer, to be dereferenced inside a host kernel.
#[derive(Debug)]
pub struct HostSliceMut<T> {
    ptr: usize,
    len: usize,
    _t: PhantomData<fn() -> T>,
}

impl<T> HostSlice<T> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for zero elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The elements.
    ///
    /// # Safety
    /// Call only inside the host kernel the view was made for, while it runs: the stream orders the
    /// kernel after the writes to the buffer and keeps the memory alive until it has finished.
    pub unsafe fn as_slice<'a>(&self) -> &'a [T] {
        // SAFETY: by the contract above the range is live, initialised and not being written.
        unsafe { std::slice::from_raw_parts(self.ptr as *const T, self.len) }
    }
}

impl<T> HostSliceMut<T> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for zero elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The elements, for writing.
    ///
    /// # Safety
    /// As [`HostSlice::as_slice`]; and no other view of the same buffer may be used at the same time
    /// (the `&mut` borrow taken by [`HostLaunch::write`] guarantees this across launches).
    pub unsafe fn as_mut_slice<'a>(&mut self) -> &'a mut [T] {
        // SAFETY: by the contract above the range is live and exclusively ours.
        unsafe { std::slice::from_raw_parts_mut(self.ptr as *mut T, self.len) }
    }
}

/// Builds a host-kernel launch: declare what it reads and writes, then [`HostLaunch::launch`] it.
///
/// ```no_run
/// # fn demo(stream: &std::sync::Arc<ascend_rt::Stream>, x: &ascend_rt::DeviceBuffer<f32>, y: &mut ascend_rt::DeviceBuffer<f32>) -> ascend_rt::Result<()> {
/// let mut l = stream.host_launch()?;
/// let (x, mut y) = (l.read(x)?, l.write(y)?);
/// l.launch(move || {
///     // SAFETY: inside the kernel the views are live and ordered.
///     let (x, y) = unsafe { (x.as_slice(), y.as_mut_slice()) };
///     y.iter_mut().zip(x).for_each(|(y, x)| *y += 2.0 * x);
/// })
/// # }
/// ```
pub struct HostLaunch<'a> {
    stream: &'a Arc<Stream>,
    uses: Vec<(&'a Tracker, bool)>,
}

impl<'a> HostLaunch<'a> {
    pub(crate) fn new(stream: &'a Arc<Stream>) -> Result<Self> {
        if !stream.context().runtime().host_addressable() {
            return Err(Error::Unsupported(
                "host kernels need host-addressable device memory (the simulator backend)".into(),
            ));
        }
        Ok(HostLaunch { stream, uses: Vec::new() })
    }

    fn check_device<T: DeviceRepr>(&self, b: &DeviceBuffer<T>) -> Result<()> {
        if b.stream().context().ordinal() != self.stream.context().ordinal() {
            return Err(Error::invalid(format!(
                "buffer lives on device {}, the stream on device {}",
                b.stream().context().ordinal(),
                self.stream.context().ordinal()
            )));
        }
        Ok(())
    }

    /// Declares that the kernel reads `b`.
    pub fn read<T: DeviceRepr>(&mut self, b: &'a DeviceBuffer<T>) -> Result<HostSlice<T>> {
        self.check_device(b)?;
        self.uses.push((b.tracker(), false));
        Ok(HostSlice { ptr: b.raw() as usize, len: b.len(), _t: PhantomData })
    }

    /// Declares that the kernel writes `b`.
    pub fn write<T: DeviceRepr>(&mut self, b: &'a mut DeviceBuffer<T>) -> Result<HostSliceMut<T>> {
        self.check_device(b)?;
        self.uses.push((b.tracker(), true));
        Ok(HostSliceMut { ptr: b.raw() as usize, len: b.len(), _t: PhantomData })
    }

    /// Enqueues `kernel` after the work it depends on. It runs on the stream's thread; a panic is
    /// an error of the stream from then on (see [`crate::Stream::launch_host`]).
    pub fn launch<F: FnOnce() + Send + 'static>(self, kernel: F) -> Result<()> {
        let HostLaunch { stream, uses } = self;
        stream.device_op(&uses, |s| s.launch_host(kernel))
    }
}
