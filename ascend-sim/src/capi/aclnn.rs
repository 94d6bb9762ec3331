//! aclnn objects and operators. Tensor and int-array descriptors are real objects (so descriptor code
//! can be exercised anywhere); the operators themselves exist only on an NPU, and report
//! `ACLNN_ERR_INNER_FIND_KERNEL_ERROR` here (the host path runs kernels on simulator streams instead).

use crate::fail::{entry_with, fail, set_recent};
use crate::runtime::Registry;
use ascend_sys::*;
use std::ffi::{c_char, c_void};
use std::sync::{Arc, OnceLock};

/// An object behind an aclnn handle of this library.
enum Object {
    Tensor(TensorDesc),
    IntArray(Vec<i64>),
    /// Checked when made; no operator runs here to read its value.
    Scalar,
    /// The handles of its tensors (which it owns, as in CANN).
    TensorList(Vec<usize>),
}

impl Object {
    fn kind(&self) -> &'static str {
        match self {
            Object::Tensor(_) => "a tensor",
            Object::IntArray(_) => "an int array",
            Object::Scalar => "a scalar",
            Object::TensorList(_) => "a tensor list",
        }
    }
}

/// Every live object by handle. Handles are numbers never given twice, not the objects' addresses
/// (which the allocator reuses): destroying one twice, or as another kind, or using a list whose
/// tensor was destroyed, is an error here however memory is reused (undefined in CANN; the
/// simulator is stricter).
fn objects() -> &'static Registry<Object> {
    static OBJECTS: OnceLock<Registry<Object>> = OnceLock::new();
    OBJECTS.get_or_init(|| Registry::new(0xA7, "aclnn object"))
}

/// Hands out `object` under a new handle.
fn handle<H>(object: Object) -> *mut H {
    let h = objects().fresh();
    objects().insert(h, Arc::new(object));
    h as *mut H
}

/// The live object of handle `p`, if any.
fn object(p: *const c_void) -> Option<Arc<Object>> {
    objects().get(p as usize).ok()
}

/// Takes back the object of handle `p` for destruction if it is `kind` ([`Object::kind`]); None
/// (with the reason recorded) if it is not a live one of that kind.
fn retire(p: *const c_void, kind: &str, what: &str) -> Option<Arc<Object>> {
    match object(p).as_deref().map(Object::kind) {
        Some(k) if k == kind => objects().remove(p as usize).ok(),
        other => {
            let why = other.map_or("not a live handle (destroyed already?)".to_string(), str::to_string);
            set_recent(&format!("{what}: {p:?} is {why}"));
            None
        }
    }
}

/// What `aclCreateTensor` was given; `aclTensor` handles point to one of these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorDesc {
    /// View shape, outermost first.
    pub view_dims: Vec<i64>,
    /// Element type.
    pub dtype: aclDataType,
    /// Strides in elements.
    pub strides: Vec<i64>,
    /// Offset in elements.
    pub offset: i64,
    /// Storage format.
    pub format: aclFormat,
    /// Storage shape.
    pub storage_dims: Vec<i64>,
    /// Device address of the data.
    pub data: usize,
}

/// Most dims (and strides) of a tensor.
const MAX_DIMS: u64 = 64;
/// Most values of an int array (one per sequence of a batch, say): a sanity bound, not CANN's.
const MAX_INT_ARRAY: u64 = 1 << 24;

/// Reads `n` (at most `max`) int64 values.
///
/// # Safety
/// A non-null `p` must point to `n` readable values.
unsafe fn read_i64s(p: *const i64, n: u64, max: u64) -> Option<Vec<i64>> {
    if n > max || (p.is_null() && n > 0) {
        return None;
    }
    // SAFETY: non-null with `n` readable values by the caller's contract (n == 0 reads nothing).
    Some(if n == 0 { Vec::new() } else { unsafe { std::slice::from_raw_parts(p, n as usize) }.to_vec() })
}

