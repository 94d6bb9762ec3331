//! Decode-shaped matmul (m ≤ 16): bandwidth-bound, so each weight is read from memory exactly once.
//! Weights stored `[n, k]` (linear layers): each output column is a row of W converted to f32 once,
//! then dotted with the m rows of A (which stay in cache). Weights stored `[k, n]`: each row of B is
//! converted once and added into the m output rows. Work is split over the compute pool by columns.
//! The loops are written so the compiler vectorises them; they are compiled once per SIMD level.

use crate::cpu::Level;
use crate::gemm::{ToF32, View};
use crate::simd::{Generic, Lanes, Simd};

/// Bytes of activations one block of k may hold (for weights stored `[n, k]`): half of a 32 KiB L1,
/// so the m activation rows of a block stay there while the weights stream past.
const A_BLOCK_BYTES: usize = 16 << 10;

/// Largest m that takes this path.
pub const MAX_M: usize = 16;
/// Lanes of the independent partial sums: four AVX-512 registers, so the additions of one dot
/// product are not one dependency chain (FMA latency would otherwise bound it, not memory).
const LANES: usize = 64;

/// `c (m × n, f32) = a (m × k, f32, row-major) · b`.
pub fn decode<B: ToF32 + Lanes>(level: Level, m: usize, n: usize, k: usize, a: &[f32], b: View<'_, B>, c: &mut [f32]) {
    let c_addr = c.as_mut_ptr() as usize;
    let cols_per_item = if b.rs == 1 { 16 } else { 256 };
    ascend_rt::host::pool().parallel_for(n.div_ceil(cols_per_item), &|item| {
        let (j0, j1) = (item * cols_per_item, n.min((item + 1) * cols_per_item));
        // SAFETY: items own disjoint column ranges [j0, j1) of every row of `c`, which holds m × n
        // elements and outlives the parallel_for; `run` only touches those columns.
        unsafe { run(level, m, n, k, a, &b, c_addr as *mut f32, j0, j1) }
    });
}

/// # Safety
/// `c` holds `m × n` elements; only columns `j0..j1` are written; the CPU supports `level`.
#[allow(clippy::too_many_arguments)]
unsafe fn run<B: ToF32 + Lanes>(
    level: Level,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &View<'_, B>,
    c: *mut f32,
    j0: usize,
    j1: usize,
) {
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller checked the CPU; forwarded contract.
        Level::Avx512 | Level::Avx512Bf16 => unsafe { x86_avx512(m, n, k, a, b, c, j0, j1) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Level::Avx2 => unsafe { x86_avx2(m, n, k, a, b, c, j0, j1) },
        // SAFETY: forwarded contract.
        _ => unsafe { body::<B, Generic>(m, n, k, a, b, c, j0, j1) },
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn x86_avx512<B: ToF32 + Lanes>(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &View<'_, B>,
    c: *mut f32,
    j0: usize,
    j1: usize,
) {
    // SAFETY: forwarded contract; the body is inlined here and compiled with AVX-512.
    unsafe { body::<B, crate::simd::Avx512>(m, n, k, a, b, c, j0, j1) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn x86_avx2<B: ToF32 + Lanes>(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &View<'_, B>,
    c: *mut f32,
    j0: usize,
    j1: usize,
) {
    // SAFETY: as above, with AVX2 and FMA.
    unsafe { body::<B, Generic>(m, n, k, a, b, c, j0, j1) }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn body<B: ToF32 + Lanes, S: Simd>(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &View<'_, B>,
    c: *mut f32,
    j0: usize,
    j1: usize,
) {
    let mut row = vec![0f32; if b.rs == 1 { k } else { j1 - j0 }];
    if b.rs == 1 && m > 1 {
        // W is [n, k]: each weight row against the m activation rows, a block of k at a time, so
        // the activation rows stay in L1 while the block is swept across this item's weight rows.
        let mut part = [0f32; MAX_M];
        let kblock = (A_BLOCK_BYTES / 4 / m).max(16) / 16 * 16;
        for kb in (0..k).step_by(kblock) {
            let len = kblock.min(k - kb);
            for j in j0..j1 {
                let w = &b.data[j * b.cs + kb..j * b.cs + kb + len];
                // At most 8 rows per call: more accumulators and row addresses than registers spill.
                for i0 in (0..m).step_by(8) {
                    let i1 = m.min(i0 + 8);
                    S::rows_dot(&a[i0 * k + kb..], k, w, &mut part[i0..i1]);
                }
                for (i, p) in part[..m].iter().enumerate() {
                    // SAFETY: (i, j) is inside c (contract).
                    unsafe {
                        let o = c.add(i * n + j);
                        *o = if kb == 0 { *p } else { *o + p };
                    }
                }
            }
        }
    } else if b.rs == 1 {
        // W is [n, k]: row j of W is contiguous.
        for j in j0..j1 {
            let w = &b.data[j * b.cs..j * b.cs + k];
            if m == 1 && B::INLINE_CONVERT {
                // One pass: each weight is converted in registers as it is streamed.
                // SAFETY: (0, j) is inside c (contract).
                unsafe { *c.add(j) = dot(w, &a[..k]) };
                continue;
            }
            B::slice_to_f32(w, &mut row);
            for i in 0..m {
                // SAFETY: (i, j) is inside c (contract).
                unsafe { *c.add(i * n + j) = dot(&row, &a[i * k..(i + 1) * k]) };
            }
        }
    } else {
        // B is [k, n]: accumulate rows of B into the output rows.
        for i in 0..m {
            // SAFETY: columns j0..j1 of row i are inside c and ours (contract).
            unsafe { std::slice::from_raw_parts_mut(c.add(i * n + j0), j1 - j0) }.fill(0.0);
        }
        for p in 0..k {
            let src = &b.data[p * b.rs + j0..p * b.rs + j1];
            B::slice_to_f32(src, &mut row);
            for i in 0..m {
                let av = a[i * k + p];
                // SAFETY: as above.
                let out = unsafe { std::slice::from_raw_parts_mut(c.add(i * n + j0), j1 - j0) };
                out.iter_mut().zip(&row).for_each(|(o, r)| *o += av * r);
            }
        }
    }
}

/// Dot product with `LANES` independent partial sums (so it vectorises), converting `x` inline.
#[inline(always)]
fn dot<X: ToF32>(x: &[X], y: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (xc, yc) = (x.chunks_exact(LANES), y.chunks_exact(LANES));
    let tail: f32 = xc.remainder().iter().zip(yc.remainder()).map(|(a, b)| a.to_f32() * b).sum();
    for (xs, ys) in xc.zip(yc) {
        // Fixed-size arrays: no bounds checks, so the lanes become one vector operation.
        let (xs, ys): (&[_; LANES], &[f32; LANES]) = (xs.try_into().unwrap(), ys.try_into().unwrap());
        for l in 0..LANES {
            acc[l] += xs[l].to_f32() * ys[l];
        }
    }
    // Reduce by halves: a sequential sum of the lanes would be one long dependency chain.
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for l in 0..width {
            acc[l] += acc[l + width];
        }
    }
    acc[0] + tail
}
