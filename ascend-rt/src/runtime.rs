//! The process-wide runtime: which backend runs the C API (real CANN or the simulator), and why.

use crate::error::{Error, Result};
use ascend_sys::AscendApi;
use std::ffi::CStr;
use std::sync::OnceLock;

/// Which implementation of the C API this process uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The vendor's CANN libraries, on an NPU host.
    Cann,
    /// The embedded host simulator (`ascend-sim`).
    Sim,
}

impl Backend {
    /// `"cann"` or `"sim"`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Cann => "cann",
            Backend::Sim => "sim",
        }
    }
}

/// The initialised runtime. Obtain it with [`Runtime::get`]; it lives for the whole process.
pub struct Runtime {
    backend: Backend,
    reason: String,
    cann_error: Option<String>,
    api: &'static AscendApi,
    libraries: Vec<String>,
}

static RUNTIME: OnceLock<Result<Runtime>> = OnceLock::new();

impl Runtime {
    /// Chooses the backend once per process and initialises it (`aclInit`).
    ///
    /// `ASCEND_BACKEND=auto` (the default) uses CANN when its runtime loads and reports at least one
    /// device, and the simulator otherwise; `cann` insists on CANN (an error if it cannot be loaded);
    /// `sim` always uses the simulator. The choice and its reason are kept for [`Runtime::reason`].
    pub fn get() -> Result<&'static Runtime> {
        RUNTIME.get_or_init(Runtime::select).as_ref().map_err(Clone::clone)
    }

    fn select() -> Result<Runtime> {
        let choice = std::env::var("ASCEND_BACKEND").unwrap_or_default();
        match choice.trim() {
            "sim" => Runtime::sim("ASCEND_BACKEND=sim".into()),
            "cann" => Runtime::cann().map_err(|e| Error::Backend(format!("ASCEND_BACKEND=cann, but {e}"))),
            "" | "auto" => Runtime::cann().or_else(|why| {
                let short = why.lines().next().unwrap_or_default().trim_end_matches(" (tried:").to_string();
                let mut rt = Runtime::sim(format!("auto: no usable CANN runtime ({short})"))?;
                rt.cann_error = Some(why);
                Ok(rt)
            }),
            other => Err(Error::Backend(format!("ASCEND_BACKEND={other:?}: expected auto, cann or sim"))),
        }
    }

    fn sim(reason: String) -> Result<Runtime> {
        let rt =
            Runtime { backend: Backend::Sim, reason, cann_error: None, api: ascend_sim::api(), libraries: Vec::new() };
        rt.init()?;
        Ok(rt)
    }

    fn cann() -> Result<Runtime, String> {
        let loaded = ascend_sys::load().map_err(|e| e.to_string())?;
        let libraries = loaded
            .libraries
            .iter()
            .map(|(lib, r)| match r {
                Ok(p) => format!("{lib:?}: {}", p.display()),
                Err(e) => format!("{lib:?}: not loaded ({} places tried)", e.attempts.len()),
            })
            .collect();
        // The libraries stay loaded for the life of the process, like the table that points into them.
        let loaded: &'static ascend_sys::loader::Loaded = Box::leak(Box::new(loaded));
        let rt =
            Runtime { backend: Backend::Cann, reason: String::new(), cann_error: None, api: &loaded.api, libraries };
        rt.init().map_err(|e| format!("CANN loaded but {e}"))?;
        let n = crate::device::Device::count_with(&rt).map_err(|e| format!("CANN loaded but {e}"))?;
        if n == 0 {
            return Err("CANN loaded but reports no device".into());
        }
        Ok(Runtime { reason: format!("CANN runtime loaded and reports {n} device(s)"), ..rt })
    }

    fn init(&self) -> Result<()> {
        let init = self.api.aclInit.ok_or(Error::MissingSymbol("aclInit"))?;
        // SAFETY: aclInit accepts NULL (default configuration).
        let code = unsafe { init(std::ptr::null()) };
        // A repeated initialisation is counted and reported as REPEAT_INITIALIZE: that is success.
        if code == 0 || code == ascend_sys::ACL_ERROR_REPEAT_INITIALIZE {
            Ok(())
        } else {
            Err(self.error("aclInit", code))
        }
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Why this backend was chosen.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// When `auto` fell back to the simulator: why CANN could not be used (every place searched).
    pub fn cann_error(&self) -> Option<&str> {
        self.cann_error.as_deref()
    }

    /// For CANN: each library and where it was loaded from.
    pub fn libraries(&self) -> &[String] {
        &self.libraries
    }

    /// The raw function table (for code that needs a call the safe layer does not wrap).
    pub fn api(&self) -> &'static AscendApi {
        self.api
    }

    /// True when device memory is ordinary host memory, so host kernels may run on streams.
    pub fn host_addressable(&self) -> bool {
        self.backend == Backend::Sim
    }

    /// The `Error` for a failed call, with the runtime's recent message.
    pub(crate) fn error(&self, call: &'static str, code: i32) -> Error {
        let message = match self.api.aclGetRecentErrMsg {
            // SAFETY: aclGetRecentErrMsg takes no arguments and returns NULL or a NUL-terminated
            // string that stays valid until the thread's next call, which comes after this copy.
            Some(f) => unsafe {
                let p = f();
                if p.is_null() {
                    String::new()
                } else {
                    CStr::from_ptr(p).to_string_lossy().into_owned()
                }
            },
            None => String::new(),
        };
        Error::Acl { call, code, message }
    }

    /// The `Error` for a failed HCCL call, with the runtime's recent message.
    pub(crate) fn hccl_error(&self, call: &'static str, code: i32) -> Error {
        match self.error(call, code) {
            Error::Acl { call, code, message } => Error::Hccl { call, code, message },
            other => other,
        }
    }

    /// `Ok` for HCCL_SUCCESS, the full error otherwise.
    pub(crate) fn check_hccl(&self, call: &'static str, code: i32) -> Result<()> {
        if code == 0 {
            Ok(())
        } else {
            Err(self.hccl_error(call, code))
        }
    }

    /// `Ok` for code 0, the full error otherwise.
    pub(crate) fn check(&self, call: &'static str, code: i32) -> Result<()> {
        if code == 0 {
            Ok(())
        } else {
            Err(self.error(call, code))
        }
    }
}

/// Calls one C API function through the runtime's table: `acl!(rt, aclrtMalloc(&mut p, n, 0))`.
/// Evaluates to `Result<()>`: a missing symbol or a non-zero code is an [`Error`]. The call itself
/// is unsafe; the macro must be used inside an `unsafe` block whose SAFETY comment covers the call.
macro_rules! acl {
    ($rt:expr, $f:ident($($arg:expr),* $(,)?)) => {{
        let rt: &$crate::runtime::Runtime = $rt;
        match rt.api().$f {
            Some(f) => rt.check(stringify!($f), f($($arg),*)),
            None => Err($crate::error::Error::MissingSymbol(stringify!($f))),
        }
    }};
}
pub(crate) use acl;
