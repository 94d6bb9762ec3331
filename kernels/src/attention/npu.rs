//! The NPU path of attention: aclnnFusedInferAttentionScoreV2 in the TND layout (prefill over
//! contiguous keys; paged attention over the block table) and aclnnScatterPaKvCache ("Norm" mode)
//! for reshape_and_cache, through the two-phase API with stream-ordered workspaces. It compiles
//! everywhere and runs only on a CANN stream; [`fia_prefill`], [`fia_paged`] and [`scatter`] are the
//! calls it makes, as data, so tests can check them.
//!
//! Facts taken from the operator documentation (see `../shared/reference/cann-api.md` §4.6–4.7):
//! TND takes cumulative query lengths; sparse mode 3 (rightDownCausal) aligns the causal diagonal to
//! the end of each sequence, which is chunked prefill's mask, and needs the 2048×2048 upper-triangular
//! mask; mode 4 (band) adds a window of `preTokens` keys before each query. Paged keys and values are
//! the caches viewed as `[blocks, block_size, kv_heads·D]`.

use super::host::Geometry;
use super::BlockTables;
use crate::matmul::Element;
use crate::npu::{finish, prepare, upload, workspace, TensorDesc};
use ascend_rt::{DeviceBuffer, Error, Result, Stream};
use ascend_sys::{aclDataType, ACL_BOOL, ACL_INT32, ACL_INT64};
use std::ffi::{c_char, CString};
use std::sync::Arc;

/// Side of the square mask the compressed sparse modes take.
pub const MASK_SIDE: i64 = 2048;
/// `sparseMode` values.
pub const SPARSE_NONE: i64 = 0;
/// Causal aligned to the end of each sequence.
pub const SPARSE_RIGHT_DOWN_CAUSAL: i64 = 3;
/// Causal with a window of `preTokens` earlier keys.
pub const SPARSE_BAND: i64 = 4;
/// "No limit" for preTokens / nextTokens.
pub const ALL_TOKENS: i64 = i32::MAX as i64;

/// One aclnnFusedInferAttentionScoreV2 call: its tensors and scalars.
#[derive(Clone, Debug, PartialEq)]
pub struct FiaCall {
    /// `[T, N, D]`.
    pub query: TensorDesc,
    /// The single tensor of the key list.
    pub key: TensorDesc,
    /// The single tensor of the value list.
    pub value: TensorDesc,
    /// `[T, N, D]`.
    pub out: TensorDesc,
    /// The compressed mask (sparse modes 3 and 4).
    pub mask: Option<TensorDesc>,
    /// `[batch, max_blocks]` i32, paged only.
    pub block_table: Option<TensorDesc>,
    /// Cumulative query lengths (TND).
    pub actual_seq_lengths: Vec<i64>,
    /// Key lengths: cumulative for contiguous TND keys, per sequence for paged keys.
    pub actual_seq_lengths_kv: Vec<i64>,
    /// numHeads.
    pub num_heads: i64,
    /// scaleValue.
    pub scale: f64,
    /// preTokens.
    pub pre_tokens: i64,
    /// nextTokens.
    pub next_tokens: i64,
    /// numKeyValueHeads.
    pub num_kv_heads: i64,
    /// sparseMode.
    pub sparse_mode: i64,
    /// blockSize (0 when not paged).
    pub block_size: i64,
}

fn masking(g: &Geometry) -> (Option<TensorDesc>, i64, i64, i64) {
    match (g.causal, g.window) {
        (false, None) => (None, SPARSE_NONE, ALL_TOKENS, ALL_TOKENS),
        // Mode 0 ignores preTokens without a mask: a window needs the band mode, open to the right.
        (false, Some(w)) => (Some(mask_desc()), SPARSE_BAND, w as i64 - 1, ALL_TOKENS),
        (true, None) => (Some(mask_desc()), SPARSE_RIGHT_DOWN_CAUSAL, ALL_TOKENS, 0),
        (true, Some(w)) => (Some(mask_desc()), SPARSE_BAND, w as i64 - 1, 0),
    }
}

fn mask_desc() -> TensorDesc {
    TensorDesc::contiguous(&[MASK_SIDE, MASK_SIDE], ACL_BOOL)
}

