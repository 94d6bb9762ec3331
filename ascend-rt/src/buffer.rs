//! Typed device memory.

use crate::error::Result;
use crate::stream::Stream;
use crate::track::Tracker;
use std::ffi::c_void;
use std::marker::PhantomData;
use std::sync::Arc;

mod sealed {
    pub trait Sealed {}
}

/// Element types that may live in device memory: plain values for which every bit pattern is valid
/// (so uninitialised device memory can be read without undefined behaviour).
///
/// # Safety
/// Implemented only in this crate, for types with no padding and no invalid bit patterns.
pub unsafe trait DeviceRepr: sealed::Sealed + Copy + Default + Send + Sync + 'static {
    /// The matching `aclDataType`.
    const ACL_DTYPE: ascend_sys::aclDataType;
    /// The matching `HcclDataType`.
    const HCCL_DTYPE: ascend_sys::HcclDataType;
}

macro_rules! device_repr {
    ($($t:ty => $acl:ident, $hccl:ident;)*) => {$(
        impl sealed::Sealed for $t {}
        // SAFETY: a primitive number type: no padding, every bit pattern is a valid value.
        unsafe impl DeviceRepr for $t {
            const ACL_DTYPE: ascend_sys::aclDataType = ascend_sys::$acl;
            const HCCL_DTYPE: ascend_sys::HcclDataType = ascend_sys::$hccl;
        }
    )*};
}

device_repr! {
    f32 => ACL_FLOAT, HCCL_DATA_TYPE_FP32;
    f64 => ACL_DOUBLE, HCCL_DATA_TYPE_FP64;
    half::f16 => ACL_FLOAT16, HCCL_DATA_TYPE_FP16;
    half::bf16 => ACL_BF16, HCCL_DATA_TYPE_BFP16;
    i8 => ACL_INT8, HCCL_DATA_TYPE_INT8;
    i16 => ACL_INT16, HCCL_DATA_TYPE_INT16;
    i32 => ACL_INT32, HCCL_DATA_TYPE_INT32;
    i64 => ACL_INT64, HCCL_DATA_TYPE_INT64;
    u8 => ACL_UINT8, HCCL_DATA_TYPE_UINT8;
    u16 => ACL_UINT16, HCCL_DATA_TYPE_UINT16;
    u32 => ACL_UINT32, HCCL_DATA_TYPE_UINT32;
    u64 => ACL_UINT64, HCCL_DATA_TYPE_UINT64;
}

/// `len` elements of `T` in device memory, allocated on (and released in the order of) a stream.
///
/// Safe code cannot free it while queued work uses it (the release waits for that work), nor read it on
/// one stream before a write queued on another has finished (uses are ordered by events).
pub struct DeviceBuffer<T: DeviceRepr> {
    ptr: usize,
    len: usize,
    tracker: Tracker,
    _t: PhantomData<T>,
}

impl<T: DeviceRepr> std::fmt::Debug for DeviceBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceBuffer").field("ptr", &(self.ptr as *const T)).field("len", &self.len).finish()
    }
}

impl<T: DeviceRepr> DeviceBuffer<T> {
    /// Takes ownership of a device allocation.
    ///
    /// # Safety
    /// `ptr` must come from `aclrtMalloc` in `stream`'s context, hold `len` elements, and be owned by
    /// nothing else.
    pub(crate) unsafe fn from_raw(ptr: usize, len: usize, stream: Arc<Stream>) -> Self {
        let owner = stream.context().clone();
        DeviceBuffer { ptr, len, tracker: Tracker::new(Some(stream), &owner), _t: PhantomData }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for zero elements (never: allocations are non-empty).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Size in bytes.
    pub fn bytes(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }

    /// The device address. Using it outside this crate's calls bypasses the ordering guarantees.
    pub fn raw(&self) -> *mut c_void {
        self.ptr as *mut c_void
    }

    /// The stream the buffer was allocated on.
    pub fn stream(&self) -> &Arc<Stream> {
        self.tracker.home().expect("device buffers always have a home stream")
    }

    pub(crate) fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// Copies this buffer to a new `Vec` on its own stream (waits).
    pub fn to_vec(&self) -> Result<Vec<T>> {
        self.stream().clone_dtoh(self)
    }
}

impl<T: DeviceRepr> Drop for DeviceBuffer<T> {
    fn drop(&mut self) {
        let (stream, ptr, after) = (self.stream().clone(), self.ptr, self.tracker.take_events());
        crate::host_task::now_or_later(move || stream.release(ptr, false, after));
    }
}