/// Records the tensor's descriptor under a new handle and returns it; NULL, with a message for
/// `aclGetRecentErrMsg`, for a NULL array with a non-zero count, over 64 dims, or a negative dim (view or
/// storage), stride or offset. `dataType`, `format` and `tensorData` are not checked.
#[no_mangle]
pub unsafe extern "C" fn aclCreateTensor(
    viewDims: *const i64,
    viewDimsNum: u64,
    dataType: aclDataType,
    stride: *const i64,
    offset: i64,
    format: aclFormat,
    storageDims: *const i64,
    storageDimsNum: u64,
    tensorData: *mut c_void,
) -> *mut aclTensor {
    // SAFETY: the pointers carry their counts by the API contract.
    let parts = unsafe {
        (
            read_i64s(viewDims, viewDimsNum, MAX_DIMS),
            read_i64s(stride, viewDimsNum, MAX_DIMS),
            read_i64s(storageDims, storageDimsNum, MAX_DIMS),
        )
    };
    let (Some(view_dims), Some(strides), Some(storage_dims)) = parts else {
        set_recent("aclCreateTensor: a dims or strides pointer is NULL, or more than 64 dims");
        return std::ptr::null_mut();
    };
    let negative = |v: &[i64]| v.iter().any(|&x| x < 0);
    if offset < 0 || negative(&strides) || negative(&view_dims) || negative(&storage_dims) {
        set_recent("aclCreateTensor: negative dim, stride or offset");
        return std::ptr::null_mut();
    }
    let desc =
        TensorDesc { view_dims, dtype: dataType, strides, offset, format, storage_dims, data: tensorData as usize };
    handle(Object::Tensor(desc))
}

/// The descriptor behind an `aclTensor` made by this simulator's `aclCreateTensor`. Panics for a
/// handle that is not a live tensor.
///
/// # Safety
/// `t` stays live (is not destroyed) while the reference is used.
pub unsafe fn tensor_desc<'a>(t: *const aclTensor) -> &'a TensorDesc {
    let p = match object(t.cast()).as_deref() {
        Some(Object::Tensor(d)) => d as *const TensorDesc,
        _ => panic!("{t:?} is not a live aclTensor of the simulator"),
    };
    // SAFETY: the registry holds the object (shared, at a stable address) until the handle is
    // destroyed (contract).
    unsafe { &*p }
}

/// Destroys a tensor handle. Returns `ACLNN_ERR_PARAM_NULLPTR` for NULL and `ACLNN_ERR_PARAM_INVALID` for
/// anything but a live tensor (destroyed already, or another kind of object).
#[no_mangle]
pub unsafe extern "C" fn aclDestroyTensor(tensor: *const aclTensor) -> aclnnStatus {
    if tensor.is_null() {
        set_recent("aclDestroyTensor: tensor is NULL");
        return ACLNN_ERR_PARAM_NULLPTR;
    }
    match retire(tensor.cast(), "a tensor", "aclDestroyTensor") {
        Some(_) => ACLNN_SUCCESS,
        None => ACLNN_ERR_PARAM_INVALID,
    }
}

/// Copies `size` values into a new int array and returns its handle; NULL, with a message for
/// `aclGetRecentErrMsg`, for a NULL `value` with a non-zero `size` or more than 2^24 values.
#[no_mangle]
pub unsafe extern "C" fn aclCreateIntArray(value: *const i64, size: u64) -> *mut aclIntArray {
    // SAFETY: `value` holds `size` values by the API contract.
    match unsafe { read_i64s(value, size, MAX_INT_ARRAY) } {
        Some(v) => handle(Object::IntArray(v)),
        None => {
            set_recent("aclCreateIntArray: value is NULL, or more than 2^24 values");
            std::ptr::null_mut()
        }
    }
}

