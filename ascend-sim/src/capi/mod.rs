//! The C ABI of the simulator: one `#[no_mangle] extern "C"` function per entry of
//! `ascend-sys/include/ascend/api.def`, with exactly the declared signature (the table in `lib.rs` is
//! built from them, so a mismatch does not compile).

#![allow(non_snake_case, clippy::missing_safety_doc)]

pub mod acl;
pub mod aclnn;
pub mod hccl;

use crate::fail::{fail, Result};
use ascend_sys::*;
use std::ffi::c_void;
use std::time::Duration;

/// Writes `value` through an output pointer, or fails with `ACL_ERROR_INVALID_PARAM` if it is NULL.
///
/// # Safety
/// A non-null `p` must be valid for writes of `T`.
pub(crate) unsafe fn out<T>(p: *mut T, value: T) -> Result<()> {
    if p.is_null() {
        return fail(ACL_ERROR_INVALID_PARAM, "an output pointer is NULL");
    }
    // SAFETY: non-null, and valid for writes by the caller's contract.
    unsafe { p.write(value) };
    Ok(())
}

/// The value of a non-NULL handle argument.
pub(crate) fn handle(h: *mut c_void) -> Result<usize> {
    if h.is_null() {
        return fail(ACL_ERROR_INVALID_PARAM, "handle is NULL");
    }
    Ok(h as usize)
}

/// A CANN timeout in milliseconds: -1 = forever, > 0 = that long; 0 is "check now" when
/// `zero_allowed`, else invalid like any value below -1 (`invalid` is the code for those).
pub(crate) fn duration_ms(ms: i32, invalid: i32, zero_allowed: bool) -> Result<Option<Duration>> {
    match ms {
        -1 => Ok(None),
        0 if zero_allowed => Ok(Some(Duration::ZERO)),
        t if t > 0 => Ok(Some(Duration::from_millis(t as u64))),
        t => fail(invalid, format!("timeout {t} ms is invalid (use -1 for no limit, or a positive value)")),
    }
}
