//! Argument checks shared by the kernels (done before anything is enqueued).

use ascend_rt::{Error, Result};

/// `got` elements must be exactly the product of `dims` (overflow counts as a mismatch).
pub(crate) fn expect_len(what: &str, got: usize, dims: &[usize]) -> Result<()> {
    match dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) {
        Some(n) if n == got => Ok(()),
        _ => Err(Error::InvalidArgument(format!("{what} holds {got} elements; expected {dims:?}"))),
    }
}
