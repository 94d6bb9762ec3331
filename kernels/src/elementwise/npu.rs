//! The NPU path of the elementwise kernels: one aclnn operator each, through the two-phase API with
//! stream-ordered workspaces; host index data (token ids, rotary tables) are uploaded first. The
//! descriptor functions are what each call hands to `aclCreateTensor`, public so tests can check
//! them everywhere. Layouts follow the operator documentation; the rotary operator takes
//! `[1, tokens, heads, head_dim]` with `[1, tokens, 1, head_dim]` cos/sin tables (mode 0 = halves).

use crate::matmul::Element;
use crate::npu::{finish, prepare, upload, workspace, TensorDesc};
use ascend_rt::{DeviceBuffer, Error, Result, Stream};
use ascend_sys::{aclDataType, ACL_FLOAT, ACL_INT32, ACL_INT64};
use std::ffi::c_void;
use std::sync::Arc;

/// aclnnRmsNorm: x `[rows, dim]`, gamma `[dim]`, y like x, rstd `[rows, 1]` f32.
pub fn rms_norm_descs(rows: usize, dim: usize, dtype: aclDataType) -> [TensorDesc; 4] {
    let (r, d) = (rows as i64, dim as i64);
    let x = TensorDesc::contiguous(&[r, d], dtype);
    [x.clone(), TensorDesc::contiguous(&[d], dtype), x, TensorDesc::contiguous(&[r, 1], ACL_FLOAT)]
}

/// aclnnRotaryPositionEmbedding: x and out `[1, tokens, heads, head_dim]`, cos and sin
/// `[1, tokens, 1, head_dim]`.
pub fn rotary_descs(tokens: usize, heads: usize, head_dim: usize, dtype: aclDataType) -> [TensorDesc; 4] {
    let (t, h, d) = (tokens as i64, heads as i64, head_dim as i64);
    let x = TensorDesc::contiguous(&[1, t, h, d], dtype);
    let table = TensorDesc::contiguous(&[1, t, 1, d], dtype);
    [x.clone(), table.clone(), table, x]
}

/// aclnnSwiGlu along the last dimension: x `[tokens, 2·inter]`, out `[tokens, inter]`.
pub fn swiglu_descs(tokens: usize, inter: usize, dtype: aclDataType) -> [TensorDesc; 2] {
    let (t, i) = (tokens as i64, inter as i64);
    [TensorDesc::contiguous(&[t, 2 * i], dtype), TensorDesc::contiguous(&[t, i], dtype)]
}

/// aclnnEmbedding: weight `[vocab, dim]`, indices `[tokens]` i32, out `[tokens, dim]`.
pub fn embedding_descs(vocab: usize, dim: usize, tokens: usize, dtype: aclDataType) -> [TensorDesc; 3] {
    let (v, d, t) = (vocab as i64, dim as i64, tokens as i64);
    [
        TensorDesc::contiguous(&[v, d], dtype),
        TensorDesc::contiguous(&[t], ACL_INT32),
        TensorDesc::contiguous(&[t, d], dtype),
    ]
}

/// aclnnArgMax over the last dimension without keepdim: self `[rows, width]`, out `[rows]` i64.
pub fn argmax_descs(rows: usize, width: usize, dtype: aclDataType) -> [TensorDesc; 2] {
    [TensorDesc::contiguous(&[rows as i64, width as i64], dtype), TensorDesc::contiguous(&[rows as i64], ACL_INT64)]
}

/// RMSNorm on an NPU stream (rstd goes to a scratch buffer).
pub(crate) fn rms_norm<T: Element>(
    stream: &Arc<Stream>,
    x: &DeviceBuffer<T>,
    weight: &DeviceBuffer<T>,
    eps: f32,
    out: &mut DeviceBuffer<T>,
) -> Result<()> {
    let dim = weight.len();
    let rows = x.len() / dim;
    let mut rstd = stream.alloc::<f32>(rows)?;
    let api = stream.context().runtime().api();
    let f = api.aclnnRmsNormGetWorkspaceSize.ok_or(Error::MissingSymbol("aclnnRmsNormGetWorkspaceSize"))?;
    let descs = rms_norm_descs(rows, dim, T::ACL_DTYPE);
    let p = prepare(stream, "aclnnRmsNormGetWorkspaceSize", |objects, ws, ex| {
        let t = objects.all(&descs, &[x.raw(), weight.raw(), out.raw(), rstd.raw()])?;
        // SAFETY: valid tensors and out-pointers; phase 1 only inspects them.
        Ok(unsafe { f(t[0], t[1], eps as f64, t[2], t[3], ws, ex) })
    })?;
    let mut w = workspace(stream, p.ws)?;
    let mut l = stream.device_launch();
    l.read(x)?;
    l.read(weight)?;
    l.write(out)?;
    l.write(&mut rstd)?;
    finish(l, w.as_mut(), &p, "aclnnRmsNorm", api.aclnnRmsNorm)
}

