//! Errors of the safe layer: the failing call, its ACL code and name, and the runtime's own message.

use std::fmt;

/// Everything that can go wrong in `ascend-rt`.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// A runtime call returned an error code.
    Acl {
        /// The C function that failed.
        call: &'static str,
        /// Its `aclError` code.
        code: i32,
        /// The runtime's message for it (`aclGetRecentErrMsg`), possibly empty.
        message: String,
    },
    /// An HCCL call returned an error code.
    Hccl {
        /// The C function that failed.
        call: &'static str,
        /// Its `HcclResult` code.
        code: i32,
        /// The runtime's message for it, possibly empty.
        message: String,
    },
    /// The selected backend could not be loaded or initialised.
    Backend(String),
    /// The loaded CANN libraries do not export a function this call needs.
    MissingSymbol(&'static str),
    /// An argument was rejected before anything reached the runtime (nothing was enqueued).
    InvalidArgument(String),
    /// The operation is not available on this backend.
    Unsupported(String),
    /// Host code run on a stream panicked; later work on that stream may have seen bad data.
    HostTaskPanicked(String),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The ACL code, for runtime errors.
    pub fn code(&self) -> Option<i32> {
        match self {
            Error::Acl { code, .. } | Error::Hccl { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The C name of the code (e.g. `ACL_ERROR_RT_PARAM_INVALID`, `HCCL_E_TIMEOUT`), when known.
    pub fn name(&self) -> Option<&'static str> {
        match self {
            Error::Acl { code, .. } => ascend_sys::acl_error_name(*code),
            Error::Hccl { code, .. } => ascend_sys::hccl_result_name(*code),
            _ => None,
        }
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Error {
        Error::InvalidArgument(msg.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Acl { call, code, message } => {
                coded(f, call, ascend_sys::acl_error_name(*code).unwrap_or("unknown ACL error"), *code, message)
            }
            Error::Hccl { call, code, message } => {
                coded(f, call, ascend_sys::hccl_result_name(*code).unwrap_or("unknown HCCL error"), *code, message)
            }
            Error::Backend(m) => write!(f, "backend unavailable: {m}"),
            Error::MissingSymbol(s) => write!(f, "the loaded CANN libraries do not export {s}"),
            Error::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            Error::Unsupported(m) => write!(f, "unsupported: {m}"),
            Error::HostTaskPanicked(m) => write!(f, "a host task panicked: {m}"),
        }
    }
}

/// `call failed: NAME (code): message`.
fn coded(f: &mut fmt::Formatter<'_>, call: &str, name: &str, code: i32, message: &str) -> fmt::Result {
    write!(f, "{call} failed: {name} ({code})")?;
    if !message.is_empty() {
        write!(f, ": {message}")?;
    }
    Ok(())
}

impl std::error::Error for Error {}
