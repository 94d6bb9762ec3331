//! Initialisation counting. Its own test binary (process): finalising tears down everything, which
//! would disturb tests running beside it.

use ascend_sim::capi::acl::*;
use ascend_sys::*;
use std::ptr::null;

#[test]
fn init_is_counted_and_finalize_is_not_repeatable() {
    // SAFETY (whole test): the simulator's entry points are called with valid arguments or NULL.
    unsafe {
        assert_eq!(aclrtSetDevice(0), ACL_ERROR_UNINITIALIZE, "calls before aclInit");
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
        assert_eq!(aclFinalize(), ACL_SUCCESS);
    }
}
