//! The NPU path's tensor descriptors (what it gives aclCreateTensor), checked for representative
//! shapes; and the path itself driven against the simulator, which creates the tensors but has no
//! aclnn kernels (so it must stop at phase 1 with the operator's error, enqueueing nothing).

use ascend_kernels::npu::{descriptors, Op, TensorDesc};
use ascend_kernels::Shape;
use ascend_rt::{f16, Context, Error, Stream};
use ascend_sys::{ACL_FLOAT, ACL_FLOAT16, ACL_FORMAT_ND};

fn desc(dims: &[i64], strides: &[i64], storage: &[i64], dtype: i32) -> TensorDesc {
    TensorDesc {
        dims: dims.to_vec(),
        strides: strides.to_vec(),
        offset: 0,
        format: ACL_FORMAT_ND,
        dtype,
        storage: storage.to_vec(),
    }
}

/// Every view stays inside its storage, and touches all of it.
fn fits(d: &TensorDesc) {
    let last: i64 = d.dims.iter().zip(&d.strides).map(|(n, s)| (n - 1) * s).sum::<i64>() + d.offset;
    assert_eq!(last + 1, d.storage.iter().product::<i64>(), "{d:?}");
}

#[test]
fn mm_descriptors() {
    let (op, [a, b, c]) = descriptors(&Shape::new(3, 5, 7), ACL_FLOAT);
    assert_eq!(op, Op::Mm);
    assert_eq!(a, desc(&[3, 7], &[7, 1], &[3, 7], ACL_FLOAT));
    assert_eq!(b, desc(&[7, 5], &[5, 1], &[7, 5], ACL_FLOAT));
    assert_eq!(c, desc(&[3, 5], &[5, 1], &[3, 5], ACL_FLOAT));
    // Linear-layer weights [n, k], used transposed: a strided view of their storage.
    let (_, [_, bt, _]) = descriptors(&Shape::new(3, 5, 7).transposed_b(), ACL_FLOAT16);
    assert_eq!(bt, desc(&[7, 5], &[1, 7], &[5, 7], ACL_FLOAT16));
    // A batch sharing its weights is one flattened product.
    let (op, [a, b, c]) = descriptors(&Shape::new(3, 5, 7).transposed_b().batched(4, true), ACL_FLOAT16);
    assert_eq!(op, Op::Mm);
    assert_eq!((a.dims, b.dims, c.dims), (vec![12, 7], vec![7, 5], vec![12, 5]));
}

#[test]
fn batch_matmul_descriptors() {
    let (op, [a, b, c]) = descriptors(&Shape::new(3, 5, 7).batched(2, false), ACL_FLOAT);
    assert_eq!(op, Op::BatchMatMul);
    assert_eq!(a, desc(&[2, 3, 7], &[21, 7, 1], &[2, 3, 7], ACL_FLOAT));
    assert_eq!(b, desc(&[2, 7, 5], &[35, 5, 1], &[2, 7, 5], ACL_FLOAT));
    assert_eq!(c, desc(&[2, 3, 5], &[15, 5, 1], &[2, 3, 5], ACL_FLOAT));
    let (_, [_, bt, _]) = descriptors(&Shape::new(3, 5, 7).transposed_b().batched(2, false), ACL_FLOAT);
    assert_eq!(bt, desc(&[2, 7, 5], &[35, 1, 7], &[2, 5, 7], ACL_FLOAT));
    for s in [
        Shape::new(1, 1, 1),
        Shape::new(16, 4096, 4096).transposed_b(),
        Shape::new(9, 2, 3).batched(5, false).transposed_b(),
    ] {
        let (_, ds) = descriptors(&s, ACL_FLOAT);
        ds.iter().for_each(fits);
    }
}

#[test]
fn the_npu_path_stops_at_the_operator_on_the_simulator() {
    let st = Stream::new(&Context::new(0).unwrap()).unwrap();
    let a = st.alloc_zeros::<f16>(6).unwrap();
    let b = st.alloc_zeros::<f16>(6).unwrap();
    let mut c = st.alloc_zeros::<f16>(4).unwrap();
    match ascend_kernels::npu::run(&st, &Shape::new(2, 2, 3), &a, &b, None, &mut c) {
        Err(Error::Acl { call, code, .. }) => {
            assert_eq!((call, code), ("aclnnMmGetWorkspaceSize", ascend_sys::ACLNN_ERR_INNER_FIND_KERNEL_ERROR));
        }
        other => panic!("expected the simulator's missing-kernel error, got {other:?}"),
    }
    // Operands that do not match the shape are refused before the operator sees them.
    let mut short = st.alloc_zeros::<f16>(3).unwrap();
    assert!(matches!(
        ascend_kernels::npu::run(&st, &Shape::new(2, 2, 3), &a, &b, None, &mut short),
        Err(Error::InvalidArgument(_))
    ));
    let mut c32 = st.alloc_zeros::<f32>(4).unwrap();
    assert!(matches!(
        ascend_kernels::npu::run(&st, &Shape::new(2, 2, 3), &a, &b, None, &mut c32),
        Err(Error::Unsupported(_))
    ));
    st.synchronize().unwrap();
}

