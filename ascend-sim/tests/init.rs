//! Initialisation counting. Its own test binary (process): finalising tears down everything, which
//! would disturb tests running beside it.

use ascend_sim::capi::acl::*;
use ascend_sys::*;
use std::ptr::null;
use std::sync::atomic::{AtomicI32, Ordering};

#[test]
fn init_is_counted_and_finalize_is_not_repeatable() {
    // SAFETY (whole test): the simulator's entry points are called with valid arguments or NULL.
    unsafe {
        assert_eq!(aclrtSetDevice(0), ACL_ERROR_UNINITIALIZE, "calls before aclInit");
        // Event calls too, whatever the handle (none can be live yet).
        let e = 0x10 as aclrtEvent;
        assert_eq!(aclrtRecordEvent(e, std::ptr::null_mut()), ACL_ERROR_UNINITIALIZE);
        assert_eq!(aclrtSynchronizeEvent(e), ACL_ERROR_UNINITIALIZE);
        assert_eq!(aclrtQueryEventStatus(e, &mut 0), ACL_ERROR_UNINITIALIZE);
        assert_eq!(aclrtDestroyEvent(e), ACL_ERROR_UNINITIALIZE);
        assert_eq!(aclFinalize(), ACL_ERROR_REPEAT_FINALIZE, "finalize before init");
        assert_eq!(aclInit(c"/nonexistent/acl.json".as_ptr()), ACL_ERROR_INVALID_FILE);
        assert_eq!(aclInit(null()), ACL_SUCCESS);
        assert_eq!(aclInit(null()), ACL_ERROR_REPEAT_INITIALIZE);
        assert_eq!(aclrtSetDevice(0), ACL_SUCCESS);
        let mut p = std::ptr::null_mut();
        assert_eq!(aclrtMalloc(&mut p, 1024, 0), ACL_SUCCESS);
        let msg = std::ffi::CStr::from_ptr({
            aclrtMalloc(&mut p, 0, 0);
            aclGetRecentErrMsg()
        });
        assert!(msg.to_string_lossy().contains("size is 0"), "{msg:?}");
        assert_eq!(aclFinalize(), ACL_SUCCESS);
        assert_eq!(aclFinalize(), ACL_ERROR_REPEAT_FINALIZE);
        // Everything was released: the old pointer is gone, the thread has no current device.
        assert_eq!(aclInit(null()), ACL_SUCCESS, "re-initialisation works");
        let mut d = -1;
        assert_eq!(aclrtGetDevice(&mut d), ACL_ERROR_RT_CONTEXT_NULL);
        assert_eq!(aclrtFree(p), ACL_ERROR_RT_PARAM_INVALID);
        assert_eq!(aclrtSetDevice(0), ACL_SUCCESS);
        assert_eq!(aclrtGetDevice(&mut d), ACL_SUCCESS);
        assert_eq!(d, 0);
        // Finalising waits for queued work, which may itself call the runtime: no deadlock, and
        // the runtime is still initialised for it.
        let mut s = std::ptr::null_mut();
        assert_eq!(aclrtCreateStream(&mut s), ACL_SUCCESS);
        assert_eq!(aclrtLaunchHostFunc(s, Some(calls_the_runtime), std::ptr::null_mut()), ACL_SUCCESS);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(aclFinalize()).unwrap());
        let finalized = rx.recv_timeout(std::time::Duration::from_secs(60)).expect("aclFinalize returned");
        assert_eq!(finalized, ACL_SUCCESS);
        assert_eq!(SEEN_BY_HOST_FUNC.load(Ordering::Acquire), ACL_ERROR_INVALID_PARAM, "initialised while draining");
    }
}

/// What `aclrtFree(NULL)` returned inside the host function (`ACL_ERROR_INVALID_PARAM` while the
/// runtime is initialised).
static SEEN_BY_HOST_FUNC: AtomicI32 = AtomicI32::new(-1);

extern "C" fn calls_the_runtime(_: *mut std::ffi::c_void) {
    // Late enough that aclFinalize is already waiting for this stream.
    std::thread::sleep(std::time::Duration::from_millis(300));
    // SAFETY: a plain call; NULL is refused.
    SEEN_BY_HOST_FUNC.store(unsafe { aclrtFree(std::ptr::null_mut()) }, Ordering::Release);
}
