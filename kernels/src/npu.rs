//! The NPU path of matmul: aclnnMm (one product, or a batch sharing its weights, flattened) and
//! aclnnBatchMatMul (a batch with its own weights), through the two-phase API, with the workspace
//! taken from the stream (its release is ordered after the operator). It compiles everywhere and runs
//! only when the stream's backend is CANN; [`descriptors`] is what it hands to `aclCreateTensor`.

use crate::matmul::{Element, Shape};
use ascend_rt::{DeviceBuffer, Error, Result, Stream};
use ascend_sys::{aclDataType, aclFormat, aclIntArray, aclTensor, aclTensorList, AscendApi, ACL_FORMAT_ND};
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

impl TensorDesc {
    /// A dense row-major ND tensor of `dims`.
    pub fn contiguous(dims: &[i64], dtype: aclDataType) -> TensorDesc {
        let mut strides = vec![1i64; dims.len()];
        for i in (0..dims.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * dims[i + 1];
        }
        TensorDesc { dims: dims.to_vec(), strides, offset: 0, format: ACL_FORMAT_ND, dtype, storage: dims.to_vec() }
    }
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

/// Enqueues the matmul on an NPU stream. Fails with `InvalidArgument` for operands that do not
/// match `s` (as [`crate::Matmul::run`] does), `Unsupported` for a bias or an output type other
/// than the input's.
pub fn run<T: Element, O: Element>(
    stream: &Arc<Stream>,
    s: &Shape,
    a: &DeviceBuffer<T>,
    b: &DeviceBuffer<T>,
    bias: Option<&DeviceBuffer<T>>,
    c: &mut DeviceBuffer<O>,
) -> Result<()> {
    crate::matmul::check_operands(s, a, b, bias, c)?;
    if bias.is_some() || T::ACL_DTYPE != O::ACL_DTYPE {
        return Err(Error::Unsupported("the NPU matmul path takes no bias and writes the input type".into()));
    }
    let api = stream.context().runtime().api();
    let (op, descs) = descriptors(s, T::ACL_DTYPE);
    let (phase1, phase2, names) = match op {
        Op::Mm => (api.aclnnMmGetWorkspaceSize, api.aclnnMm, ("aclnnMmGetWorkspaceSize", "aclnnMm")),
        Op::BatchMatMul => (
            api.aclnnBatchMatMulGetWorkspaceSize,
            api.aclnnBatchMatMul,
            ("aclnnBatchMatMulGetWorkspaceSize", "aclnnBatchMatMul"),
        ),
    };
    let phase1 = phase1.ok_or(Error::MissingSymbol(names.0))?;
    let p = prepare(stream, names.0, |objects, ws, exec| {
        let t = objects.all(&descs, &[a.raw(), b.raw(), c.raw()])?;
        // SAFETY: valid tensors and out-pointers; phase 1 only inspects the descriptors.
        Ok(unsafe { phase1(t[0], t[1], t[2], KEEP_DTYPE, ws, exec) })
    })?;
    let mut w = workspace(stream, p.ws)?;
    let mut l = stream.device_launch();
    l.read(a)?;
    l.read(b)?;
    l.write(c)?;
    finish(l, w.as_mut(), &p, names.1, phase2)
}

/// aclnn objects created for one call, destroyed when it returns (the executor keeps what it needs
/// after phase 1). Tensors handed to a tensor list are owned by the list, as in CANN.
pub(crate) struct Tensors {
    api: &'static AscendApi,
    tensors: Vec<*mut aclTensor>,
    lists: Vec<*mut aclTensorList>,
    arrays: Vec<*mut aclIntArray>,
}

impl Tensors {
    pub(crate) fn new(api: &'static AscendApi) -> Result<Tensors> {
        for (f, name) in
            [(api.aclCreateTensor.is_some(), "aclCreateTensor"), (api.aclDestroyTensor.is_some(), "aclDestroyTensor")]
        {
            if !f {
                return Err(Error::MissingSymbol(name));
            }
        }
        Ok(Tensors { api, tensors: Vec::new(), lists: Vec::new(), arrays: Vec::new() })
    }

