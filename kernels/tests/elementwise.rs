//! The elementwise kernels against plain f64 references. Bounds: f32 arithmetic over n terms is
//! within n·2⁻²⁴ relative of the f64 result (γ_n; a few extra units for sqrt, exp and sin/cos),
//! plus the rounding of the output to its type (2⁻⁸ bf16); inputs are compared after their own
//! rounding to the input type.

use ascend_kernels::elementwise::{add_assign, argmax, embedding, rms_norm, rotary, silu_mul};
use ascend_kernels::Element;
use ascend_rt::{bf16, Context, Error, Stream};
use std::sync::Arc;

fn stream() -> Arc<Stream> {
    Stream::new(&Context::new(0).unwrap()).unwrap()
}

fn values<T: Element>(n: usize, seed: u64) -> Vec<T> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            T::from_f32(((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0)
        })
        .collect()
}

fn f(x: &impl Element) -> f64 {
    x.to_f32() as f64
}

fn close<T: Element>(what: &str, got: &[T], want: &[f64], terms: usize) {
    let u_out = if std::mem::size_of::<T>() == 4 { 0.0 } else { 2f64.powi(-8) };
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = (terms as f64 + 8.0) * 2f64.powi(-24) * w.abs().max(1.0) + u_out * w.abs();
        assert!((f(g) - w).abs() <= tol, "{what}[{i}] = {}, reference {w}, bound {tol}", f(g));
    }
}

fn check_all<T: Element>(seed: u64) {
    let st = stream();
    let (rows, dim) = (5, 96);
    // RMSNorm.
    let x: Vec<T> = values(rows * dim, seed);
    let w: Vec<T> = values(dim, seed + 1);
    let (dx, dw) = (st.clone_htod(&x).unwrap(), st.clone_htod(&w).unwrap());
    let mut out = st.alloc_zeros::<T>(rows * dim).unwrap();
    rms_norm(&st, &dx, &dw, 1e-5, &mut out).unwrap();
    let want: Vec<f64> = x
        .chunks(dim)
        .flat_map(|r| {
            let inv = 1.0 / (r.iter().map(|v| f(v) * f(v)).sum::<f64>() / dim as f64 + 1e-5).sqrt();
            r.iter().zip(&w).map(move |(v, g)| f(v) * inv * f(g)).collect::<Vec<_>>()
        })
        .collect();
    close("rms_norm", &st.clone_dtoh(&out).unwrap(), &want, dim);

    // Rotary, 2 heads of 48, positions out of order.
    let (heads, hd) = (2, 48);
    let positions = [7, 0, 300, 1, 4095];
    let mut q = st.clone_htod(&values::<T>(positions.len() * heads * hd, seed + 2)).unwrap();
    let before = st.clone_dtoh(&q).unwrap();
    rotary(&st, &mut q, &positions, hd, 10000.0).unwrap();
    let mut want = vec![0f64; before.len()];
    for (t, &p) in positions.iter().enumerate() {
        for h in 0..heads {
            let base = (t * heads + h) * hd;
            for i in 0..hd / 2 {
                let a = p as f64 * 10000f64.powf(-2.0 * i as f64 / hd as f64);
                let (x0, x1) = (f(&before[base + i]), f(&before[base + hd / 2 + i]));
                want[base + i] = x0 * a.cos() - x1 * a.sin();
                want[base + hd / 2 + i] = x1 * a.cos() + x0 * a.sin();
            }
        }
    }
    // The angles and their sin/cos are computed in f64 and rounded to f32 once; the rotation adds
    // two products and a sum in f32: a few rounding errors of |x0| + |x1| ≤ 4 each.
    close("rotary", &st.clone_dtoh(&q).unwrap(), &want, 16);

    // SiLU·mul.
    let inter = 40;
    let gu: Vec<T> = values(rows * 2 * inter, seed + 3);
    let dgu = st.clone_htod(&gu).unwrap();
    let mut act = st.alloc_zeros::<T>(rows * inter).unwrap();
    silu_mul(&st, &dgu, inter, &mut act).unwrap();
    let want: Vec<f64> = gu
        .chunks(2 * inter)
        .flat_map(|r| (0..inter).map(move |i| f(&r[i]) / (1.0 + (-f(&r[i])).exp()) * f(&r[inter + i])))
        .collect();
    close("silu_mul", &st.clone_dtoh(&act).unwrap(), &want, 4);

    // Residual add.
    let mut a = st.clone_htod(&x).unwrap();
    add_assign(&st, &mut a, &dx).unwrap();
    let want: Vec<f64> = x.iter().map(|v| 2.0 * f(v)).collect();
    close("add_assign", &st.clone_dtoh(&a).unwrap(), &want, 1);

    // Embedding and argmax.
    let table: Vec<T> = values(10 * dim, seed + 4);
    let dt = st.clone_htod(&table).unwrap();
    let mut e = st.alloc_zeros::<T>(3 * dim).unwrap();
    embedding(&st, &dt, dim, &[9, 0, 9], &mut e).unwrap();
    let got: Vec<f64> = st.clone_dtoh(&e).unwrap().iter().map(f).collect();
    let row = |i: usize| table[i * dim..(i + 1) * dim].iter().map(f).collect::<Vec<_>>();
    assert_eq!(got, [row(9), row(0), row(9)].concat());
    let logits: Vec<T> = [0.5f32, 3.0, 3.0, -1.0, -2.0, -1.0, -0.5, -3.0, 1.0, f32::NAN, 9.0, f32::NAN]
        .iter()
        .map(|&v| T::from_f32(v))
        .collect();
    let dl = st.clone_htod(&logits).unwrap();
    let mut ids = st.alloc_zeros::<i64>(3).unwrap();
    argmax(&st, &dl, 4, &mut ids).unwrap();
    assert_eq!(st.clone_dtoh(&ids).unwrap(), vec![1, 2, 1], "first maximum wins ties; the first NaN wins (torch)");
}

#[test]
fn kernels_match_references_f32_and_bf16() {
    check_all::<f32>(1);
    check_all::<bf16>(2);
}

#[test]
fn bad_arguments_are_refused_and_nothing_runs() {
    let st = stream();
    let table = st.clone_htod(&[1.0f32; 40]).unwrap();
    let mut out = st.clone_htod(&[5.0f32; 8]).unwrap();
    let invalid = |r: ascend_rt::Result<()>, what: &str| match r {
        Err(Error::InvalidArgument(m)) => assert!(m.contains(what), "{m}"),
        other => panic!("expected InvalidArgument({what}), got {other:?}"),
    };
    invalid(embedding(&st, &table, 4, &[1, 10], &mut out), "outside the vocabulary");
    invalid(embedding(&st, &table, 4, &[-1, 2], &mut out), "outside the vocabulary");
    invalid(rotary(&st, &mut out, &[0, -3], 4, 10000.0), "negative");
    invalid(rotary(&st, &mut out, &[0, 1], 3, 10000.0), "even");
    // Products that overflow are refused, not wrapped.
    invalid(rotary(&st, &mut out, &[0, 1], usize::MAX - 1, 10000.0), "even");
    invalid(silu_mul(&st, &table, usize::MAX, &mut out), "rows of 2");
    let w = st.clone_htod(&[1.0f32; 3]).unwrap();
    invalid(rms_norm(&st, &table, &w, 1e-5, &mut out), "rows of 3");
    let mut ids = st.alloc_zeros::<i64>(3).unwrap();
    invalid(argmax(&st, &table, 4, &mut ids), "expected [10]");
    assert_eq!(st.clone_dtoh(&out).unwrap(), vec![5.0f32; 8]);
}