fn cumulative(cu: &[i32]) -> Vec<i64> {
    cu[1..].iter().map(|&x| x as i64).collect()
}

/// The call for prefill over contiguous keys; `cu_seqlens` as validated by `Prefill::run`.
pub(crate) fn fia_prefill(g: &Geometry, cu_seqlens: &[i32], dtype: aclDataType) -> FiaCall {
    let t = *cu_seqlens.last().unwrap() as i64;
    let (n, nkv, d) = (g.heads as i64, g.kv_heads as i64, g.head_dim as i64);
    let (mask, sparse_mode, pre_tokens, next_tokens) = masking(g);
    FiaCall {
        query: TensorDesc::contiguous(&[t, n, d], dtype),
        key: TensorDesc::contiguous(&[t, nkv, d], dtype),
        value: TensorDesc::contiguous(&[t, nkv, d], dtype),
        out: TensorDesc::contiguous(&[t, n, d], dtype),
        mask,
        block_table: None,
        actual_seq_lengths: cumulative(cu_seqlens),
        actual_seq_lengths_kv: cumulative(cu_seqlens),
        num_heads: n,
        scale: g.scale as f64,
        pre_tokens,
        next_tokens,
        num_kv_heads: nkv,
        sparse_mode,
        block_size: 0,
    }
}

/// The call for paged attention (decode or chunked prefill); arguments as validated by
/// `PagedAttention::chunked_prefill`.
pub(crate) fn fia_paged(
    g: &Geometry,
    block_size: usize,
    blocks: usize,
    tables: BlockTables<'_>,
    cu_query_lens: &[i32],
    context_lens: &[i32],
    dtype: aclDataType,
) -> FiaCall {
    let t = *cu_query_lens.last().unwrap() as i64;
    let (n, nkv, d) = (g.heads as i64, g.kv_heads as i64, g.head_dim as i64);
    let batch = context_lens.len() as i64;
    let decode = cu_query_lens.windows(2).all(|w| w[1] - w[0] <= 1);
    // One query per sequence needs no mask: it sees its whole context.
    let (mask, sparse_mode, pre_tokens, next_tokens) = match (decode, g.window) {
        (true, None) => (None, SPARSE_NONE, ALL_TOKENS, 0),
        _ => masking(g),
    };
    let cache = TensorDesc::contiguous(&[blocks as i64, block_size as i64, nkv * d], dtype);
    FiaCall {
        query: TensorDesc::contiguous(&[t, n, d], dtype),
        key: cache.clone(),
        value: cache,
        out: TensorDesc::contiguous(&[t, n, d], dtype),
        mask,
        block_table: Some(TensorDesc::contiguous(&[batch, tables.max_blocks as i64], ACL_INT32)),
        actual_seq_lengths: cumulative(cu_query_lens),
        actual_seq_lengths_kv: context_lens.iter().map(|&x| x as i64).collect(),
        num_heads: n,
        scale: g.scale as f64,
        pre_tokens,
        next_tokens,
        num_kv_heads: nkv,
        sparse_mode,
        block_size: block_size as i64,
    }
}

/// The aclnnScatterPaKvCache tensors: key, key cache, slot mapping (i64), value, value cache.
pub(crate) fn scatter(
    tokens: usize,
    kv_heads: usize,
    head_dim: usize,
    block_size: usize,
    blocks: usize,
    dtype: aclDataType,
) -> [TensorDesc; 5] {
    let (t, nkv, d) = (tokens as i64, kv_heads as i64, head_dim as i64);
    let rows = TensorDesc::contiguous(&[t, nkv, d], dtype);
    let cache = TensorDesc::contiguous(&[blocks as i64, block_size as i64, nkv, d], dtype);
    [rows.clone(), cache.clone(), TensorDesc::contiguous(&[t], ACL_INT64), rows, cache]
}

/// Public views of the calls, for tests and tools: prefill.
pub fn prefill_call(
    heads: super::Heads,
    scale: f32,
    causal: bool,
    window: Option<usize>,
    cu_seqlens: &[i32],
    dtype: aclDataType,
) -> FiaCall {
    let g = Geometry { heads: heads.heads, kv_heads: heads.kv_heads, head_dim: heads.head_dim, scale, causal, window };
    fia_prefill(&g, cu_seqlens, dtype)
}

