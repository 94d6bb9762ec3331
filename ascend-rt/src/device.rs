//! Devices: how many there are and what they are.

use crate::context::Context;
use crate::error::Result;
use crate::runtime::{acl, Runtime};
use std::ffi::CStr;
use std::sync::Arc;

/// A device ordinal of the current backend (logical: `ASCEND_RT_VISIBLE_DEVICES` applies).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Device(pub usize);

impl Device {
    /// Number of visible devices.
    pub fn count() -> Result<usize> {
        Device::count_with(Runtime::get()?)
    }

    pub(crate) fn count_with(rt: &Runtime) -> Result<usize> {
        let mut n = 0u32;
        // SAFETY: the out-pointer is a live local.
        unsafe { acl!(rt, aclrtGetDeviceCount(&mut n))? };
        Ok(n as usize)
    }

    /// The SoC name the runtime reports (e.g. `Ascend910B3`), or `None` when it reports none.
    pub fn soc_name() -> Result<Option<String>> {
        let rt = Runtime::get()?;
        let f = rt.api().aclrtGetSocName.ok_or(crate::Error::MissingSymbol("aclrtGetSocName"))?;
        // SAFETY: takes no arguments; returns NULL or a static NUL-terminated string.
        let p = unsafe { f() };
        // SAFETY: non-null results are NUL-terminated strings owned by the runtime.
        Ok((!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()))
    }

    /// Opens this device's context (see [`Context::new`]).
    pub fn context(self) -> Result<Arc<Context>> {
        Context::new(self.0)
    }
}
