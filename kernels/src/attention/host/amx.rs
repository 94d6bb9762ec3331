//! Tiled attention for bf16 inputs on AMX tiles ([`Level::Amx`](crate::cpu::Level::Amx)): the
//! tile unit reads the queries and the probabilities where they lie, so neither is packed.
//!
//! Per item the queries are copied once into rows of the depth padded to 32 (they are the A tiles
//! of `S = Q·Kᵀ` as they are). Per key tile, keys and values are packed once into the pair layout
//! B tiles take (keys: pairs of depths per key; values: pairs of keys per column), then every block
//! of 32 rows runs in turn: the scores of the key groups any of its rows sees, the online-softmax
//! step of each row, which writes its probabilities in bf16 (the A tiles of `O += P·V`), and the
//! value product, accumulated onto the f32 output in place. The scores are row-major (unlike the
//! other tiled path's `Sᵀ`) so that the probabilities are A tiles with no transpose; the softmax
//! then runs along rows, 16 keys per vector.
//!
//! Measured and dropped: running the next block's score jobs and the previous block's value jobs
//! between the softmax rows of this one (software pipelining of the tile unit and the vector
//! units) was about 15 % slower here; 256 keys per tile and 768 rows per item were no better.

use super::{write_rows, Geometry, Item, KvSource, Partial, Seq};
use crate::amx::{product_2x2, Operand, Tiles};
use crate::gemm::grow_aligned;
use crate::matmul::Element;

/// Keys per tile.
const KEYS: usize = 512;
/// Rows per block: one 2 × 2 tile product high.
const ROWS: usize = 32;
/// Keys per group: the width of a 2 × 2 tile product, and the step of its depth.
const GROUP: usize = 32;
/// Row strides (elements) of the scores (f32) and probabilities (bf16) of a block: a cache line
/// past a power of two, so the 16 rows of a tile fall in different L1 sets.
const S_STRIDE: usize = KEYS + 16;
const P_STRIDE: usize = KEYS + 32;

/// Whether the path takes this geometry: head sizes in whole 16-column tile halves (64, 80, 96,
/// 128, 256, ...).
pub(super) fn usable(g: &Geometry) -> bool {
    g.head_dim.is_multiple_of(16)
}

/// Buffers kept per thread between items (about 0.65 MB at head size 128): each use writes what it
/// reads.
#[derive(Default)]
struct Buffers {
    q: Vec<u16>,
    k: Vec<u16>,
    v: Vec<u16>,
    s: Vec<f32>,
    p: Vec<u16>,
    o: Vec<f32>,
    offs: Vec<usize>,
}

thread_local! {
    static BUFFERS: std::cell::Cell<Buffers> = std::cell::Cell::default();
}