/// Rotary embeddings on an NPU stream: cos/sin tables for the positions are built on the host and
/// uploaded.
pub(crate) fn rotary<T: Element>(
    stream: &Arc<Stream>,
    x: &mut DeviceBuffer<T>,
    positions: &[i32],
    head_dim: usize,
    theta: f32,
) -> Result<()> {
    let tokens = positions.len();
    let heads = x.len() / (tokens * head_dim);
    let freq = super::inv_freq(head_dim, theta);
    let (mut cos, mut sin) = (Vec::with_capacity(tokens * head_dim), Vec::with_capacity(tokens * head_dim));
    for &p in positions {
        // Both halves of a head use the same frequencies (NeoX layout).
        for f in freq.iter().chain(&freq) {
            let a = p as f64 * f;
            cos.push(T::from_f32(a.cos() as f32));
            sin.push(T::from_f32(a.sin() as f32));
        }
    }
    let (cos_host, sin_host) = (cos, sin);
    let (mut cos, mut sin) = (stream.alloc::<T>(cos_host.len())?, stream.alloc::<T>(sin_host.len())?);
    let api = stream.context().runtime().api();
    let f = api
        .aclnnRotaryPositionEmbeddingGetWorkspaceSize
        .ok_or(Error::MissingSymbol("aclnnRotaryPositionEmbeddingGetWorkspaceSize"))?;
    let descs = rotary_descs(tokens, heads, head_dim, T::ACL_DTYPE);
    let xp = x.raw();
    let p = prepare(stream, "aclnnRotaryPositionEmbeddingGetWorkspaceSize", |objects, ws, ex| {
        let t = objects.all(&descs, &[xp, cos.raw(), sin.raw(), xp])?;
        // SAFETY: valid tensors and out-pointers; phase 1 only inspects them.
        Ok(unsafe { f(t[0], t[1], t[2], 0, t[3], ws, ex) })
    })?;
    upload(stream, &cos_host, &mut cos)?;
    upload(stream, &sin_host, &mut sin)?;
    let mut w = workspace(stream, p.ws)?;
    let mut l = stream.device_launch();
    l.read(&cos)?;
    l.read(&sin)?;
    l.write(x)?;
    finish(l, w.as_mut(), &p, "aclnnRotaryPositionEmbedding", api.aclnnRotaryPositionEmbedding)
}

/// SwiGLU on an NPU stream.
pub(crate) fn silu_mul<T: Element>(
    stream: &Arc<Stream>,
    gate_up: &DeviceBuffer<T>,
    inter: usize,
    out: &mut DeviceBuffer<T>,
) -> Result<()> {
    let api = stream.context().runtime().api();
    let f = api.aclnnSwiGluGetWorkspaceSize.ok_or(Error::MissingSymbol("aclnnSwiGluGetWorkspaceSize"))?;
    let descs = swiglu_descs(out.len() / inter, inter, T::ACL_DTYPE);
    let p = prepare(stream, "aclnnSwiGluGetWorkspaceSize", |objects, ws, ex| {
        let t = objects.all(&descs, &[gate_up.raw(), out.raw()])?;
        // SAFETY: valid tensors and out-pointers; phase 1 only inspects them.
        Ok(unsafe { f(t[0], -1, t[1], ws, ex) })
    })?;
    let mut w = workspace(stream, p.ws)?;
    let mut l = stream.device_launch();
    l.read(gate_up)?;
    l.write(out)?;
    finish(l, w.as_mut(), &p, "aclnnSwiGlu", api.aclnnSwiGlu)
}