/// The values behind an `aclIntArray` made by this simulator. Panics for a handle that is not a
/// live int array.
///
/// # Safety
/// `a` stays live (is not destroyed) while the slice is used.
pub unsafe fn int_array<'a>(a: *const aclIntArray) -> &'a [i64] {
    let p = match object(a.cast()).as_deref() {
        Some(Object::IntArray(v)) => v.as_slice() as *const [i64],
        _ => panic!("{a:?} is not a live aclIntArray of the simulator"),
    };
    // SAFETY: the registry holds the values until the handle is destroyed (contract).
    unsafe { &*p }
}

/// Destroys an int array handle. Returns `ACLNN_ERR_PARAM_NULLPTR` for NULL and `ACLNN_ERR_PARAM_INVALID` for
/// anything but a live int array.
#[no_mangle]
pub unsafe extern "C" fn aclDestroyIntArray(array: *const aclIntArray) -> aclnnStatus {
    if array.is_null() {
        set_recent("aclDestroyIntArray: array is NULL");
        return ACLNN_ERR_PARAM_NULLPTR;
    }
    match retire(array.cast(), "an int array", "aclDestroyIntArray") {
        Some(_) => ACLNN_SUCCESS,
        None => ACLNN_ERR_PARAM_INVALID,
    }
}

/// Returns a new scalar handle; NULL, with a message for `aclGetRecentErrMsg`, if `value` is NULL or
/// `dataType` is not bool, an 8- to 64-bit integer, fp16, bf16, float or double. The value is neither read
/// nor kept.
#[no_mangle]
pub unsafe extern "C" fn aclCreateScalar(value: *mut c_void, dataType: aclDataType) -> *mut aclScalar {
    let typed = matches!(
        dataType,
        ACL_FLOAT
            | ACL_INT32
            | ACL_UINT32
            | ACL_FLOAT16
            | ACL_BF16
            | ACL_INT16
            | ACL_UINT16
            | ACL_INT8
            | ACL_UINT8
            | ACL_BOOL
            | ACL_DOUBLE
            | ACL_INT64
            | ACL_UINT64
    );
    if value.is_null() || !typed {
        set_recent("aclCreateScalar: value is NULL or the data type has no scalar form");
        return std::ptr::null_mut();
    }
    handle(Object::Scalar)
}

/// Destroys a scalar handle. Returns `ACLNN_ERR_PARAM_NULLPTR` for NULL and `ACLNN_ERR_PARAM_INVALID` for
/// anything but a live scalar.
#[no_mangle]
pub unsafe extern "C" fn aclDestroyScalar(scalar: *const aclScalar) -> aclnnStatus {
    if scalar.is_null() {
        set_recent("aclDestroyScalar: scalar is NULL");
        return ACLNN_ERR_PARAM_NULLPTR;
    }
    match retire(scalar.cast(), "a scalar", "aclDestroyScalar") {
        Some(_) => ACLNN_SUCCESS,
        None => ACLNN_ERR_PARAM_INVALID,
    }
}

/// Makes a list of the `size` tensors at `value` and returns its handle; the list owns them. Returns NULL,
/// with a message for `aclGetRecentErrMsg`, for a NULL `value`, a `size` outside 1..=1024, or an entry that
/// is not a live tensor.
#[no_mangle]
pub unsafe extern "C" fn aclCreateTensorList(value: *const *const aclTensor, size: u64) -> *mut aclTensorList {
    if value.is_null() || size == 0 || size > 1024 {
        set_recent("aclCreateTensorList: value is NULL, or the size is not 1..=1024");
        return std::ptr::null_mut();
    }
    // SAFETY: `value` holds `size` tensor pointers by the API contract.
    let tensors: Vec<usize> =
        unsafe { std::slice::from_raw_parts(value, size as usize) }.iter().map(|&t| t as usize).collect();
    if tensors.iter().any(|&t| !matches!(object(t as *const c_void).as_deref(), Some(Object::Tensor(_)))) {
        set_recent("aclCreateTensorList: an entry is not a live tensor");
        return std::ptr::null_mut();
    }
    handle(Object::TensorList(tensors))
}