use ascend_kernels::attention::npu::{
    paged_call, prefill_call, scatter_call, ALL_TOKENS, MASK_SIDE, SPARSE_BAND, SPARSE_NONE, SPARSE_RIGHT_DOWN_CAUSAL,
};
use ascend_kernels::{BlockTables, Heads};
use ascend_sys::{ACL_BF16, ACL_BOOL, ACL_INT32, ACL_INT64};

fn dense(dims: &[i64], dtype: i32) -> TensorDesc {
    TensorDesc::contiguous(dims, dtype)
}

#[test]
fn contiguous_descriptors_are_row_major() {
    let d = dense(&[2, 3, 4], ACL_FLOAT);
    assert_eq!(d.strides, vec![12, 4, 1]);
    assert_eq!(d.storage, vec![2, 3, 4]);
    fits(&d);
}

#[test]
fn fia_prefill_call_uses_tnd_cumulative_lengths_and_causal_mask() {
    let h = Heads::new(32, 8, 128);
    let c = prefill_call(h, 0.125, true, None, &[0, 5, 12], ACL_BF16);
    assert_eq!(c.query, dense(&[12, 32, 128], ACL_BF16));
    assert_eq!(c.key, dense(&[12, 8, 128], ACL_BF16));
    assert_eq!(c.value, dense(&[12, 8, 128], ACL_BF16));
    assert_eq!(c.out, dense(&[12, 32, 128], ACL_BF16));
    assert_eq!(c.mask, Some(dense(&[MASK_SIDE, MASK_SIDE], ACL_BOOL)));
    assert_eq!(c.block_table, None);
    assert_eq!((c.actual_seq_lengths.clone(), c.actual_seq_lengths_kv.clone()), (vec![5, 12], vec![5, 12]));
    assert_eq!((c.num_heads, c.num_kv_heads, c.block_size), (32, 8, 0));
    assert_eq!((c.sparse_mode, c.pre_tokens, c.next_tokens), (SPARSE_RIGHT_DOWN_CAUSAL, ALL_TOKENS, 0));
    assert_eq!(c.scale, 0.125);
    // A sliding window is the band mode with window − 1 earlier keys.
    let w = prefill_call(h, 0.125, true, Some(64), &[0, 5, 12], ACL_BF16);
    assert_eq!((w.sparse_mode, w.pre_tokens, w.next_tokens), (SPARSE_BAND, 63, 0));
    // Without causality there is no mask.
    let n = prefill_call(h, 0.125, false, None, &[0, 12], ACL_FLOAT);
    assert_eq!((n.sparse_mode, n.mask.is_none()), (SPARSE_NONE, true));
    // A window without causality is still a band (mode 0 would ignore preTokens), open to the right.
    let nw = prefill_call(h, 0.125, false, Some(64), &[0, 12], ACL_FLOAT);
    assert_eq!((nw.sparse_mode, nw.pre_tokens, nw.next_tokens), (SPARSE_BAND, 63, ALL_TOKENS));
    assert_eq!(nw.mask, Some(dense(&[MASK_SIDE, MASK_SIDE], ACL_BOOL)));
}

#[test]
fn fia_paged_call_views_caches_as_blocks_and_uploads_the_table() {
    let h = Heads::new(32, 8, 128);
    let table = [0, 4, 7, 1, 2, 3];
    let tables = BlockTables { table: &table, max_blocks: 3 };
    // Decode: one query per sequence, no mask.
    let c = paged_call(h, 0.5, None, 128, 10, tables, &[0, 1, 2], &[100, 300], ACL_BF16);
    assert_eq!(c.query, dense(&[2, 32, 128], ACL_BF16));
    assert_eq!(c.key, dense(&[10, 128, 8 * 128], ACL_BF16));
    assert_eq!(c.value, c.key);
    assert_eq!(c.block_table, Some(dense(&[2, 3], ACL_INT32)));
    assert_eq!((c.actual_seq_lengths.clone(), c.actual_seq_lengths_kv.clone()), (vec![1, 2], vec![100, 300]));
    assert_eq!((c.sparse_mode, c.mask.is_none(), c.block_size), (SPARSE_NONE, true, 128));
    // Chunked prefill: several queries per sequence, aligned to its end.
    let c = paged_call(h, 0.5, None, 128, 10, tables, &[0, 4, 5], &[100, 300], ACL_BF16);
    assert_eq!(c.query, dense(&[5, 32, 128], ACL_BF16));
    assert_eq!((c.sparse_mode, c.mask.is_some()), (SPARSE_RIGHT_DOWN_CAUSAL, true));
    assert_eq!(c.actual_seq_lengths, vec![4, 5]);
}

#[test]
fn scatter_call_writes_norm_layout() {
    let [k, kc, slots, v, vc] = scatter_call(Heads::new(32, 8, 128), 7, 16, 40, ACL_FLOAT16);
    assert_eq!(k, dense(&[7, 8, 128], ACL_FLOAT16));
    assert_eq!(kc, dense(&[40, 16, 8, 128], ACL_FLOAT16));
    assert_eq!(slots, dense(&[7], ACL_INT64));
    assert_eq!((v, vc), (k, kc));
}
