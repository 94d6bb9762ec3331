//! Shared helpers of the simulator's tests.
#![allow(dead_code)]

use ascend_sim::capi::acl::*;
use ascend_sys::*;
use std::ffi::c_void;
use std::sync::{Arc, Condvar, Mutex};

/// Initialises the simulator (repeat initialisation is fine) and sets `device` on this thread.
pub fn setup(device: i32) {
    // SAFETY: plain calls.
    unsafe {
        let r = aclInit(std::ptr::null());
        assert!(r == ACL_SUCCESS || r == ACL_ERROR_REPEAT_INITIALIZE, "aclInit: {r}");
        assert_eq!(aclrtSetDevice(device), ACL_SUCCESS);
    }
}

/// Asserts an ACL call's code.
/// Test-only: the macro exists to call the unsafe C entry points tersely.
#[allow(clippy::macro_metavars_in_unsafe)]
#[macro_export]
macro_rules! assert_code {
    ($call:expr, $code:expr) => {{
        // SAFETY: test calls into the simulator with arguments chosen by the test.
        #[allow(unused_unsafe)]
        let got = unsafe { $call };
        assert_eq!(
            got,
            $code,
            "{} returned {} ({:?}), expected {} ({:?})",
            stringify!($call),
            got,
            ascend_sys::acl_error_name(got),
            $code,
            ascend_sys::acl_error_name($code)
        );
    }};
}

pub fn new_stream() -> aclrtStream {
    let mut s = std::ptr::null_mut();
    assert_code!(aclrtCreateStream(&mut s), ACL_SUCCESS);
    s
}

pub fn malloc(n: usize) -> *mut c_void {
    let mut p = std::ptr::null_mut();
    assert_code!(aclrtMalloc(&mut p, n, ACL_MEM_MALLOC_HUGE_FIRST), ACL_SUCCESS);
    p
}

/// A host function that holds a stream until the gate is opened.
#[derive(Clone, Default)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

extern "C" fn wait_gate(arg: *mut c_void) {
    // SAFETY: `arg` is the Box<Gate> leaked by `Gate::hold`, taken back exactly once.
    let g = unsafe { Box::from_raw(arg as *mut Gate) };
    let mut open = g.0 .0.lock().unwrap();
    while !*open {
        open = g.0 .1.wait(open).unwrap();
    }
}

impl Gate {
    /// Enqueues a host function on `stream` that blocks it until `open`.
    pub fn hold(stream: aclrtStream) -> Gate {
        let g = Gate::default();
        let arg = Box::into_raw(Box::new(g.clone())) as *mut c_void;
        assert_code!(aclrtLaunchHostFunc(stream, Some(wait_gate), arg), ACL_SUCCESS);
        g
    }

    pub fn open(&self) {
        *self.0 .0.lock().unwrap() = true;
        self.0 .1.notify_all();
    }
}

/// Runs the test named `name` of this binary in a child process with `env` set; returns whether it
/// ran and passed (a name that matches no test, after a rename, is a failure, not a pass).
pub fn run_isolated(name: &str, env: &[(&str, &str)]) -> bool {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let passed = out.status.success() && stdout.contains("test result: ok. 1 passed");
    if !passed {
        eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    }
    passed
}