/// `x += y` on an NPU stream.
pub(crate) fn add_assign<T: Element>(stream: &Arc<Stream>, x: &mut DeviceBuffer<T>, y: &DeviceBuffer<T>) -> Result<()> {
    let api = stream.context().runtime().api();
    let f = api.aclnnInplaceAddGetWorkspaceSize.ok_or(Error::MissingSymbol("aclnnInplaceAddGetWorkspaceSize"))?;
    let create = api.aclCreateScalar.ok_or(Error::MissingSymbol("aclCreateScalar"))?;
    let destroy = api.aclDestroyScalar.ok_or(Error::MissingSymbol("aclDestroyScalar"))?;
    let d = TensorDesc::contiguous(&[x.len() as i64], T::ACL_DTYPE);
    let p = prepare(stream, "aclnnInplaceAddGetWorkspaceSize", |objects, ws, ex| {
        let t = objects.all(&[d.clone(), d], &[x.raw(), y.raw()])?;
        let mut one = 1.0f32;
        // SAFETY: `one` is an f32 for the call; the scalar is destroyed after phase 1, which
        // copies what it needs into the executor.
        let alpha = unsafe { create(&mut one as *mut f32 as *mut c_void, ACL_FLOAT) };
        if alpha.is_null() {
            return Err(Error::Unsupported("aclCreateScalar refused 1.0f".into()));
        }
        // SAFETY: valid tensors, scalar and out-pointers.
        let code = unsafe { f(t[0], t[1], alpha, ws, ex) };
        // SAFETY: created above, destroyed once.
        unsafe { destroy(alpha) };
        Ok(code)
    })?;
    let mut w = workspace(stream, p.ws)?;
    let mut l = stream.device_launch();
    l.read(y)?;
    l.write(x)?;
    finish(l, w.as_mut(), &p, "aclnnInplaceAdd", api.aclnnInplaceAdd)
}

/// Embedding lookup on an NPU stream (ids uploaded without waiting, after phase 1).
pub(crate) fn embedding<T: Element>(
    stream: &Arc<Stream>,
    table: &DeviceBuffer<T>,
    dim: usize,
    ids: &[i32],
    out: &mut DeviceBuffer<T>,
) -> Result<()> {
    let mut idx = stream.alloc::<i32>(ids.len())?;
    let api = stream.context().runtime().api();
    let f = api.aclnnEmbeddingGetWorkspaceSize.ok_or(Error::MissingSymbol("aclnnEmbeddingGetWorkspaceSize"))?;
    let descs = embedding_descs(table.len() / dim, dim, ids.len(), T::ACL_DTYPE);
    let p = prepare(stream, "aclnnEmbeddingGetWorkspaceSize", |objects, ws, ex| {
        let t = objects.all(&descs, &[table.raw(), idx.raw(), out.raw()])?;
        // SAFETY: valid tensors and out-pointers; phase 1 only inspects them.
        Ok(unsafe { f(t[0], t[1], t[2], ws, ex) })
    })?;
    upload(stream, ids, &mut idx)?;
    let mut w = workspace(stream, p.ws)?;
    let mut l = stream.device_launch();
    l.read(table)?;
    l.read(&idx)?;
    l.write(out)?;
    finish(l, w.as_mut(), &p, "aclnnEmbedding", api.aclnnEmbedding)
}