    /// A tensor for `d` over device memory at `data`.
    pub(crate) fn tensor(&mut self, d: &TensorDesc, data: *mut c_void) -> Result<*mut aclTensor> {
        let create = self.api.aclCreateTensor.ok_or(Error::MissingSymbol("aclCreateTensor"))?;
        // SAFETY: the descriptor's arrays live for the call; `data` is device memory that the
        // caller sized for the descriptor.
        let t = unsafe {
            create(
                d.dims.as_ptr(),
                d.dims.len() as u64,
                d.dtype,
                d.strides.as_ptr(),
                d.offset,
                d.format,
                d.storage.as_ptr(),
                d.storage.len() as u64,
                data,
            )
        };
        if t.is_null() {
            return Err(Error::Unsupported(format!("aclCreateTensor refused the descriptor {d:?}")));
        }
        self.tensors.push(t);
        Ok(t)
    }

    /// A list owning one new tensor for `d` over `data`.
    pub(crate) fn list(&mut self, d: &TensorDesc, data: *mut c_void) -> Result<*mut aclTensorList> {
        let create = self.api.aclCreateTensorList.ok_or(Error::MissingSymbol("aclCreateTensorList"))?;
        self.api.aclDestroyTensorList.ok_or(Error::MissingSymbol("aclDestroyTensorList"))?;
        let t = self.tensor(d, data)?;
        // SAFETY: one live tensor pointer.
        let l = unsafe { create([t as *const aclTensor].as_ptr(), 1) };
        if l.is_null() {
            return Err(Error::Unsupported("aclCreateTensorList refused a tensor".into()));
        }
        self.tensors.pop();
        self.lists.push(l);
        Ok(l)
    }

    /// Tensors for `descs` over `ptrs`, in order.
    pub(crate) fn all(&mut self, descs: &[TensorDesc], ptrs: &[*mut c_void]) -> Result<Vec<*mut aclTensor>> {
        descs.iter().zip(ptrs).map(|(d, &p)| self.tensor(d, p)).collect()
    }

    /// An integer array (host values, copied by aclnn).
    pub(crate) fn ints(&mut self, v: &[i64]) -> Result<*mut aclIntArray> {
        let create = self.api.aclCreateIntArray.ok_or(Error::MissingSymbol("aclCreateIntArray"))?;
        self.api.aclDestroyIntArray.ok_or(Error::MissingSymbol("aclDestroyIntArray"))?;
        // SAFETY: `v` holds `v.len()` values for the call.
        let a = unsafe { create(v.as_ptr(), v.len() as u64) };
        if a.is_null() {
            return Err(Error::Unsupported(format!("aclCreateIntArray refused {} values", v.len())));
        }
        self.arrays.push(a);
        Ok(a)
    }
}

impl Drop for Tensors {
    fn drop(&mut self) {
        // SAFETY: each object was created above and is destroyed once; presence of the destroy
        // functions was checked when the first object of its kind was made.
        unsafe {
            if let Some(f) = self.api.aclDestroyTensor {
                self.tensors.iter().for_each(|&t| {
                    f(t);
                });
            }
            if let Some(f) = self.api.aclDestroyTensorList {
                self.lists.iter().for_each(|&l| {
                    f(l);
                });
            }
            if let Some(f) = self.api.aclDestroyIntArray {
                self.arrays.iter().for_each(|&a| {
                    f(a);
                });
            }
        }
    }
}

/// An aclnn status as a result.
pub(crate) fn status(call: &'static str, code: i32) -> Result<()> {
    match code {
        0 => Ok(()),
        code => {
            Err(Error::Acl { call, code, message: ascend_sys::aclnn_status_name(code).unwrap_or("aclnn error").into() })
        }
    }
}

/// Enqueues the copy of `src` into `dst` without waiting for the stream (a synchronous copy would
/// wait for all the work queued before it): staged in pinned memory, whose release the stream orders
/// after the copy. Called once phase 1 has accepted the operator, which only needed `dst`'s address,
/// so that a refused call enqueues nothing.
pub(crate) fn upload<T: ascend_rt::DeviceRepr>(
    stream: &Arc<Stream>,
    src: &[T],
    dst: &mut DeviceBuffer<T>,
) -> Result<()> {
    let staged = ascend_rt::PinnedHostBuffer::from_slice(stream.context(), src)?;
    stream.memcpy_htod_async(&staged, dst)
}

/// Runs `f` on another thread while `stream` is held by a host task, and returns its result: the
/// proof (in tests) that `f` does not wait for the work queued before it. Panics after 20 s.
#[cfg(test)]
pub(crate) fn returns_while_held<R: Send + 'static>(stream: &Arc<Stream>, f: impl FnOnce() -> R + Send + 'static) -> R {
    use std::sync::mpsc::channel;
    use std::time::Duration;
    let (open, gate) = channel::<()>();
    stream
        .launch_host(move || {
            let _ = gate.recv_timeout(Duration::from_secs(60));
        })
        .unwrap();
    let (done, returned) = channel();
    std::thread::spawn(move || done.send(f()).unwrap());
    let got = returned.recv_timeout(Duration::from_secs(20));
    open.send(()).unwrap();
    got.expect("it waited for the work queued before it")
}