/// Destroys a tensor list and each of its tensors. Returns `ACLNN_ERR_PARAM_NULLPTR` for NULL, and
/// `ACLNN_ERR_PARAM_INVALID` for anything but a live list, or if one of its tensors was destroyed already
/// (the others are still destroyed).
#[no_mangle]
pub unsafe extern "C" fn aclDestroyTensorList(array: *const aclTensorList) -> aclnnStatus {
    if array.is_null() {
        set_recent("aclDestroyTensorList: array is NULL");
        return ACLNN_ERR_PARAM_NULLPTR;
    }
    let Some(list) = retire(array.cast(), "a tensor list", "aclDestroyTensorList") else {
        return ACLNN_ERR_PARAM_INVALID;
    };
    let Object::TensorList(tensors) = &*list else { unreachable!("retired as a tensor list") };
    // As in CANN the list owns its tensors: each is destroyed unless it was destroyed on its own
    // already (refused, as a handle is never given twice).
    let mut status = ACLNN_SUCCESS;
    for &t in tensors {
        if retire(t as *const c_void, "a tensor", "aclDestroyTensorList").is_none() {
            status = ACLNN_ERR_PARAM_INVALID;
        }
    }
    status
}

fn no_npu(name: &str) -> aclnnStatus {
    entry_with(name, ACLNN_ERR_INNER, || {
        fail(ACLNN_ERR_INNER_FIND_KERNEL_ERROR, "aclnn operators need an NPU; the simulator runs host kernels instead")
    })
}

macro_rules! npu_only {
    ($($name:ident($($arg:ident: $ty:ty),* $(,)?);)*) => {$(
        /// An aclnn operator, which needs an NPU: ignores its arguments and returns
        /// `ACLNN_ERR_INNER_FIND_KERNEL_ERROR`, with a message for `aclGetRecentErrMsg`.
        #[no_mangle]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> aclnnStatus {
            $(let _ = $arg;)*
            no_npu(stringify!($name))
        }
    )*};
}

