//! Raw declarations of the Huawei CANN C API subset that ascend-rs uses — the ACL runtime, HCCL and
//! aclnn — and a loader that fills a function table from the real libraries at run time.
//!
//! - The declarations are the project's own (`include/ascend.h`), restated from the public CANN API.
//!   `src/bindings.rs` is generated from them by bindgen and committed; a test regenerates it.
//! - Enum-like C types are `i32` aliases with integer constants, never Rust enums: CANN adds values
//!   between releases, and a value the library returns must never be undefined behaviour.
//! - Nothing is linked. [`AscendApi`] is a table of optional function pointers, one per entry of
//!   `include/ascend/api.def`, filled either by [`loader::load`] from the CANN libraries or by the
//!   simulator (`ascend-sim`). A missing symbol is a `None` field, never a panic.

#![allow(non_camel_case_types, non_snake_case, non_upper_case_globals)]
#![allow(clippy::all)]

mod bindings {
    // Generated file: not formatted by rustfmt (it is `include!`d) and checked by `tests/bindings.rs`.
    include!("bindings.rs");
}
pub use bindings::*;

mod generated {
    use super::Library;
    include!(concat!(env!("OUT_DIR"), "/api_gen.rs"));
}
pub use generated::{acl_error_name, aclnn_status_name, hccl_result_name, API_SYMBOLS};

pub mod loader;
pub use loader::{load, LoadError};

/// The CANN library that exports a function of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Library {
    /// `libascendcl.so` (or `libacl_rt.so` on CANN 9.x): the ACL runtime.
    AscendCl,
    /// `libhccl.so`: collective communication.
    Hccl,
    /// `libnnopbase.so`: aclnn tensor and executor objects.
    NnOpBase,
    /// `libopapi.so`: the aclnn operators.
    OpApi,
}

impl Library {
    /// Every library, in the order the loader opens them.
    pub const ALL: [Library; 4] = [Library::AscendCl, Library::Hccl, Library::NnOpBase, Library::OpApi];

    /// File names tried for this library, most specific first.
    pub fn file_names(self) -> &'static [&'static str] {
        match self {
            Library::AscendCl => &["libascendcl.so", "libacl_rt.so"],
            Library::Hccl => &["libhccl.so"],
            Library::NnOpBase => &["libnnopbase.so"],
            Library::OpApi => &["libopapi.so"],
        }
    }
}

/// Number of function pointers in [`AscendApi`].
pub const API_LEN: usize = API_SYMBOLS.len();

impl AscendApi {
    /// A table with every entry missing.
    pub const fn empty() -> Self {
        // SAFETY: every field of `AscendApi` is an `Option<unsafe extern "C" fn ...>`, for which the
        // all-zero bit pattern is `None` (guaranteed null-pointer niche).
        unsafe { std::mem::zeroed() }
    }

    /// The table as a slice of raw slots, in `API_SYMBOLS` order.
    pub fn slots(&self) -> &[*const std::ffi::c_void; API_LEN] {
        const { assert!(std::mem::size_of::<AscendApi>() == API_LEN * std::mem::size_of::<usize>()) };
        // SAFETY: `AscendApi` is `#[repr(C)]` and consists of exactly `API_LEN` pointer-sized
        // `Option<fn>` fields in declaration order (checked above), each with the layout of a nullable
        // pointer, so it has the layout of `[*const c_void; API_LEN]`.
        unsafe { &*(self as *const Self as *const [*const std::ffi::c_void; API_LEN]) }
    }

    /// Mutable access to the raw slots; writing a non-null pointer into a slot asserts that it points to
    /// a function with exactly the C signature declared for that entry.
    ///
    /// # Safety
    /// Every non-null pointer stored must be a function with the signature of its entry.
    pub unsafe fn slots_mut(&mut self) -> &mut [*const std::ffi::c_void; API_LEN] {
        // SAFETY: same layout argument as `slots`; the caller upholds the signature contract.
        unsafe { &mut *(self as *mut Self as *mut [*const std::ffi::c_void; API_LEN]) }
    }

    /// Names of the entries that are present.
    pub fn present(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.slots().iter().zip(API_SYMBOLS).filter(|(p, _)| !p.is_null()).map(|(_, (_, n))| *n)
    }
}

// SAFETY: the table holds only function pointers, which are plain immutable code addresses.
unsafe impl Send for AscendApi {}
// SAFETY: as above; shared references only read the pointers.
unsafe impl Sync for AscendApi {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_layout_matches_symbol_list() {
        assert_eq!(std::mem::size_of::<AscendApi>(), API_LEN * std::mem::size_of::<usize>());
        assert_eq!(API_SYMBOLS.first().map(|s| s.1), Some("aclInit"));
        let mut names: Vec<_> = API_SYMBOLS.iter().map(|s| s.1).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), API_LEN, "a symbol is declared twice in api.def");
        assert_eq!(AscendApi::empty().present().count(), 0);
    }

    #[test]
    fn constants_match_reference() {
        assert_eq!(HCCL_ROOT_INFO_BYTES, 4108);
        assert_eq!(std::mem::size_of::<HcclRootInfo>(), 4108);
        assert_eq!(std::mem::align_of::<HcclRootInfo>(), 1);
        assert_eq!(std::mem::size_of::<HcclCommConfig>(), 300);
        assert_eq!(std::mem::size_of::<HcclSendRecvItem>(), 32);
        assert_eq!(ACL_ERROR_RT_STREAM_SYNC_TIMEOUT, 507046);
        assert_eq!(ACL_EVENT_RECORDED_STATUS_COMPLETE, 1);
        assert_eq!(ACL_EVENT_STATUS_COMPLETE, 0);
        assert_eq!(ACL_BF16, 27);
        assert_eq!(HCCL_DATA_TYPE_BFP16, 11);
        assert_eq!(acl_error_name(107000), Some("ACL_ERROR_RT_PARAM_INVALID"));
        assert_eq!(acl_error_name(0), Some("ACL_SUCCESS"));
        assert_eq!(hccl_result_name(9), Some("HCCL_E_TIMEOUT"));
        assert_eq!(aclnn_status_name(161001), Some("ACLNN_ERR_PARAM_NULLPTR"));
        assert_eq!(acl_error_name(123), None);
    }
}