/// The operator's workspace, taken from the stream (its release is ordered after the operator).
pub(crate) fn workspace(stream: &Arc<Stream>, bytes: u64) -> Result<Option<DeviceBuffer<u8>>> {
    (bytes > 0).then(|| stream.alloc::<u8>(bytes as usize)).transpose()
}

/// Phase 2 of an aclnn operator: (workspace, its size, executor, stream).
pub(crate) type Phase2 = unsafe extern "C" fn(
    *mut c_void,
    u64,
    *mut ascend_sys::aclOpExecutor,
    ascend_sys::aclrtStream,
) -> ascend_sys::aclnnStatus;

/// Phase 1 done: the objects to keep alive until the launch, the workspace size and the executor.
pub(crate) struct Prepared {
    _objects: Tensors,
    /// Workspace bytes the operator asked for.
    pub(crate) ws: u64,
    exec: *mut ascend_sys::aclOpExecutor,
}

/// Phase 1 of an aclnn operator: `phase1(objects, &mut ws, &mut exec)` creates its tensors in
/// `objects` and calls `…GetWorkspaceSize`, returning its status (checked here under `name`).
pub(crate) fn prepare(
    stream: &Arc<Stream>,
    name: &'static str,
    phase1: impl FnOnce(&mut Tensors, &mut u64, &mut *mut ascend_sys::aclOpExecutor) -> Result<i32>,
) -> Result<Prepared> {
    let mut objects = Tensors::new(stream.context().runtime().api())?;
    let (mut ws, mut exec) = (0u64, std::ptr::null_mut());
    status(name, phase1(&mut objects, &mut ws, &mut exec)?)?;
    Ok(Prepared { _objects: objects, ws, exec })
}

/// Phase 2: declares the workspace to the launch (whose other buffers the caller declared) and
/// enqueues the operator.
pub(crate) fn finish<'a>(
    mut l: ascend_rt::DeviceLaunch<'a>,
    w: Option<&'a mut DeviceBuffer<u8>>,
    p: &Prepared,
    name: &'static str,
    phase2: Option<Phase2>,
) -> Result<()> {
    let phase2 = phase2.ok_or(Error::MissingSymbol(name))?;
    let (ws, exec) = (p.ws, p.exec);
    let wptr = match w {
        Some(w) => l.write(w)?,
        None => std::ptr::null_mut::<c_void>(),
    };
    // SAFETY: the caller declared every buffer its operator touches; the workspace is declared here.
    unsafe { l.launch(|raw| status(name, phase2(wptr, ws, exec, raw))) }
}