/// Public views of the calls: paged attention.
#[allow(clippy::too_many_arguments)]
pub fn paged_call(
    heads: super::Heads,
    scale: f32,
    window: Option<usize>,
    block_size: usize,
    blocks: usize,
    tables: BlockTables<'_>,
    cu_query_lens: &[i32],
    context_lens: &[i32],
    dtype: aclDataType,
) -> FiaCall {
    let g = Geometry {
        heads: heads.heads,
        kv_heads: heads.kv_heads,
        head_dim: heads.head_dim,
        scale,
        causal: true,
        window,
    };
    fia_paged(&g, block_size, blocks, tables, cu_query_lens, context_lens, dtype)
}

/// Public views of the calls: reshape_and_cache's tensors.
pub fn scatter_call(
    heads: super::Heads,
    tokens: usize,
    block_size: usize,
    blocks: usize,
    dtype: aclDataType,
) -> [TensorDesc; 5] {
    scatter(tokens, heads.kv_heads, heads.head_dim, block_size, blocks, dtype)
}

/// Enqueues `call` with its device buffers; `extra` = (mask, block table) buffers when present.
fn run_fia<T: Element>(
    stream: &Arc<Stream>,
    call: &FiaCall,
    q: &DeviceBuffer<T>,
    k: &DeviceBuffer<T>,
    v: &DeviceBuffer<T>,
    block_table: Option<&[i32]>,
    out: &mut DeviceBuffer<T>,
) -> Result<()> {
    let api = stream.context().runtime().api();
    let missing = Error::MissingSymbol;
    let phase1 = api
        .aclnnFusedInferAttentionScoreV2GetWorkspaceSize
        .ok_or(missing("aclnnFusedInferAttentionScoreV2GetWorkspaceSize"))?;
    // Host inputs get their device buffers now and their contents once phase 1 has accepted the call.
    let mask_host: Option<Vec<u8>> = call.mask.as_ref().map(|_| {
        // Upper triangle (keys after the diagonal) masked.
        let side = MASK_SIDE as usize;
        (0..side * side).map(|i| u8::from(i % side > i / side)).collect()
    });
    let mut mask = mask_host.as_ref().map(|m| stream.alloc::<u8>(m.len())).transpose()?;
    let mut table = block_table.map(|t| stream.alloc::<i32>(t.len())).transpose()?;
    let layout = CString::new("TND").expect("no NUL");
    let p = prepare(stream, "aclnnFusedInferAttentionScoreV2GetWorkspaceSize", |set, ws, exec| {
        let tq = set.tensor(&call.query, q.raw())?;
        let tk = set.list(&call.key, k.raw())?;
        let tv = set.list(&call.value, v.raw())?;
        let to = set.tensor(&call.out, out.raw())?;
        let tm = match (&call.mask, &mask) {
            (Some(d), Some(b)) => set.tensor(d, b.raw())?,
            _ => std::ptr::null_mut(),
        };
        let tb = match (&call.block_table, &table) {
            (Some(d), Some(b)) => set.tensor(d, b.raw())?,
            _ => std::ptr::null_mut(),
        };
        let lens = set.ints(&call.actual_seq_lengths)?;
        let lens_kv = set.ints(&call.actual_seq_lengths_kv)?;
        let null = std::ptr::null_mut();
        // SAFETY: valid tensors, arrays and out-pointers; optional inputs are NULL; phase 1 only
        // inspects them. The layout string outlives the call.
        Ok(unsafe {
            phase1(
                tq,
                tk,
                tv,
                null,
                tm,
                lens,
                lens_kv,
                null,
                null,
                null,
                null,
                null,
                null,
                null,
                tb,
                null,
                null,
                null,
                null,
                null,
                null,
                null,
                null,
                std::ptr::null_mut(),
                call.num_heads,
                call.scale,
                call.pre_tokens,
                call.next_tokens,
                layout.as_ptr() as *mut c_char,
                call.num_kv_heads,
                call.sparse_mode,
                0,
                call.block_size,
                0,
                false,
                0,
                0,
                to,
                null,
                ws,
                exec,
            )
        })
    })?;
    if let (Some(host), Some(dev)) = (&mask_host, &mut mask) {
        upload(stream, host, dev)?;
    }
    if let (Some(host), Some(dev)) = (block_table, &mut table) {
        upload(stream, host, dev)?;
    }
    let mut w = workspace(stream, p.ws)?;
    let mut l = stream.device_launch();
    l.read(q)?;
    l.read(k)?;
    l.read(v)?;
    if let Some(m) = &mask {
        l.read(m)?;
    }
    if let Some(b) = &table {
        l.read(b)?;
    }
    l.write(out)?;
    finish(l, w.as_mut(), &p, "aclnnFusedInferAttentionScoreV2", api.aclnnFusedInferAttentionScoreV2)
}

