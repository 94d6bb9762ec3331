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
    let mut c32 = st.alloc_zeros::<f32>(4).unwrap();
    assert!(matches!(
        ascend_kernels::npu::run(&st, &Shape::new(2, 2, 3), &a, &b, None, &mut c32),
        Err(Error::Unsupported(_))
    ));
    st.synchronize().unwrap();
}
