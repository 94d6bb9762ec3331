//! Matmul against a plain f64 ndarray reference, for every SIMD level this CPU has, every dtype, and
//! awkward shapes (1, primes, not multiples of any tile, k beyond one packed slice, skinny and wide,
//! batches, transposed and shared weights, bias).
//!
//! Error bound per element: f32 accumulation of k products has |error| ≤ k·u₃₂·Σ|aᵢbᵢ| (u₃₂ = 2⁻²⁴,
//! the standard γₖ bound; we allow 2×), plus the final rounding to the output type, ≤ u_out·|c|
//! (2⁻¹¹ for f16, 2⁻⁸ for bf16, 0 for f32 output). Inputs are compared after their own rounding to the
//! input type, so input quantisation does not count against the kernel.

use ascend_kernels::{cpu, Element, Matmul, Shape};
use ascend_rt::{bf16, f16, Context, Error, Stream};
use ndarray::Array2;
use std::sync::Arc;

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

fn stream() -> Arc<Stream> {
    Stream::new(&Context::new(0).unwrap()).unwrap()
}

fn unit_roundoff<O: Element>() -> f64 {
    match std::mem::size_of::<O>() {
        4 => 0.0,
        _ if O::ACL_DTYPE == <f16 as ascend_rt::DeviceRepr>::ACL_DTYPE => 2f64.powi(-11),
        _ => 2f64.powi(-8),
    }
}

/// Runs one case and checks every element against the bound.
fn check<T: Element, O: Element>(level: cpu::Level, s: Shape, bias: bool, seed: u64) {
    let st = stream();
    let mut rng = Lcg(seed);
    let a: Vec<T> = (0..s.batch * s.m * s.k).map(|_| T::from_f32(rng.next())).collect();
    let nb = if s.shared_b { 1 } else { s.batch };
    let b: Vec<T> = (0..nb * s.k * s.n).map(|_| T::from_f32(rng.next())).collect();
    let bias_v: Vec<T> = (0..s.n).map(|_| T::from_f32(rng.next())).collect();
    let (da, db, dbias) = (st.clone_htod(&a).unwrap(), st.clone_htod(&b).unwrap(), st.clone_htod(&bias_v).unwrap());
    // NaN in every output slot: a kernel that added to the output instead of writing it fails.
    let mut dc = st.clone_htod(&vec![O::from_f32(f32::NAN); s.batch * s.m * s.n]).unwrap();
    Matmul::new(s).level(level).run(&st, &da, &db, bias.then_some(&dbias), &mut dc).unwrap();
    let c = st.clone_dtoh(&dc).unwrap();
    let f = |x: &T| x.to_f32() as f64;
    for i in 0..s.batch {
        let am = Array2::from_shape_fn((s.m, s.k), |(r, p)| f(&a[i * s.m * s.k + r * s.k + p]));
        let bi = if s.shared_b { 0 } else { i };
        let bm = Array2::from_shape_fn((s.k, s.n), |(p, j)| {
            let idx = if s.transpose_b { j * s.k + p } else { p * s.n + j };
            f(&b[bi * s.k * s.n + idx])
        });
        let want = am.dot(&bm);
        let mag = am.mapv(f64::abs).dot(&bm.mapv(f64::abs));
        for r in 0..s.m {
            for j in 0..s.n {
                let w = want[[r, j]] + if bias { f(&bias_v[j]) } else { 0.0 };
                let got = c[i * s.m * s.n + r * s.n + j].to_f32() as f64;
                let bound =
                    2.0 * s.k as f64 * 2f64.powi(-24) * (mag[[r, j]] + 1.0) + unit_roundoff::<O>() * w.abs() + 1e-12;
                assert!((got - w).abs() <= bound, "{level:?} {s:?} [{i},{r},{j}]: {got} vs {w} (bound {bound})");
            }
        }
    }
}