/// Runs a tiled item: `q` is the raw query tensor and where each row of the item starts in it,
/// `src` the raw key and value tensors `kv` indexes, `pos` the keys each row sees. Writes the item's
/// rows into `own` when given (and returns true), else leaves their unnormalised output and
/// softmax states in `part`.
///
/// # Safety
/// The CPU has [`Level::Amx`](crate::cpu::Level::Amx) (AMX tiles granted, AVX-512 BF16), and
/// [`usable`] holds for `g`; `own`, if given, is the output, whose rows of this item nobody else
/// writes meanwhile.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn tiled<T: Element>(
    g: &Geometry,
    seqs: &[Seq],
    kv: &KvSource<'_, T>,
    src: (&[u16], &[u16]),
    it: Item,
    (q, starts): (&[u16], &[usize]),
    pos: &[(usize, usize)],
    part: &mut Partial,
    own: Option<*mut T>,
) -> bool {
    let d = g.head_dim;
    let dp = d.next_multiple_of(GROUP);
    let rows = part.rows.len();
    let rows_p = rows.next_multiple_of(ROWS);
    let mut b = BUFFERS.take();
    let qb = grow_aligned(&mut b.q, rows_p * dp);
    for (r, dst) in qb.chunks_exact_mut(dp).enumerate() {
        let (head, pad) = dst.split_at_mut(d);
        match starts.get(r) {
            Some(&at) => head.copy_from_slice(&q[at..at + d]),
            None => head.fill(0),
        }
        pad.fill(0);
    }
    let o = grow_aligned(&mut b.o, rows_p * dp);
    // Whether a block's output rows hold anything yet: its first value product overwrites them
    // (no zeroing of the whole output first).
    let mut written = vec![false; rows_p / ROWS];
    let kb = grow_aligned(&mut b.k, KEYS * dp);
    let vb = grow_aligned(&mut b.v, KEYS * dp);
    let s = grow_aligned(&mut b.s, ROWS * S_STRIDE);
    let p = grow_aligned(&mut b.p, ROWS * P_STRIDE);
    let offs = &mut b.offs;
    let _tiles = Tiles::configure();
    for j0 in (it.k0..it.k1).step_by(KEYS) {
        let j1 = it.k1.min(j0 + KEYS);
        kv.offsets(it.seq, it.h0, (j0, j1), g, offs);
        // SAFETY: AVX-512F (the contract); `kv` names rows inside the tensors, d is a multiple of
        // 16 (`usable`), and the buffers hold KEYS keys of dp.
        unsafe {
            pack_keys(src.0, offs, d, dp, kb);
            pack_values(src.1, offs, d, dp, vb);
        }
        for r0 in (0..rows).step_by(ROWS) {
            let block = r0..rows.min(r0 + ROWS);
            // The key groups that some row of the block sees.
            let lo = block.clone().map(|r| pos[r].0).min().unwrap_or(j1).max(j0);
            let hi = block.clone().map(|r| pos[r].1).max().unwrap_or(j0).min(j1);
            if lo >= hi {
                continue;
            }
            let (c0, c1) = ((lo - j0) / GROUP * GROUP, (hi - j0).next_multiple_of(GROUP));
            // SAFETY: the tiles are configured; the A tiles are rows r0..r0 + 32 of `qb` (rows_p
            // of dp), the B tiles key groups below c1 ≤ KEYS of `kb`, the output columns below c1
            // of the 32 rows of `s`.
            unsafe {
                let a = Operand { ptr: qb.as_ptr().add(r0 * dp), stride: dp * 2, half: 16 * dp, step: GROUP };
                for c in (c0..c1).step_by(GROUP) {
                    let b = Operand { ptr: kb.as_ptr().add(c * dp), stride: 64, half: 16 * dp, step: 16 * GROUP };
                    product_2x2(dp / GROUP, a, b, s.as_mut_ptr().add(c), S_STRIDE * 4, false);
                }
            }
            for (i, r) in block.clone().enumerate() {
                let visible = (pos[r].0.clamp(j0, j1) - j0 - c0, (pos[r].1.clamp(j0, j1) - j0).saturating_sub(c0));
                let (sr, pr) = (&s[i * S_STRIDE + c0..i * S_STRIDE + c1], &mut p[i * P_STRIDE + c0..i * P_STRIDE + c1]);
                // SAFETY: the CPU has AVX-512 BF16 (the contract); c1 − c0 is a multiple of 32.
                let alpha =
                    unsafe { super::super::softmax::x86::update_row_bf16(&mut part.rows[r], sr, visible, g.scale, pr) };
                if alpha != 1.0 && written[r0 / ROWS] {
                    o[r * dp..(r + 1) * dp].iter_mut().for_each(|x| *x *= alpha);
                }
            }
            // Padding rows multiply nothing.
            for i in block.len()..ROWS {
                p[i * P_STRIDE + c0..i * P_STRIDE + c1].fill(0);
            }
            // SAFETY: the tiles are configured; the A tiles are the block's probabilities, columns
            // c0..c1; the B tiles key pairs c0/2..c1/2 of each column group of `vb`; the output
            // rows r0..r0 + 32 of `o`.
            unsafe {
                let a = Operand { ptr: p.as_ptr().add(c0), stride: P_STRIDE * 2, half: 16 * P_STRIDE, step: GROUP };
                for cg in (0..dp).step_by(GROUP) {
                    let b = Operand {
                        ptr: vb.as_ptr().add(cg * KEYS + c0 * 16),
                        stride: 64,
                        half: 16 * KEYS,
                        step: 16 * GROUP,
                    };
                    product_2x2((c1 - c0) / GROUP, a, b, o.as_mut_ptr().add(r0 * dp + cg), dp * 4, written[r0 / ROWS]);
                }
            }
            written[r0 / ROWS] = true;
        }
    }
    for (blk, _) in written.iter().enumerate().filter(|(_, &w)| !w) {
        o[blk * ROWS * dp..(blk + 1) * ROWS * dp].fill(0.0);
    }
    let done = match own {
        Some(out) => {
            // SAFETY: the contract.
            unsafe { write_rows(g, seqs, it, (&part.rows, o, dp), out) };
            true
        }
        None => {
            part.acc.clear();
            part.acc.extend(o.chunks_exact(dp).take(rows).flat_map(|row| &row[..d]));
            false
        }
    };
    BUFFERS.set(b);
    done
}