/// Prefill on an NPU stream.
pub(crate) fn prefill<T: Element>(
    stream: &Arc<Stream>,
    g: &Geometry,
    q: &DeviceBuffer<T>,
    k: &DeviceBuffer<T>,
    v: &DeviceBuffer<T>,
    cu_seqlens: &[i32],
    out: &mut DeviceBuffer<T>,
) -> Result<()> {
    run_fia(stream, &fia_prefill(g, cu_seqlens, T::ACL_DTYPE), q, k, v, None, out)
}

/// Paged attention on an NPU stream; the block table is uploaded without waiting, after phase 1.
#[allow(clippy::too_many_arguments)]
pub(crate) fn paged<T: Element>(
    stream: &Arc<Stream>,
    g: &Geometry,
    block_size: usize,
    q: &DeviceBuffer<T>,
    key_cache: &DeviceBuffer<T>,
    value_cache: &DeviceBuffer<T>,
    tables: BlockTables<'_>,
    cu_query_lens: &[i32],
    context_lens: &[i32],
    out: &mut DeviceBuffer<T>,
) -> Result<()> {
    let blocks = key_cache.len() / (block_size * g.kv_heads * g.head_dim);
    let call = fia_paged(g, block_size, blocks, tables, cu_query_lens, context_lens, T::ACL_DTYPE);
    run_fia(stream, &call, q, key_cache, value_cache, Some(tables.table), out)
}

/// The slots aclnnScatterPaKvCache can take from a validated mapping: it requires every slot in
/// range and distinct, so padding (negative slots, as vLLM pads) is cut off the end, where vLLM puts
/// it; padding before a real token, or a slot written twice, is refused (the rows to cache would have
/// to be moved on the device first).
pub(crate) fn npu_slots(slot_mapping: &[i64]) -> Result<&[i64]> {
    let real = slot_mapping.iter().take_while(|&&s| s >= 0).count();
    if let Some(t) = slot_mapping[real..].iter().position(|&s| s >= 0) {
        return Err(Error::Unsupported(format!(
            "token {} has a slot after padding (token {real}): on an NPU padding may only end the slot mapping",
            real + t
        )));
    }
    let mut sorted = slot_mapping[..real].to_vec();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::InvalidArgument(format!(
            "slot {} is written twice: on an NPU slots must be distinct",
            w[0]
        )));
    }
    Ok(&slot_mapping[..real])
}