/// Argmax over rows on an NPU stream.
pub(crate) fn argmax<T: Element>(
    stream: &Arc<Stream>,
    x: &DeviceBuffer<T>,
    width: usize,
    out: &mut DeviceBuffer<i64>,
) -> Result<()> {
    let api = stream.context().runtime().api();
    let f = api.aclnnArgMaxGetWorkspaceSize.ok_or(Error::MissingSymbol("aclnnArgMaxGetWorkspaceSize"))?;
    let descs = argmax_descs(x.len() / width, width, T::ACL_DTYPE);
    let p = prepare(stream, "aclnnArgMaxGetWorkspaceSize", |objects, ws, ex| {
        let t = objects.all(&descs, &[x.raw(), out.raw()])?;
        // SAFETY: valid tensors and out-pointers; phase 1 only inspects them.
        Ok(unsafe { f(t[0], -1, false, t[1], ws, ex) })
    })?;
    let mut w = workspace(stream, p.ws)?;
    let mut l = stream.device_launch();
    l.read(x)?;
    l.write(out)?;
    finish(l, w.as_mut(), &p, "aclnnArgMax", api.aclnnArgMax)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ascend_rt::Context;
    use ascend_sys::{ACLNN_ERR_INNER_FIND_KERNEL_ERROR, ACL_BF16};

    #[test]
    fn descriptors_have_the_documented_shapes() {
        let [x, g, y, r] = rms_norm_descs(7, 96, ACL_BF16);
        assert_eq!(
            (x.dims, g.dims, y.dims, r.dims, r.dtype),
            (vec![7, 96], vec![96], vec![7, 96], vec![7, 1], ACL_FLOAT)
        );
        let [x, c, s, o] = rotary_descs(5, 4, 64, ACL_BF16);
        assert_eq!(
            (x.dims.clone(), c.dims, s.dims, o.dims),
            (vec![1, 5, 4, 64], vec![1, 5, 1, 64], vec![1, 5, 1, 64], x.dims)
        );
        let [i, o] = swiglu_descs(3, 40, ACL_BF16);
        assert_eq!((i.dims, o.dims), (vec![3, 80], vec![3, 40]));
        let [w, ids, o] = embedding_descs(100, 8, 6, ACL_BF16);
        assert_eq!((w.dims, ids.dims, ids.dtype, o.dims), (vec![100, 8], vec![6], ACL_INT32, vec![6, 8]));
        let [x, o] = argmax_descs(2, 9, ACL_BF16);
        assert_eq!((x.dims, o.dims, o.dtype), (vec![2, 9], vec![2], ACL_INT64));
        assert_eq!(x.strides, vec![9, 1]);
    }

    /// The simulator creates the tensors and scalars but has no aclnn kernels: each path must stop
    /// at phase 1 with the operator's error, having changed nothing.
    #[test]
    fn the_npu_paths_stop_at_the_operator_on_the_simulator() {
        let st = Stream::new(&Context::new(0).unwrap()).unwrap();
        let x = st.clone_htod(&[1.0f32; 32]).unwrap();
        let w = st.clone_htod(&[1.0f32; 8]).unwrap();
        let mut out = st.clone_htod(&[2.0f32; 32]).unwrap();
        let refused = |r: Result<()>, call: &str| match r {
            Err(Error::Acl { call: c, code, .. }) => assert_eq!((c, code), (call, ACLNN_ERR_INNER_FIND_KERNEL_ERROR)),
            other => panic!("expected {call} to fail on the simulator, got {other:?}"),
        };
        refused(rms_norm(&st, &x, &w, 1e-5, &mut out), "aclnnRmsNormGetWorkspaceSize");
        refused(rotary(&st, &mut out, &[0, 1], 8, 10000.0), "aclnnRotaryPositionEmbeddingGetWorkspaceSize");
        let mut half = st.alloc_zeros::<f32>(16).unwrap();
        refused(silu_mul(&st, &x, 8, &mut half), "aclnnSwiGluGetWorkspaceSize");
        refused(add_assign(&st, &mut out, &x), "aclnnInplaceAddGetWorkspaceSize");
        refused(embedding(&st, &w, 4, &[1, 0], &mut half), "aclnnEmbeddingGetWorkspaceSize");
        let mut ids = st.alloc_zeros::<i64>(4).unwrap();
        refused(argmax(&st, &x, 8, &mut ids), "aclnnArgMaxGetWorkspaceSize");
        assert_eq!(st.clone_dtoh(&out).unwrap(), vec![2.0f32; 32]);
    }

    /// The rotary tables and the token ids are uploaded without waiting for earlier work.
    #[test]
    fn the_npu_paths_do_not_wait_for_earlier_work() {
        let st = Stream::new(&Context::new(0).unwrap()).unwrap();
        let (mut x, w, mut out) =
            (st.alloc_zeros::<f32>(32).unwrap(), st.alloc_zeros::<f32>(8).unwrap(), st.alloc_zeros::<f32>(8).unwrap());
        st.synchronize().unwrap();
        let s = st.clone();
        let refused = crate::npu::returns_while_held(&st, move || {
            [rotary(&s, &mut x, &[0, 1], 8, 10000.0).is_err(), embedding(&s, &w, 4, &[1, 0], &mut out).is_err()]
        });
        assert_eq!(refused, [true; 2]);
    }
}
