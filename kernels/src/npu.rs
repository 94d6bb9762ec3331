//! The NPU path of matmul: aclnnMm (one product, or a batch sharing its weights, flattened) and
//! aclnnBatchMatMul (a batch with its own weights), through the two-phase API, with the workspace
//! taken from the stream (its release is ordered after the operator). It compiles everywhere and runs
//! only when the stream's backend is CANN; [`descriptors`] is what it hands to `aclCreateTensor`.

use crate::matmul::{Element, Shape};
use ascend_rt::{DeviceBuffer, Error, Result, Stream};
use ascend_sys::{aclDataType, aclFormat, ACL_FORMAT_ND};
use std::ffi::c_void;
use std::sync::Arc;

/// `cubeMathType` KEEP_DTYPE: compute in the input type (no silent down-conversion of f32).
const KEEP_DTYPE: i8 = 0;

/// What `aclCreateTensor` receives for one operand (strides and offset in elements, outermost first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorDesc {
    /// View shape.
    pub dims: Vec<i64>,
    /// View strides.
    pub strides: Vec<i64>,
    /// Offset of the first element.
    pub offset: i64,
    /// Storage format (ND).
    pub format: aclFormat,
    /// Element type.
    pub dtype: aclDataType,
    /// Physical shape of the storage.
    pub storage: Vec<i64>,
}

/// Which operator a shape needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `aclnnMm`: 2-D.
    Mm,
    /// `aclnnBatchMatMul`: 3-D.
    BatchMatMul,
}

/// The operator and the (A, B, C) descriptors for `shape` with element type `dtype`. A batch that
/// shares its weights is one `[batch·m, k] · B` product; transposed weights are a strided view of
/// their `[n, k]` storage.
pub fn descriptors(s: &Shape, dtype: aclDataType) -> (Op, [TensorDesc; 3]) {
    let (b, m, n, k) = (s.batch as i64, s.m as i64, s.n as i64, s.k as i64);
    let d = |dims: Vec<i64>, strides: Vec<i64>, storage: Vec<i64>| TensorDesc {
        dims,
        strides,
        offset: 0,
        format: ACL_FORMAT_ND,
        dtype,
        storage,
    };
    let weights = |batch: Option<i64>| {
        let (dims, strides, storage) = match s.transpose_b {
            false => (vec![k, n], vec![n, 1], vec![k, n]),
            true => (vec![k, n], vec![1, k], vec![n, k]),
        };
        match batch {
            None => d(dims, strides, storage),
            Some(b) => d([vec![b], dims].concat(), [vec![k * n], strides].concat(), [vec![b], storage].concat()),
        }
    };
    if b == 1 || s.shared_b {
        let rows = b * m;
        (
            Op::Mm,
            [d(vec![rows, k], vec![k, 1], vec![rows, k]), weights(None), d(vec![rows, n], vec![n, 1], vec![rows, n])],
        )
    } else {
        (
            Op::BatchMatMul,
            [
                d(vec![b, m, k], vec![m * k, k, 1], vec![b, m, k]),
                weights(Some(b)),
                d(vec![b, m, n], vec![m * n, n, 1], vec![b, m, n]),
            ],
        )
    }
}

/// Enqueues the matmul on an NPU stream.
pub fn run<T: Element, O: Element>(
    stream: &Arc<Stream>,
    s: &Shape,
    a: &DeviceBuffer<T>,
    b: &DeviceBuffer<T>,
    bias: Option<&DeviceBuffer<T>>,
    c: &mut DeviceBuffer<O>,
) -> Result<()> {
    if bias.is_some() || T::ACL_DTYPE != O::ACL_DTYPE {
        return Err(Error::Unsupported("the NPU matmul path takes no bias and writes the input type".into()));
    }
    let api = stream.context().runtime().api();
    let missing = |f: &'static str| Error::MissingSymbol(f);
    let create = api.aclCreateTensor.ok_or(missing("aclCreateTensor"))?;
    let destroy = api.aclDestroyTensor.ok_or(missing("aclDestroyTensor"))?;
    let (op, descs) = descriptors(s, T::ACL_DTYPE);
    let (phase1, phase2, names) = match op {
        Op::Mm => (api.aclnnMmGetWorkspaceSize, api.aclnnMm, ("aclnnMmGetWorkspaceSize", "aclnnMm")),
        Op::BatchMatMul => (
            api.aclnnBatchMatMulGetWorkspaceSize,
            api.aclnnBatchMatMul,
            ("aclnnBatchMatMulGetWorkspaceSize", "aclnnBatchMatMul"),
        ),
    };
    let (phase1, phase2) = (phase1.ok_or(missing(names.0))?, phase2.ok_or(missing(names.1))?);
    let status = |call: &'static str, code: i32| match code {
        0 => Ok(()),
        code => {
            Err(Error::Acl { call, code, message: ascend_sys::aclnn_status_name(code).unwrap_or("aclnn error").into() })
        }
    };
    let ptrs = [a.raw(), b.raw(), c.raw()];
    // SAFETY: each descriptor's arrays live for the call; the data pointers are live device buffers
    // whose extents match the descriptors (checked by `Matmul::run`).
    let tensors: Vec<*mut ascend_sys::aclTensor> = descs
        .iter()
        .zip(ptrs)
        .map(|(d, p)| unsafe {
            create(
                d.dims.as_ptr(),
                d.dims.len() as u64,
                d.dtype,
                d.strides.as_ptr(),
                d.offset,
                d.format,
                d.storage.as_ptr(),
                d.storage.len() as u64,
                p,
            )
        })
        .collect();
    let result = if tensors.iter().any(|t| t.is_null()) {
        Err(Error::Unsupported("aclCreateTensor refused a matmul descriptor".into()))
    } else {
        let (mut ws, mut exec) = (0u64, std::ptr::null_mut());
        // SAFETY: valid tensors and out-pointers; phase 1 only inspects the descriptors.
        status(names.0, unsafe { phase1(tensors[0], tensors[1], tensors[2], KEEP_DTYPE, &mut ws, &mut exec) }).and_then(
            |()| {
                // The workspace is released in stream order after the operator (DeviceBuffer drop).
                let mut workspace = (ws > 0).then(|| stream.alloc::<u8>(ws as usize)).transpose()?;
                let mut l = stream.device_launch();
                l.read(a)?;
                l.read(b)?;
                l.write(c)?;
                let wptr = match workspace.as_mut() {
                    Some(w) => l.write(w)?,
                    None => std::ptr::null_mut::<c_void>(),
                };
                // SAFETY: the operator touches only A, B, C and the workspace, all declared above.
                unsafe { l.launch(|raw| status(names.1, phase2(wptr, ws, exec, raw))) }
            },
        )
    };
    for t in tensors.into_iter().filter(|t| !t.is_null()) {
        // SAFETY: created above, destroyed once; the executor holds what it needs after phase 1.
        unsafe { destroy(t) };
    }
    result
}