/// Packs the key rows at `offs` (and zero keys up to a multiple of [`GROUP`]) as B tiles of
/// `S = Q·Kᵀ`: per 16 keys, `dp / 2` rows of 16 (depth 2p, 2p + 1) pairs, depths from `d` zero.
/// Each 16 keys × 16 pairs is a transpose of 32-bit words, done in registers.
///
/// # Safety
/// AVX-512F; `d` even, every row `offs` names inside `k`, `kb` holding the packed keys.
#[target_feature(enable = "avx512f")]
unsafe fn pack_keys(k: &[u16], offs: &[usize], d: usize, dp: usize, kb: &mut [u16]) {
    use std::arch::x86_64::*;
    let pairs = d / 2;
    for g in 0..offs.len().div_ceil(16).next_multiple_of(2) {
        let group = &mut kb[g * 16 * dp..(g + 1) * 16 * dp];
        for p0 in (0..dp / 2).step_by(16) {
            let mask = ((1u32 << (pairs.saturating_sub(p0)).min(16)) - 1) as __mmask16;
            // SAFETY: masked loads of the pairs below d/2 of rows inside `k` (the contract); the
            // stores write 16 rows of 16 pairs inside `group`.
            unsafe {
                let rows: [__m512i; 16] = std::array::from_fn(|i| match offs.get(g * 16 + i) {
                    Some(&o) => _mm512_maskz_loadu_epi32(mask, k.as_ptr().add(o + 2 * p0) as *const i32),
                    None => _mm512_setzero_si512(),
                });
                for (i, row) in crate::simd::transpose16(rows).iter().enumerate() {
                    _mm512_storeu_si512(group.as_mut_ptr().add((p0 + i) * 32) as *mut __m512i, *row);
                }
            }
        }
    }
}

/// Packs the value rows at `offs` (and zero keys up to a multiple of [`GROUP`]) as B tiles of
/// `O += P·V`: per 16 columns, [`KEYS`]` / 2` rows of 16 (key 2q, 2q + 1) pairs, columns from `d`
/// zero.
///
/// # Safety
/// AVX-512F; `d` a multiple of 16, every row `offs` names inside `v`, `vb` holding the packed
/// values.
#[target_feature(enable = "avx512f")]
unsafe fn pack_values(v: &[u16], offs: &[usize], d: usize, dp: usize, vb: &mut [u16]) {
    use std::arch::x86_64::*;
    for pair in 0..offs.len().next_multiple_of(GROUP) / 2 {
        let (a, b) = (offs.get(2 * pair), offs.get(2 * pair + 1));
        for col in (0..dp).step_by(16) {
            // SAFETY: 16 values of rows inside `v` (the contract; col < d), one 64-byte store
            // inside `vb`.
            unsafe {
                let widen = |row: Option<&usize>| match row {
                    Some(&o) if col < d => {
                        _mm512_cvtepu16_epi32(_mm256_loadu_si256(v.as_ptr().add(o + col) as *const __m256i))
                    }
                    _ => _mm512_setzero_si512(),
                };
                let pairs = _mm512_or_si512(widen(a), _mm512_slli_epi32::<16>(widen(b)));
                _mm512_storeu_si512(vb.as_mut_ptr().add(col * KEYS + pair * 32) as *mut __m512i, pairs);
            }
        }
    }
}