/// reshape_and_cache on an NPU stream; the slot mapping is uploaded without waiting, after phase 1.
#[allow(clippy::too_many_arguments)]
pub(crate) fn reshape_and_cache<T: Element>(
    stream: &Arc<Stream>,
    block_size: usize,
    key: &DeviceBuffer<T>,
    value: &DeviceBuffer<T>,
    key_cache: &mut DeviceBuffer<T>,
    value_cache: &mut DeviceBuffer<T>,
    slot_mapping: &[i64],
    (kv_heads, head_dim): (usize, usize),
) -> Result<()> {
    let slot_mapping = npu_slots(slot_mapping)?;
    if slot_mapping.is_empty() {
        return Ok(()); // all padding
    }
    let api = stream.context().runtime().api();
    let phase1 = api
        .aclnnScatterPaKvCacheGetWorkspaceSize
        .ok_or(Error::MissingSymbol("aclnnScatterPaKvCacheGetWorkspaceSize"))?;
    let blocks = key_cache.len() / (block_size * kv_heads * head_dim);
    let descs = scatter(slot_mapping.len(), kv_heads, head_dim, block_size, blocks, T::ACL_DTYPE);
    let mut slots = stream.alloc::<i64>(slot_mapping.len())?;
    let ptrs = [key.raw(), key_cache.raw(), slots.raw(), value.raw(), value_cache.raw()];
    let mode = CString::new("Norm").expect("no NUL");
    let p = prepare(stream, "aclnnScatterPaKvCacheGetWorkspaceSize", |set, ws, exec| {
        let t = set.all(&descs, &ptrs)?;
        let null = std::ptr::null_mut();
        // SAFETY: valid tensors and out-pointers, optional inputs NULL; the mode string outlives the call.
        Ok(unsafe {
            phase1(
                t[0],
                t[1],
                t[2],
                t[3],
                t[4],
                null,
                null,
                null,
                mode.as_ptr() as *mut c_char,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
                ws,
                exec,
            )
        })
    })?;
    upload(stream, slot_mapping, &mut slots)?;
    let mut w = workspace(stream, p.ws)?;
    let mut l = stream.device_launch();
    l.read(key)?;
    l.read(value)?;
    l.read(&slots)?;
    l.write(key_cache)?;
    l.write(value_cache)?;
    finish(l, w.as_mut(), &p, "aclnnScatterPaKvCache", api.aclnnScatterPaKvCache)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ascend_rt::Context;

    #[test]
    fn npu_slot_mappings_drop_trailing_padding_and_refuse_what_the_operator_cannot_take() {
        assert_eq!(npu_slots(&[3, 0, 7, -1, -1]).unwrap(), &[3, 0, 7]);
        assert_eq!(npu_slots(&[5, 1]).unwrap(), &[5, 1]);
        assert!(npu_slots(&[-1, -1]).unwrap().is_empty());
        assert!(npu_slots(&[]).unwrap().is_empty());
        assert!(matches!(npu_slots(&[0, -1, 2]), Err(Error::Unsupported(m)) if m.contains("token 2")));
        assert!(matches!(npu_slots(&[4, 2, 4]), Err(Error::InvalidArgument(m)) if m.contains("slot 4")));
    }
    use ascend_sys::ACLNN_ERR_INNER_FIND_KERNEL_ERROR;

    /// The simulator creates the tensors but has no aclnn kernels: each path must stop at phase 1
    /// with the operator's error, having enqueued nothing (the output stays as it was), and without
    /// waiting for the work queued before it (its host inputs are uploaded only after phase 1).
    #[test]
    fn the_npu_paths_stop_at_the_operator_without_waiting_for_earlier_work() {
        let st = Stream::new(&Context::new(0).unwrap()).unwrap();
        let g = Geometry { heads: 4, kv_heads: 2, head_dim: 16, scale: 0.25, causal: true, window: None };
        let q = st.alloc_zeros::<f32>(3 * 4 * 16).unwrap();
        let kv = st.alloc_zeros::<f32>(3 * 2 * 16).unwrap();
        let mut out = st.clone_htod(&vec![1.0f32; 3 * 4 * 16]).unwrap();
        let mut kc = st.alloc_zeros::<f32>(2 * 16 * 2 * 16).unwrap();
        let mut vc = st.alloc_zeros::<f32>(2 * 16 * 2 * 16).unwrap();
        st.synchronize().unwrap();
        let s = st.clone();
        let (results, out) = crate::npu::returns_while_held(&st, move || {
            let tables = BlockTables { table: &[0, 1], max_blocks: 2 };
            let results = [
                prefill(&s, &g, &q, &kv, &kv, &[0, 3], &mut out),
                paged(&s, &g, 16, &q, &kc, &vc, tables, &[0, 3], &[20], &mut out),
                reshape_and_cache(&s, 16, &kv, &kv, &mut kc, &mut vc, &[0, 1, 2], (2, 16)),
            ];
            (results, out)
        });
        let fia = "aclnnFusedInferAttentionScoreV2GetWorkspaceSize";
        for (r, call) in results.into_iter().zip([fia, fia, "aclnnScatterPaKvCacheGetWorkspaceSize"]) {
            match r {
                Err(Error::Acl { call: c, code, .. }) => {
                    assert_eq!((c, code), (call, ACLNN_ERR_INNER_FIND_KERNEL_ERROR))
                }
                other => panic!("expected {call} to fail on the simulator, got {other:?}"),
            }
        }
        assert_eq!(st.clone_dtoh(&out).unwrap(), vec![1.0f32; 3 * 4 * 16]);
    }
}