const SHAPES: [(usize, usize, usize); 13] = [
    (1, 1, 1),
    (7, 13, 5),
    (17, 33, 257),
    (64, 64, 64),
    (1, 300, 1000),
    (300, 1, 7),
    (5, 700, 3),
    (129, 65, 1),
    (16, 96, 520),
    (11, 40, 1500),
    // Decode-shaped with k beyond one activation block (4096 for m = 16, 2256 for m = 29): partial
    // sums carried over.
    (16, 24, 4500),
    (29, 10, 2300),
    // The blocked GEMM (m above the decode path) over several packed slices of k (1024 for f32,
    // 2048 for bf16), the last one odd.
    (40, 36, 2101),
];

#[test]
fn f32_every_level_and_shape() {
    for level in cpu::available() {
        for (i, &(m, n, k)) in SHAPES.iter().enumerate() {
            check::<f32, f32>(level, Shape::new(m, n, k), i % 2 == 0, i as u64);
            check::<f32, f32>(level, Shape::new(m, n, k).transposed_b(), i % 2 == 1, 100 + i as u64);
        }
    }
}

#[test]
fn half_types_every_level() {
    for level in cpu::available() {
        for (i, &(m, n, k)) in SHAPES.iter().enumerate().step_by(2) {
            check::<f16, f16>(level, Shape::new(m, n, k), i % 4 == 0, i as u64);
            check::<bf16, bf16>(level, Shape::new(m, n, k).transposed_b(), true, 7 + i as u64);
            check::<bf16, f32>(level, Shape::new(m, n, k), false, 9 + i as u64);
            check::<f16, f32>(level, Shape::new(m, n, k).transposed_b(), false, 11 + i as u64);
        }
    }
}

#[test]
fn batches_with_own_and_shared_weights() {
    for level in cpu::available() {
        // Decode-sized (m ≤ 32) and GEMM-sized (m > 32) batches, own and shared, plain and transposed.
        check::<f32, f32>(level, Shape::new(9, 21, 35).batched(3, false), true, 1);
        check::<bf16, f32>(level, Shape::new(4, 50, 300).transposed_b().batched(5, true), true, 2);
        check::<f32, f32>(level, Shape::new(40, 50, 300).transposed_b().batched(3, true), true, 3);
        check::<bf16, f32>(level, Shape::new(40, 50, 300).transposed_b().batched(3, true), true, 4);
        check::<bf16, bf16>(level, Shape::new(35, 19, 70).batched(2, false), false, 5);
    }
}

#[test]
fn bad_arguments_are_rejected_before_anything_is_enqueued() {
    let st = stream();
    let a = st.alloc_zeros::<f32>(6).unwrap();
    let b = st.alloc_zeros::<f32>(6).unwrap();
    let mut c = st.alloc_zeros::<f32>(4).unwrap();
    let ok = Matmul::new(Shape::new(2, 2, 3));
    ok.run(&st, &a, &b, None, &mut c).unwrap();
    let bad = |r: ascend_rt::Result<()>| assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
    bad(Matmul::new(Shape::new(2, 2, 4)).run(&st, &a, &b, None, &mut c));
    bad(Matmul::new(Shape::new(0, 2, 3)).run(&st, &a, &b, None, &mut c));
    bad(Matmul::new(Shape::new(2, 2, 3).batched(2, true)).run(&st, &a, &b, None, &mut c));
    bad(ok.run(&st, &a, &b, Some(&a), &mut c));
    let mut c16 = st.alloc_zeros::<f16>(4).unwrap();
    bad(ok.run(&st, &a, &b, None, &mut c16));
    st.synchronize().unwrap();
}

#[test]
fn bf16_gemm_shapes_at_every_level() {
    // m > DECODE_MAX_M (32) takes the packed GEMM: with AVX-512 BF16 the native kernel (k in pairs;
    // odd k padded, k = 1 a single padded pair).
    assert_eq!(ascend_kernels::matmul::DECODE_MAX_M, 32, "the shapes below straddle it");
    for level in cpu::available() {
        for (i, &(m, n, k)) in [(37, 45, 129), (33, 33, 2), (64, 96, 1025), (41, 7, 1)].iter().enumerate() {
            check::<bf16, bf16>(level, Shape::new(m, n, k), i % 2 == 0, 50 + i as u64);
            check::<bf16, f32>(level, Shape::new(m, n, k).transposed_b(), i % 2 == 1, 60 + i as u64);
        }
    }
}