npu_only! {
    aclnnMmGetWorkspaceSize(self_: *const aclTensor, mat2: *const aclTensor, out: *mut aclTensor, cubeMathType: i8, workspaceSize: *mut u64, executor: *mut *mut aclOpExecutor);
    aclnnMm(workspace: *mut c_void, workspaceSize: u64, executor: *mut aclOpExecutor, stream: aclrtStream);
    aclnnBatchMatMulGetWorkspaceSize(self_: *const aclTensor, mat2: *const aclTensor, out: *mut aclTensor, cubeMathType: i8, workspaceSize: *mut u64, executor: *mut *mut aclOpExecutor);
    aclnnBatchMatMul(workspace: *mut c_void, workspaceSize: u64, executor: *mut aclOpExecutor, stream: aclrtStream);
    aclnnFusedInferAttentionScoreV2GetWorkspaceSize(
        query: *const aclTensor, key: *const aclTensorList, value: *const aclTensorList, pseShift: *const aclTensor,
        attenMask: *const aclTensor, actualSeqLengths: *const aclIntArray, actualSeqLengthsKv: *const aclIntArray,
        deqScale1: *const aclTensor, quantScale1: *const aclTensor, deqScale2: *const aclTensor, quantScale2: *const aclTensor,
        quantOffset2: *const aclTensor, antiquantScale: *const aclTensor, antiquantOffset: *const aclTensor,
        blockTable: *const aclTensor, queryPaddingSize: *const aclTensor, kvPaddingSize: *const aclTensor,
        keyAntiquantScale: *const aclTensor, keyAntiquantOffset: *const aclTensor, valueAntiquantScale: *const aclTensor,
        valueAntiquantOffset: *const aclTensor, keySharedPrefix: *const aclTensor, valueSharedPrefix: *const aclTensor,
        actualSharedPrefixLen: *const aclIntArray, numHeads: i64, scaleValue: f64, preTokens: i64, nextTokens: i64,
        inputLayout: *mut c_char, numKeyValueHeads: i64, sparseMode: i64, innerPrecise: i64, blockSize: i64,
        antiquantMode: i64, softmaxLseFlag: bool, keyAntiquantMode: i64, valueAntiquantMode: i64,
        attentionOut: *const aclTensor, softmaxLse: *const aclTensor, workspaceSize: *mut u64, executor: *mut *mut aclOpExecutor);
    aclnnFusedInferAttentionScoreV2(workspace: *mut c_void, workspaceSize: u64, executor: *mut aclOpExecutor, stream: aclrtStream);
    aclnnScatterPaKvCacheGetWorkspaceSize(
        key: *const aclTensor, keyCacheRef: *mut aclTensor, slotMapping: *const aclTensor, value: *const aclTensor,
        valueCacheRef: *mut aclTensor, compressLensOptional: *const aclTensor, compressSeqOffsetOptional: *const aclTensor,
        seqLensOptional: *const aclTensor, cacheModeOptional: *mut c_char, scatterModeOptional: *mut c_char,
        stridesOptional: *const aclIntArray, offsetsOptional: *const aclIntArray, workspaceSize: *mut u64,
        executor: *mut *mut aclOpExecutor);
    aclnnScatterPaKvCache(workspace: *mut c_void, workspaceSize: u64, executor: *mut aclOpExecutor, stream: aclrtStream);
    aclnnRmsNormGetWorkspaceSize(
        x: *const aclTensor, gamma: *const aclTensor, epsilon: f64, yOut: *const aclTensor, rstdOut: *const aclTensor,
        workspaceSize: *mut u64, executor: *mut *mut aclOpExecutor,
    );
    aclnnRmsNorm(workspace: *mut c_void, workspaceSize: u64, executor: *mut aclOpExecutor, stream: aclrtStream);
    aclnnRotaryPositionEmbeddingGetWorkspaceSize(
        x: *const aclTensor, cos: *const aclTensor, sin: *const aclTensor, mode: i64, out: *mut aclTensor,
        workspaceSize: *mut u64, executor: *mut *mut aclOpExecutor,
    );
    aclnnRotaryPositionEmbedding(workspace: *mut c_void, workspaceSize: u64, executor: *mut aclOpExecutor, stream: aclrtStream);
    aclnnSwiGluGetWorkspaceSize(
        x: *const aclTensor, dim: i64, out: *const aclTensor, workspaceSize: *mut u64, executor: *mut *mut aclOpExecutor,
    );
    aclnnSwiGlu(workspace: *mut c_void, workspaceSize: u64, executor: *mut aclOpExecutor, stream: aclrtStream);
    aclnnInplaceAddGetWorkspaceSize(
        selfRef: *mut aclTensor, other: *const aclTensor, alpha: *const aclScalar, workspaceSize: *mut u64,
        executor: *mut *mut aclOpExecutor,
    );
    aclnnInplaceAdd(workspace: *mut c_void, workspaceSize: u64, executor: *mut aclOpExecutor, stream: aclrtStream);
    aclnnEmbeddingGetWorkspaceSize(
        weight: *const aclTensor, indices: *const aclTensor, out: *const aclTensor, workspaceSize: *mut u64,
        executor: *mut *mut aclOpExecutor,
    );
    aclnnEmbedding(workspace: *mut c_void, workspaceSize: u64, executor: *mut aclOpExecutor, stream: aclrtStream);
    aclnnArgMaxGetWorkspaceSize(
        self_: *const aclTensor, dim: i64, keepdim: bool, out: *mut aclTensor, workspaceSize: *mut u64,
        executor: *mut *mut aclOpExecutor,
    );
    aclnnArgMax(workspace: *mut c_void, workspaceSize: u64, executor: *mut aclOpExecutor, stream: aclrtStream);
}
