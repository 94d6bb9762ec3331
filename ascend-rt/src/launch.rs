//! Device work enqueued by raw C calls (vendor operators such as aclnn), ordered like the safe layer's
//! own work: declare the buffers it reads and writes, then enqueue it.

use crate::buffer::{DeviceBuffer, DeviceRepr};
use crate::error::{Error, Result};
use crate::stream::Stream;
use crate::track::Tracker;
use std::ffi::c_void;

/// Builds an ordered launch of raw device work on a stream.
///
/// ```no_run
/// # fn demo(stream: &ascend_rt::Stream, x: &ascend_rt::DeviceBuffer<f32>, y: &mut ascend_rt::DeviceBuffer<f32>) -> ascend_rt::Result<()> {
/// let mut l = stream.device_launch();
/// let (x, y) = (l.read(x)?, l.write(y)?);
/// // SAFETY: the raw call only touches `x` and `y`, within their lengths.
/// unsafe { l.launch(|raw_stream| { let _ = (x, y, raw_stream); Ok(()) }) }
/// # }
/// ```
pub struct DeviceLaunch<'a> {
    stream: &'a Stream,
    uses: Vec<(&'a Tracker, bool)>,
}

impl<'a> DeviceLaunch<'a> {
    pub(crate) fn new(stream: &'a Stream) -> Self {
        DeviceLaunch { stream, uses: Vec::new() }
    }

    fn check<T: DeviceRepr>(&self, b: &DeviceBuffer<T>) -> Result<()> {
        let (bd, sd) = (b.stream().context().ordinal(), self.stream.context().ordinal());
        if bd != sd {
            return Err(Error::invalid(format!("buffer lives on device {bd}, the stream on device {sd}")));
        }
        Ok(())
    }

    /// Declares that the work reads `b`; returns its device address.
    pub fn read<T: DeviceRepr>(&mut self, b: &'a DeviceBuffer<T>) -> Result<*mut c_void> {
        self.check(b)?;
        self.uses.push((b.tracker(), false));
        Ok(b.raw())
    }

    /// Declares that the work writes `b`; returns its device address.
    pub fn write<T: DeviceRepr>(&mut self, b: &'a mut DeviceBuffer<T>) -> Result<*mut c_void> {
        self.check(b)?;
        self.uses.push((b.tracker(), true));
        Ok(b.raw())
    }

    /// Enqueues the work: `enqueue` gets the raw `aclrtStream` and must only enqueue (not wait).
    ///
    /// # Safety
    /// The work must touch device memory only through the declared buffers, within their lengths.
    pub unsafe fn launch(self, enqueue: impl FnOnce(*mut c_void) -> Result<()>) -> Result<()> {
        let DeviceLaunch { stream, uses } = self;
        stream.device_op(&uses, |s| enqueue(s.raw()))
    }
}
