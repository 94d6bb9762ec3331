//! Error values inside the simulator, and the per-thread "recent error message" of `aclGetRecentErrMsg`.

use ascend_sys::aclError;
use std::cell::RefCell;
use std::ffi::{c_char, CString};

/// A failed call: the ACL (or HCCL / aclnn) code to return and the message to record for the thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fail {
    /// The code returned through the C ABI.
    pub code: i32,
    /// What went wrong, in words; returned by `aclGetRecentErrMsg`.
    pub message: String,
}

/// The result type of the simulator's internal operations.
pub type Result<T, E = Fail> = std::result::Result<T, E>;

impl Fail {
    /// A failure with `code` and a message.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Fail { code, message: message.into() }
    }
}

/// Shorthand: `Err(Fail::new(code, message))`.
pub fn fail<T>(code: i32, message: impl Into<String>) -> Result<T> {
    Err(Fail::new(code, message))
}

thread_local! {
    static RECENT: RefCell<Option<CString>> = const { RefCell::new(None) };
}

/// Records `message` as this thread's most recent error message.
pub fn set_recent(message: &str) {
    let c = CString::new(message.replace('\0', " ")).unwrap_or_default();
    RECENT.with(|r| *r.borrow_mut() = Some(c));
}

/// Takes this thread's recent message, as `aclGetRecentErrMsg` does: the pointer stays valid until the
/// thread's next call to it, and a second call without a new error returns NULL.
pub fn take_recent() -> *const c_char {
    thread_local! { static HELD: RefCell<Option<CString>> = const { RefCell::new(None) }; }
    let msg = RECENT.with(|r| r.borrow_mut().take());
    HELD.with(|h| {
        let mut h = h.borrow_mut();
        *h = msg;
        h.as_ref().map_or(std::ptr::null(), |c| c.as_ptr())
    })
}

/// Runs one C entry point: converts its result to a code, records the message of a failure, and turns
/// a panic (a simulator bug) into `ACL_ERROR_RT_INTERNAL_ERROR` instead of unwinding into C.
pub fn entry(name: &str, body: impl FnOnce() -> Result<()>) -> aclError {
    entry_with(name, ascend_sys::ACL_ERROR_RT_INTERNAL_ERROR, body)
}

/// Like [`entry`], with the code returned when the body panics (HCCL and aclnn have their own).
pub fn entry_with(name: &str, internal: i32, body: impl FnOnce() -> Result<()>) -> i32 {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(Ok(())) => 0,
        Ok(Err(f)) => {
            set_recent(&format!("{name}: {}", f.message));
            f.code
        }
        Err(_) => {
            set_recent(&format!("{name}: internal error in the simulator (a bug: please report it)"));
            internal
        }
    }
}
