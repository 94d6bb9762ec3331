//! Decode-shaped matmul (m ≤ 32): bandwidth-bound, so each weight is read from memory exactly once.
//! Weights stored `[n, k]` (linear layers): rows of W, two at a time (one for m = 1), are dotted
//! with the m rows of A (which stay in cache), converted in registers as they stream
//! (`Simd::rows_dot`). Weights
//! stored `[k, n]`: each row of B is converted once and added into the m output rows. Work is split
//! over the compute pool by columns; the loops are compiled once per SIMD level.

use crate::cpu::Level;
use crate::gemm::{ToF32, View};
use crate::simd::{Generic, Lanes, Simd};

/// Bytes of activations one block of k may hold (for weights stored `[n, k]`): a quarter of a 1 MiB
/// L2, so the m activation rows of a block stay there while the weights stream past. (Blocks small
/// enough for L1 cost more than they save: each weight row is then read in short pieces, 16 rows
/// interleaved, which the prefetchers follow badly; m = 16 ran at half the speed.)
const A_BLOCK_BYTES: usize = 256 << 10;

/// Largest m that takes this path: up to 32 rows it beats the packed GEMM (m = 17: 2.5×, m = 32:
/// 1.7×, transposed 4096² weights); at 64 the GEMM wins for bf16.
pub const MAX_M: usize = 32;

/// `c (m × n, f32) = a (m × k, f32, row-major) · b`.
pub fn decode<B: ToF32 + Lanes>(level: Level, m: usize, n: usize, k: usize, a: &[f32], b: View<'_, B>, c: &mut [f32]) {
    // `run`'s SIMD code is sound only where the CPU has the level.
    assert!(level <= crate::cpu::detected());
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
        // SAFETY: `decode` asserted the CPU has the level; forwarded contract.
        Level::Avx512 | Level::Avx512Bf16 | Level::Amx => unsafe { x86_avx512(m, n, k, a, b, c, j0, j1) },
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
#[target_feature(enable = "avx2,fma,f16c")]
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
    // SAFETY: as above, with AVX2, FMA and F16C.
    unsafe { body::<B, crate::simd::Avx2>(m, n, k, a, b, c, j0, j1) }
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
    if b.rs == 1 {
        // W is [n, k]: each weight row against the m activation rows, a block of k at a time, so
        // the activation rows stay in L2 while the block is swept across this item's weight rows.
        let mut part = [[0f32; MAX_M]; 2];
        let kblock = (A_BLOCK_BYTES / 4 / m).max(16) / 16 * 16;
        for kb in (0..k).step_by(kblock) {
            let len = kblock.min(k - kb);
            // Two weight rows at a time (each activation chunk loaded once for both), then a last one;
            // one at a time for m = 1 (nothing to share, and one stream prefetches better).
            let mut j = j0;
            while j < j1 {
                let pair = j + 1 < j1 && m > 1;
                let w = |j: usize| &b.data[j * b.cs + kb..j * b.cs + kb + len];
                // At most 8 rows per call: more accumulators and row addresses than registers spill.
                for i0 in (0..m).step_by(8) {
                    let (i1, a) = (m.min(i0 + 8), &a[i0 * k + kb..]);
                    let [p0, p1] = &mut part;
                    if pair {
                        S::rows_dot2(a, k, [w(j), w(j + 1)], [&mut p0[i0..i1], &mut p1[i0..i1]]);
                    } else {
                        S::rows_dot(a, k, w(j), &mut p0[i0..i1]);
                    }
                }
                for (jj, part) in part.iter().enumerate().take(if pair { 2 } else { 1 }) {
                    for (i, p) in part[..m].iter().enumerate() {
                        // SAFETY: (i, j + jj) is inside c (contract).
                        unsafe {
                            let o = c.add(i * n + j + jj);
                            *o = if kb == 0 { *p } else { *o + p };
                        }
                    }
                }
                j += if pair { 2 } else { 1 };
            }
        }
    } else {
        // B is [k, n]: accumulate rows of B into the output rows.
        let mut row = vec![0f32; j1 - j0];
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
