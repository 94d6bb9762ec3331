//! The host GEMM: `C (m×n, f32) = A (m×k) · B (k×n)`, inputs of any element type converted to f32 while
//! packing, accumulation in f32. BLIS-style: B is packed once per `KC` slice of k into strips of `NR`
//! columns, then work items (a block of rows × a group of strips) pack their rows of A into panels of
//! `MR` rows and run an `MR × NR` microkernel per (panel, strip). Items run on the shared compute pool.

use crate::cpu::Level;
use half::{bf16, f16};

/// Elements that can be read as f32 (the inputs of a GEMM).
pub trait ToF32: Copy + Send + Sync + 'static {
    /// The value as f32 (exact for f16 and bf16).
    fn to_f32(self) -> f32;

    /// `to_f32` compiles to a few vector instructions inside a loop (true for f32 and bf16, whose
    /// conversion is a shift), so kernels may convert inline instead of through a buffer.
    const INLINE_CONVERT: bool = false;

    /// The slice itself when `Self` is f32 (no conversion needed).
    fn as_f32_slice(_: &[Self]) -> Option<&[f32]> {
        None
    }

    /// The slice itself, writable, when `Self` is f32 (results can go straight into it).
    fn as_f32_slice_mut(_: &mut [Self]) -> Option<&mut [f32]> {
        None
    }

    /// Converts a run of values (f16 uses F16C when the CPU has it).
    fn slice_to_f32(src: &[Self], dst: &mut [f32]) {
        dst.iter_mut().zip(src).for_each(|(d, s)| *d = s.to_f32());
    }
}

impl ToF32 for f32 {
    const INLINE_CONVERT: bool = true;

    fn as_f32_slice(s: &[f32]) -> Option<&[f32]> {
        Some(s)
    }

    fn as_f32_slice_mut(s: &mut [f32]) -> Option<&mut [f32]> {
        Some(s)
    }

    fn to_f32(self) -> f32 {
        self
    }
}

impl ToF32 for f16 {
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }

    fn slice_to_f32(src: &[Self], dst: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f32_slice(&mut dst[..src.len()]);
    }
}

impl ToF32 for bf16 {
    const INLINE_CONVERT: bool = true;

    /// bf16 is the top half of an f32: a shift, exact for every value (NaN payloads included), and
    /// without the branch of `half`'s conversion, so loops over it vectorise.
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }
}

/// A strided matrix view: element (r, c) is `data[r * rs + c * cs]`.
#[derive(Clone, Copy)]
pub struct View<'a, T> {
    /// The elements.
    pub data: &'a [T],
    /// Row stride.
    pub rs: usize,
    /// Column stride.
    pub cs: usize,
}

/// Depth of one packed slice of k for f32; bf16 pairs take `2 · KC` (the same bytes).
const KC: usize = 1024;
/// Largest microkernel tile (MR × NR): AMX's 32 × 32.
const TILE: usize = crate::amx::MR * crate::amx::NR;
/// Strips of B per work item.
const STRIPS_PER_ITEM: usize = 8;

/// How a microkernel wants its operands packed.
#[derive(Clone, Copy)]
struct Layout {
    /// Rows of an A panel (and of the tile).
    mr: usize,
    /// Columns of a B strip (and of the tile).
    nr: usize,
    /// Consecutive depths interleaved per B column (1 for f32, 2 for bf16 pairs), and per A row
    /// unless `amx`.
    ks: usize,
    /// A panels in AMX tile order (rows of `amx::K_STEP` depths, one tile after the other), depths
    /// padded to `amx::K_STEP`.
    amx: bool,
}

impl Layout {
    /// The f32 microkernel of a level.
    fn f32(level: Level) -> Layout {
        let (mr, nr) = match level {
            Level::Avx512 | Level::Avx512Bf16 | Level::Amx => (12, 32),
            Level::Avx2 => (6, 16),
            Level::Portable => (4, 16),
        };
        Layout { mr, nr, ks: 1, amx: false }
    }

    /// The bf16 microkernel of a level (AVX-512 BF16 at least): AMX tiles, else `vdpbf16ps`.
    fn bf16(level: Level) -> Layout {
        match level {
            Level::Amx => Layout { mr: crate::amx::MR, nr: crate::amx::NR, ks: 2, amx: true },
            _ => Layout { mr: 12, nr: 32, ks: 2, amx: false },
        }
    }

    /// Packed depth of a slice of `kc` depths (zero-padded up to it).
    fn padded(&self, kc: usize) -> usize {
        let step = if self.amx { crate::amx::K_STEP } else { self.ks };
        kc.div_ceil(step) * step
    }

    /// Consecutive depths per row of an A panel.
    fn a_interleave(&self) -> usize {
        if self.amx {
            crate::amx::K_STEP
        } else {
            self.ks
        }
    }

    /// Configured AMX tiles for the products of one GEMM, when the layout is AMX's.
    fn tiles(&self) -> Option<crate::amx::Tiles> {
        self.amx.then(crate::amx::Tiles::configure)
    }
}

/// `c = a · b` (row-major `c`, `m × n`), at `level` (which the CPU must support), in f32.
pub fn gemm<A: ToF32, B: ToF32>(
    level: Level,
    m: usize,
    n: usize,
    k: usize,
    a: View<'_, A>,
    b: View<'_, B>,
    c: &mut [f32],
) {
    gemm_into(level, (m, n, k), a, b, c, false);
}

/// `c = a · b`, or `c += a · b` when `accumulate`. Called from inside a pool job (as the attention
/// kernels do, per tile) it runs on the calling thread.
pub fn gemm_into<A: ToF32, B: ToF32>(
    level: Level,
    (m, n, k): (usize, usize, usize),
    a: View<'_, A>,
    b: View<'_, B>,
    c: &mut [f32],
    accumulate: bool,
) {
    let layout = Layout::f32(level);
    // A's panels are strips of Aᵀ.
    let at = View { data: a.data, rs: a.cs, cs: a.rs };
    let pack_a = |depths, pi, panel: &mut [f32]| pack_f32(&at, depths, pi, m, layout.mr, panel);
    let pack_b = |depths, s, strip: &mut [f32]| pack_f32(&b, depths, s, n, layout.nr, strip);
    drive(level, (m, n, k), layout, (&pack_a, &pack_b), &f32_microkernel(level), c, accumulate);
}

/// Strip `s` (`width` wide, of `cols` columns) of `v` for f32 microkernels: f32 values by the
/// vector packers of [`Packed`] (element by element, packing A cost 8 % of a 1024³ matmul); other
/// types converted a run at a time ([`ToF32::slice_to_f32`]: F16C for f16) and packed likewise (value
/// by value, f16 matmul ran at 0.4 of f32 at 512³).
#[inline(always)]
fn pack_f32<T: ToF32>(
    v: &View<'_, T>,
    (pc, kc, kcp): (usize, usize, usize),
    s: usize,
    cols: usize,
    width: usize,
    out: &mut [f32],
) {
    if let Some(data) = T::as_f32_slice(v.data) {
        return f32::pack_a_panel(&View { data, rs: v.rs, cs: v.cs }, (pc, kc, kcp), s, cols, (width, 1), out);
    }
    let n = width.min(cols - s * width);
    if v.rs == 1 {
        // Each column is a run of depths (the rows of A, the columns of transposed weights):
        // converted into f32 lines, packed from there.
        let mut lines = CONVERTED.take();
        lines.resize(n * kc, 0.0);
        for (j, line) in lines.chunks_exact_mut(kc).enumerate() {
            let start = (s * width + j) * v.cs + pc;
            T::slice_to_f32(&v.data[start..start + kc], line);
        }
        f32::pack_a_panel(&View { data: &lines, rs: 1, cs: kc }, (0, kc, kcp), 0, n, (width, 1), out);
        CONVERTED.set(lines);
    } else if v.cs == 1 {
        // Each depth's columns side by side (a row-major B): converted into place.
        for p in 0..kc {
            let start = (pc + p) * v.rs + s * width;
            T::slice_to_f32(&v.data[start..start + n], &mut out[p * width..p * width + n]);
        }
        zero_padding(out, kc, kcp, n, width, 1);
    } else {
        pack_strip(v, &T::to_f32, (pc, kc, kcp), s, cols, (width, 1), out);
    }
}

thread_local! {
    /// [`pack_f32`]'s converted lines (a panel's or strip's worth), kept between calls.
    static CONVERTED: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Packing buffers reused across calls of [`gemm_rows`] (f32) or [`gemm_rows_bf16`] (u16).
#[derive(Default)]
pub(crate) struct Scratch<P = f32> {
    a: Vec<P>,
    b: Vec<P>,
}

/// `c (+)= a · b` on the calling thread, for kernels that multiply small tiles inside a pool job:
/// `a` is `m × k` row-major with row stride `lda` (or, `a_transposed`, stored `k × m` with row
/// stride `lda`), `b` is `k × n` row-major with row stride `ldb`, `c` is `m × n` with row stride
/// `ldc`. Both operands are read along their rows while packing. Panics if an operand is shorter
/// than its shape or `level` is beyond the CPU.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn gemm_rows(
    level: Level,
    dims: (usize, usize, usize),
    a: (&[f32], usize, bool),
    b: (&[f32], usize),
    c: (&mut [f32], usize),
    accumulate: bool,
    scratch: &mut Scratch,
) {
    assert!(level <= crate::cpu::detected());
    rows_with(dims, Layout::f32(level), a, b, c, accumulate, scratch, &f32_microkernel(level));
}

/// [`gemm_rows`] for bf16 operands (their raw bits), multiplied with f32 sums by AMX tiles at
/// [`Level::Amx`], else by `vdpbf16ps`. Panics as [`gemm_rows`] does, and if `level` is below
/// AVX-512 BF16.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn gemm_rows_bf16(
    level: Level,
    dims: (usize, usize, usize),
    a: (&[u16], usize, bool),
    b: (&[u16], usize),
    c: (&mut [f32], usize),
    accumulate: bool,
    scratch: &mut Scratch<u16>,
) {
    assert!(Level::Avx512Bf16 <= level && level <= crate::cpu::detected());
    rows_with(dims, Layout::bf16(level), a, b, c, accumulate, scratch, bf16_microkernel(level));
}

/// The body of [`gemm_rows`]: packs B per `KC` slice into `nr`-wide strips and A into `mr`-row
/// panels (as `layout` says, zero-padded to the packed depth `kcp`), then runs `tile` on each
/// (panel, strip) pair.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn rows_with<P: Packed>(
    (m, n, k): (usize, usize, usize),
    layout: Layout,
    (a, lda, a_transposed): (&[P], usize, bool),
    (b, ldb): (&[P], usize),
    (c, ldc): (&mut [f32], usize),
    accumulate: bool,
    scratch: &mut Scratch<P>,
    tile: &Tile<'_, P>,
) {
    let Layout { mr, nr, ks, .. } = layout;
    assert!(m > 0 && n > 0 && k > 0 && matches!(ks, 1 | 2));
    // The f32 microkernels read full panels of a transposed A (its rows are runs of m values, such
    // as the attention's probabilities `Pᵀ`) where they are, `lda` apart: packing them was a copy of
    // all of A per call.
    let in_place = a_transposed && ks == 1 && !layout.amx;
    let packed_lda = mr * layout.a_interleave();
    let a_extent = if a_transposed { (k - 1) * lda + m } else { (m - 1) * lda + k };
    assert!(a.len() >= a_extent && b.len() >= (k - 1) * ldb + n && c.len() >= (m - 1) * ldc + n);
    let strips = n.div_ceil(nr);
    let panels = m.div_ceil(mr);
    // A's panels are packed as strips of Aᵀ (k × m).
    let b_view = View { data: b, rs: ldb, cs: 1 };
    let at_view = if a_transposed { View { data: a, rs: lda, cs: 1 } } else { View { data: a, rs: 1, cs: lda } };
    let mut t = TileBuffer::new();
    let depth = KC * ks;
    for pc in (0..k).step_by(depth) {
        let kc = depth.min(k - pc);
        let kcp = layout.padded(kc);
        // Reused as they are: packing writes every slot, padding included.
        let a_panel = mr * kcp;
        let packed_b = grow_aligned(&mut scratch.b, strips * kcp * nr);
        let packed_a = grow_aligned(&mut scratch.a, panels * a_panel);
        for (sidx, strip) in packed_b.chunks_exact_mut(kcp * nr).enumerate() {
            P::pack_b_strip(&b_view, (pc, kc, kcp), sidx, n, (nr, ks), strip);
        }
        for (pi, panel) in packed_a.chunks_exact_mut(a_panel).enumerate() {
            if !(in_place && (pi + 1) * mr <= m) {
                P::pack_a_panel(&at_view, (pc, kc, kcp), pi, m, (mr, layout.a_interleave()), panel);
            }
        }
        let _tiles = layout.tiles();
        for (sidx, strip) in packed_b.chunks_exact(kcp * nr).enumerate() {
            let cols = nr.min(n - sidx * nr);
            for (pi, panel) in packed_a.chunks_exact(a_panel).enumerate() {
                let rows = mr.min(m - pi * mr);
                match in_place && rows == mr {
                    true => tile(kcp, &a[pc * lda + pi * mr..], lda, strip, &mut t.0),
                    false => tile(kcp, panel, packed_lda, strip, &mut t.0),
                }
                // SAFETY: the block (rows × cols at row pi·mr, column sidx·nr) is inside `c`, whose
                // length was checked above.
                unsafe {
                    let c0 = c.as_mut_ptr().add(pi * mr * ldc + sidx * nr);
                    store(&t.0[..mr * nr], nr, c0, ldc, rows, cols, pc > 0 || accumulate);
                }
            }
        }
    }
}

/// Writes the values at one depth `p` of consecutive columns (or rows) into a packed strip (or
/// panel) from `dst`, its first slot at that depth, converted by `conv`: side by side when k values
/// are not interleaved (`ks` 1), else `first` interleaved with the next depth's values (`second`;
/// its slots are left alone when `p` is the last depth, for the padding).
#[inline(always)]
fn put<T: Copy, P: Copy>(dst: &mut [P], ks: usize, first: &[T], second: Option<&[T]>, conv: &impl Fn(T) -> P) {
    let dst = &mut dst[..first.len() * ks];
    match (ks, second) {
        (1, _) => dst.iter_mut().zip(first).for_each(|(d, &x)| *d = conv(x)),
        (_, Some(second)) => {
            for ((pair, &x), &y) in dst.chunks_exact_mut(2).zip(first).zip(second) {
                pair[0] = conv(x);
                pair[1] = conv(y);
            }
        }
        (_, None) => {
            for (pair, &x) in dst.chunks_exact_mut(2).zip(first) {
                pair[0] = conv(x);
            }
        }
    }
}

/// `c = a · b` for bf16 inputs with native bf16 products: AMX tiles at [`Level::Amx`], else
/// `vdpbf16ps` (pairs of k per lane). Panics if `level` is below AVX-512 BF16 or beyond the CPU.
pub fn gemm_bf16(level: Level, (m, n, k): (usize, usize, usize), a: View<'_, bf16>, b: View<'_, bf16>, c: &mut [f32]) {
    assert!(level >= Level::Avx512Bf16);
    let tile = bf16_microkernel(level);
    let layout = Layout::bf16(level);
    let at = View { data: a.data, rs: a.cs, cs: a.rs };
    let (a_layout, b_layout) = ((layout.mr, layout.a_interleave()), (layout.nr, layout.ks));
    let pack_a = |depths, pi, panel: &mut [u16]| pack_strip(&at, &bf16::to_bits, depths, pi, m, a_layout, panel);
    let pack_b = |depths, s, strip: &mut [u16]| pack_strip(&b, &bf16::to_bits, depths, s, n, b_layout, strip);
    drive(level, (m, n, k), layout, (&pack_a, &pack_b), tile, c, false);
}

/// The bf16 microkernel of `level` (see [`Layout::bf16`]).
fn bf16_microkernel(level: Level) -> &'static Tile<'static, u16> {
    match level {
        Level::Amx => &amx_tile,
        _ => &bf16_tile,
    }
}

/// [`crate::amx::tile_bf16`] as a [`Tile`] (panels always packed: `_lda` is theirs).
fn amx_tile(kcp: usize, ap: &[u16], _lda: usize, bp: &[u16], t: &mut [f32; TILE]) {
    crate::amx::tile_bf16(kcp, ap, bp, t)
}

/// The bf16 microkernel on packed pairs: `tile[r * 32 + j] = Σ_p a[p][r] · b[p][j]` over `kcp` (even) k
/// (panels always packed: `_lda` is theirs).
fn bf16_tile(kcp: usize, ap: &[u16], _lda: usize, bp: &[u16], t: &mut [f32; TILE]) {
    assert!(ap.len() >= kcp * 12 && bp.len() >= kcp * 32 && kcp.is_multiple_of(2));
    #[cfg(target_arch = "x86_64")]
    // SAFETY: callers checked that the CPU has AVX-512 BF16; the panels' lengths were just checked.
    unsafe {
        x86::tile_avx512_bf16(kcp, ap.as_ptr(), bp.as_ptr(), t)
    };
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = t;
        unreachable!("AVX-512 BF16 is x86-64 only")
    }
}

/// Whether the bf16 microkernel (`vdpbf16ps`) multiplies about as fast as the f32 one on converted
/// values, or faster (its promise: two products per lane). Timed once: both on panels of 256
/// depths in L1, the same products each, alternating, best of seven runs of 32 tiles each (about
/// 1 ms). False where the CPU lacks AVX-512 BF16.
pub(crate) fn bf16_products_pay() -> bool {
    static PAYS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PAYS.get_or_init(|| {
        if crate::cpu::detected() < Level::Avx512Bf16 {
            return false;
        }
        const DEPTH: usize = 256;
        let (a, b) = (vec![0.5f32; DEPTH * 12], vec![0.25f32; DEPTH * 32]);
        let (a16, b16) =
            (vec![bf16::from_f32(0.5).to_bits(); DEPTH * 12], vec![bf16::from_f32(0.25).to_bits(); DEPTH * 32]);
        let mut t = TileBuffer::new();
        let mut time = |run: &mut dyn FnMut(&mut [f32; TILE])| {
            let start = std::time::Instant::now();
            for _ in 0..32 {
                run(&mut t.0);
                std::hint::black_box(&t.0);
            }
            start.elapsed()
        };
        let (mut native, mut converted) = (std::time::Duration::MAX, std::time::Duration::MAX);
        for _ in 0..7 {
            native = native.min(time(&mut |t| bf16_tile(DEPTH, &a16, 24, &b16, t)));
            converted = converted.min(time(&mut |t| microkernel(Level::Avx512, DEPTH, &a, 12, &b, t)));
        }
        native_pays(native, converted)
    })
}

/// The decision of [`bf16_products_pay`] from the times of the same products: native unless clearly
/// slower (a near tie keeps the native products, so the choice does not flip from run to run on a
/// CPU where they are even).
fn native_pays(native: std::time::Duration, converted: std::time::Duration) -> bool {
    native.as_secs_f64() <= 1.25 * converted.as_secs_f64()
}

/// A microkernel: `(kcp, A panel, lda, B strip, tile)`. `lda` separates the panel's depths (or
/// pairs of depths): its packed width, or for the f32 microkernels an A read in place.
type Tile<'t, P> = dyn Fn(usize, &[P], usize, &[P], &mut [f32; TILE]) + Sync + 't;

/// Packs panel (or strip) `i` of one operand for the depth slice `(pc, kc, kcp)`: `(depths, i,
/// out)`, laid out as [`pack_strip`] does.
type Packer<'p, P> = dyn Fn((usize, usize, usize), usize, &mut [P]) + Sync + 'p;

/// The blocked driver: packs B per `KC` slice into `nr`-wide strips and A per item into `mr`-row
/// panels (as `layout` says), then runs `tile` on each (panel, strip) on the pool. `accumulate`: add
/// to `c` instead of overwriting it.
#[allow(clippy::too_many_arguments)]
fn drive<P: Packed>(
    level: Level,
    (m, n, k): (usize, usize, usize),
    layout: Layout,
    (pack_a, pack_b): (&Packer<'_, P>, &Packer<'_, P>),
    tile: &Tile<'_, P>,
    c: &mut [f32],
    accumulate: bool,
) {
    assert!(c.len() >= m * n && level <= crate::cpu::detected());
    let Layout { mr, nr, ks, .. } = layout;
    let pool = ascend_rt::host::pool();
    // Row blocks of at most 12 panels, as many as a multiple of the threads, so that whole blocks
    // share out evenly (1024 rows in blocks of 144 gave one thread four blocks and the other three
    // and a sliver: 11 % of the time idle).
    let blocks = m.div_ceil(mr * 12).next_multiple_of(pool.threads());
    let mc = m.div_ceil(blocks).next_multiple_of(mr);
    let strips = n.div_ceil(nr);
    let c_addr = c.as_mut_ptr() as usize;
    let mut packed_b = P::buffer().take();
    let depth = KC * ks;
    for pc in (0..k).step_by(depth) {
        let kc = depth.min(k - pc);
        let kcp = layout.padded(kc);
        let a_panel = mr * kcp;
        let b_at = pack_strips(pack_b, (pc, kc, kcp), (strips, kcp * nr), &mut packed_b);
        let row_blocks = m.div_ceil(mc);
        // Enough row blocks keep every thread busy without splitting the columns (each split packs
        // the same rows of A again); otherwise split the strips into groups.
        let per_item = if row_blocks >= 4 * pool.threads() { strips } else { STRIPS_PER_ITEM };
        let groups = strips.div_ceil(per_item);
        let packed_b = &packed_b[b_at..];
        pool.parallel_for(row_blocks * groups, &|item| {
            let (ib, g) = (item / groups, item % groups);
            let (ic, rows) = (ib * mc, mc.min(m - ib * mc));
            let mut a_buf = Vec::new();
            let a_panels = grow_aligned(&mut a_buf, rows.div_ceil(mr) * a_panel);
            for (pi, panel) in a_panels.chunks_exact_mut(a_panel).enumerate() {
                pack_a((pc, kc, kcp), ic / mr + pi, panel);
            }
            let _tiles = layout.tiles();
            let mut t = TileBuffer::new();
            for s in g * per_item..strips.min((g + 1) * per_item) {
                let cols = nr.min(n - s * nr);
                let b_strip = &packed_b[s * kcp * nr..(s + 1) * kcp * nr];
                for (pi, a_panel) in a_panels.chunks_exact(a_panel).enumerate() {
                    let r0 = pi * mr;
                    let prows = mr.min(rows - r0);
                    tile(kcp, a_panel, mr * layout.a_interleave(), b_strip, &mut t.0);
                    // SAFETY: items write disjoint blocks of `c` (their rows × their strips), which
                    // holds m × n elements and outlives the parallel_for.
                    unsafe {
                        let c0 = (c_addr as *mut f32).add((ic + r0) * n + s * nr);
                        store(&t.0[..mr * nr], nr, c0, n, prows, cols, pc > 0 || accumulate);
                    }
                }
            }
        });
    }
    if packed_b.capacity() * std::mem::size_of::<P>() <= KEEP_PACKED_BYTES {
        P::buffer().set(packed_b);
    }
}

/// Index of (k offset `p`, column or row `x`) in a packed strip or panel `width` wide, with `ks`
/// consecutive k values interleaved.
fn slot(p: usize, x: usize, width: usize, ks: usize) -> usize {
    (p / ks) * width * ks + x * ks + p % ks
}

/// Packs `strips` strips of `len` values each (one depth slice of B) by `pack`, in parallel, into
/// `out` from its first 64-byte aligned element, whose index it returns.
fn pack_strips<P: Packed>(
    pack: &Packer<'_, P>,
    depths: (usize, usize, usize),
    (strips, len): (usize, usize),
    out: &mut Vec<P>,
) -> usize {
    // Grown, never cleared: packing writes every element, padding included.
    grow_aligned(out, strips * len);
    let at = aligned_start(out);
    let addr = out[at..].as_mut_ptr() as usize;
    ascend_rt::host::pool().parallel_for(strips, &|s| {
        // SAFETY: strip `s` owns elements [s·len, (s+1)·len) of `out` from `at`, disjoint from the
        // other strips', and `out` outlives the parallel_for.
        pack(depths, s, unsafe { std::slice::from_raw_parts_mut((addr as *mut P).add(s * len), len) });
    });
    at
}

/// Strip `s` of B (`n` columns; rows `pc..pc + kc`) into `strip`: `nr` columns side by side per depth
/// (`ks` depths interleaved), zero beyond `n` and `kc` up to `kcp`. Also packs A panels, as strips
/// of Aᵀ.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn pack_strip<B: Copy, P: Copy + Default>(
    b: &View<'_, B>,
    conv: &impl Fn(B) -> P,
    (pc, kc, kcp): (usize, usize, usize),
    s: usize,
    n: usize,
    (nr, ks): (usize, usize),
    strip: &mut [P],
) {
    let cols = nr.min(n - s * nr);
    if b.cs == 1 && b.rs != 1 {
        // Row-major B: each row's columns of the strip side by side (rows paired for bf16).
        let row = |p: usize| &b.data[(pc + p) * b.rs + s * nr..][..cols];
        if ks > 2 {
            // AMX A panels from a transposed A: each row of the view is one depth.
            for p in 0..kc {
                for (j, &x) in row(p).iter().enumerate() {
                    strip[slot(p, j, nr, ks)] = conv(x);
                }
            }
        } else {
            for p in (0..kc).step_by(ks) {
                put(&mut strip[p * nr..], ks, row(p), (ks == 2 && p + 1 < kc).then(|| row(p + 1)), conv);
            }
        }
    } else {
        for j in 0..cols {
            // Column j of the strip: contiguous in B for transposed weights ([N, K], `rs == 1`).
            pack_line(b, conv, (pc, s * nr + j), (1, 0), kc, strip, j, nr, ks);
        }
    }
    zero_padding(strip, kc, kcp, cols, nr, ks);
}

/// Grows `v` so that `len` elements fit from its first 64-byte aligned one, and returns them (what
/// they hold already is left as it is). Packed panels start on cache lines: AMX tile loads of rows
/// that straddle two lines run at less than half speed, and so do the AVX-512 loads of strips.
pub(crate) fn grow_aligned<P: Copy + Default>(v: &mut Vec<P>, len: usize) -> &mut [P] {
    let slack = 64 / std::mem::size_of::<P>();
    if v.len() < len + slack {
        v.resize(len + slack, P::default());
    }
    let at = aligned_start(v);
    &mut v[at..at + len]
}

/// Index of the first element of `v` on a 64-byte boundary (within its first 64 bytes).
fn aligned_start<P>(v: &[P]) -> usize {
    (64 - v.as_ptr() as usize % 64) % 64 / std::mem::size_of::<P>()
}

/// The microkernels' output tile, on a cache line like the panels.
#[repr(C, align(64))]
struct TileBuffer([f32; TILE]);

impl TileBuffer {
    fn new() -> TileBuffer {
        TileBuffer([0.0; TILE])
    }
}

/// Zeroes the slots of a packed strip (or panel) beyond its `kc` depths and `cols` columns (or rows):
/// the microkernel reads all `kcp × nr`.
fn zero_padding<P: Copy + Default>(strip: &mut [P], kc: usize, kcp: usize, cols: usize, nr: usize, ks: usize) {
    for p in 0..kcp {
        let from = if p < kc { cols } else { 0 };
        for j in from..nr {
            strip[slot(p, j, nr, ks)] = P::default();
        }
    }
}

/// Packed element types (f32, and u16 for bf16 pairs), each with a per-thread buffer for packed B,
/// reused across calls so that a GEMM does not fault in (and zero) megabytes of new pages each time.
trait Packed: Copy + Default + Send + Sync + 'static {
    fn buffer() -> &'static std::thread::LocalKey<std::cell::Cell<Vec<Self>>>;

    /// Packs A panel `pi` (A's rows `pi · mr..`, of `m`) from `at`, A transposed (depth × rows),
    /// as [`pack_strip`] does. (Inlined: the packing loops take the caller's target features.)
    #[inline(always)]
    fn pack_a_panel(
        at: &View<'_, Self>,
        depths: (usize, usize, usize),
        pi: usize,
        m: usize,
        layout: (usize, usize),
        panel: &mut [Self],
    ) {
        pack_strip(at, &|x| x, depths, pi, m, layout, panel);
    }

    /// Packs strip `s` of B (`n` columns) from `b` as [`pack_strip`] does (inlined likewise).
    #[inline(always)]
    fn pack_b_strip(
        b: &View<'_, Self>,
        depths: (usize, usize, usize),
        s: usize,
        n: usize,
        layout: (usize, usize),
        strip: &mut [Self],
    ) {
        pack_strip(b, &|x| x, depths, s, n, layout, strip);
    }
}

thread_local! {
    static PACKED_B_F32: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    static PACKED_B_U16: std::cell::Cell<Vec<u16>> = const { std::cell::Cell::new(Vec::new()) };
}

impl Packed for f32 {
    fn buffer() -> &'static std::thread::LocalKey<std::cell::Cell<Vec<f32>>> {
        &PACKED_B_F32
    }

    /// Rows of A along their depth (a row-major A, not interleaved, at most 32 rows a panel; also the
    /// columns of transposed weights into a B strip): 16 × 16 blocks transposed in AVX-512
    /// registers from the active AVX-512 level up ([`crate::cpu::active`]), instead of one strided
    /// store per value (which cost 12 % of an f32 prefill, and made transposed-weight matmuls 5-15 %
    /// slower). The same values land in the same slots.
    #[inline(always)]
    fn pack_a_panel(
        at: &View<'_, f32>,
        depths: (usize, usize, usize),
        pi: usize,
        m: usize,
        layout: (usize, usize),
        panel: &mut [f32],
    ) {
        let (mr, ks) = layout;
        #[cfg(target_arch = "x86_64")]
        if at.rs == 1 && ks == 1 && mr <= 32 && crate::cpu::active() >= Level::Avx512 {
            // SAFETY: the active level is at most the detected one, which has AVX-512F from `Avx512`
            // up; the conditions on the layout hold.
            unsafe { x86::pack_rows_f32(at, depths, pi, m, mr, panel) };
            return;
        }
        // Otherwise a panel of Aᵀ is a strip of it (a row-major Aᵀ, such as the last, partial panel
        // of the attention's `Pᵀ`, takes the vector copies; `rows_with` reads full ones in place).
        Self::pack_b_strip(at, depths, pi, m, layout, panel);
    }

    /// Row-major B strips up to 32 wide (no interleave) by masked vector copies, one or two per
    /// depth (the generic copy loop cost 5 % of an f32 prefill).
    #[inline(always)]
    fn pack_b_strip(
        b: &View<'_, f32>,
        depths: (usize, usize, usize),
        s: usize,
        n: usize,
        layout: (usize, usize),
        strip: &mut [f32],
    ) {
        let (nr, ks) = layout;
        #[cfg(target_arch = "x86_64")]
        if b.cs == 1 && ks == 1 && nr <= 32 && crate::cpu::active() >= Level::Avx512 {
            // SAFETY: AVX-512F, as in `pack_a_panel`; `b.cs == 1`, no interleave and at most 32 wide.
            unsafe { x86::pack_depths_f32(b, depths, s, n, nr, strip) };
            return;
        }
        pack_strip(b, &|x| x, depths, s, n, layout, strip);
    }
}

impl Packed for u16 {
    fn buffer() -> &'static std::thread::LocalKey<std::cell::Cell<Vec<u16>>> {
        &PACKED_B_U16
    }
}

/// Largest packed-B buffer a thread keeps between calls.
const KEEP_PACKED_BYTES: usize = 64 << 20;

/// Packs `kc` elements of `src` from `(r, c)` along `(dr, dc)` (one row or column of a block) into
/// position `x` of a panel or strip `width` wide (`dst`, indexed by [`slot`]). A contiguous line (the
/// rows of A, the columns of transposed weights) is read as a slice: no index arithmetic per element.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn pack_line<T: Copy, P: Copy>(
    src: &View<'_, T>,
    conv: &impl Fn(T) -> P,
    (r, c): (usize, usize),
    (dr, dc): (usize, usize),
    kc: usize,
    dst: &mut [P],
    x: usize,
    width: usize,
    ks: usize,
) {
    let step = dr * src.rs + dc * src.cs;
    let start = r * src.rs + c * src.cs;
    if step == 1 {
        let line = &src.data[start..start + kc];
        if ks == 1 {
            for (d, &v) in dst[x..].iter_mut().step_by(width).zip(line) {
                *d = conv(v);
            }
        } else {
            for (q, group) in line.chunks(ks).enumerate() {
                let at = q * width * ks + x * ks;
                for (d, &v) in dst[at..at + group.len()].iter_mut().zip(group) {
                    *d = conv(v);
                }
            }
        }
    } else {
        for p in 0..kc {
            dst[slot(p, x, width, ks)] = conv(src.data[start + p * step]);
        }
    }
}

/// Writes (or adds, when `accumulate`) the valid `rows × cols` of an `nr`-wide tile into C.
///
/// # Safety
/// `c` must be valid for `rows` rows of `cols` elements at row stride `ldc`.
unsafe fn store(tile: &[f32], nr: usize, c: *mut f32, ldc: usize, rows: usize, cols: usize, accumulate: bool) {
    for r in 0..rows {
        // SAFETY: row r of the block is in bounds by the contract.
        let dst = unsafe { std::slice::from_raw_parts_mut(c.add(r * ldc), cols) };
        let src = &tile[r * nr..r * nr + cols];
        if accumulate {
            dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
        } else {
            dst.copy_from_slice(src);
        }
    }
}

/// [`microkernel`] at `level` as a [`Tile`].
fn f32_microkernel(level: Level) -> impl Fn(usize, &[f32], usize, &[f32], &mut [f32; TILE]) + Sync {
    move |kc, a, lda, b, tile| microkernel(level, kc, a, lda, b, tile)
}

/// `tile[r * NR + j] = Σ_p a[p * lda + r] · b[p * NR + j]` (MR × NR: the level's f32 [`Layout`]).
/// Panics if a panel is shorter than that.
fn microkernel(level: Level, kc: usize, a: &[f32], lda: usize, b: &[f32], tile: &mut [f32; TILE]) {
    let Layout { mr, nr, .. } = Layout::f32(level);
    assert!(kc > 0 && lda >= mr && a.len() >= (kc - 1) * lda + mr && b.len() >= kc * nr);
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `gemm` checked that the CPU supports the level; the panels' lengths were just
        // checked.
        Level::Avx512 | Level::Avx512Bf16 | Level::Amx => unsafe {
            x86::tile_avx512(kc, a.as_ptr(), lda, b.as_ptr(), tile)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Level::Avx2 => unsafe { x86::tile_avx2(kc, a.as_ptr(), lda, b.as_ptr(), tile) },
        _ => tile_portable(kc, a, lda, b, tile),
    }
}

fn tile_portable(kc: usize, a: &[f32], lda: usize, b: &[f32], tile: &mut [f32; TILE]) {
    const MR: usize = 4;
    const NR: usize = 16;
    let mut acc = [[0f32; NR]; MR];
    for (ap, bp) in a.chunks(lda).zip(b.chunks_exact(NR)).take(kc) {
        for (row, &av) in acc.iter_mut().zip(ap) {
            for (x, &bv) in row.iter_mut().zip(bp) {
                *x += av * bv;
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        tile[r * NR..(r + 1) * NR].copy_from_slice(row);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {

    use super::View;

    /// [`super::Packed::pack_a_panel`] for f32 rows of A along their depth (`at.rs == 1`, `mr` at
    /// most 32, no interleave): per 16 rows and 16 depths, the rows (zero rows past `m`) loaded
    /// with the depths past `kc` masked to zero, transposed, and stored up to 16 values per depth.
    ///
    /// # Safety
    /// AVX-512F; `at.rs == 1` and `mr <= 32`; `panel` holds `mr · kcp` values.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn pack_rows_f32(
        at: &View<'_, f32>,
        (pc, kc, kcp): (usize, usize, usize),
        pi: usize,
        m: usize,
        mr: usize,
        panel: &mut [f32],
    ) {
        let rows = mr.min(m - pi * mr);
        assert!(panel.len() >= mr * kcp && mr <= 32);
        for g0 in (0..mr).step_by(16) {
            let keep = ((1u32 << (mr - g0).min(16)) - 1) as __mmask16;
            for p0 in (0..kcp).step_by(16) {
                let n = kc.saturating_sub(p0).min(16);
                let mask = ((1u32 << n) - 1) as __mmask16;
                let block: [__m512i; 16] = std::array::from_fn(|r| {
                    let start = (pi * mr + g0 + r) * at.cs + pc + p0;
                    match g0 + r < rows && n > 0 {
                        true => {
                            let line = &at.data[start..start + n];
                            // SAFETY: the masked load reads the n values of `line` only.
                            unsafe { _mm512_maskz_loadu_epi32(mask, line.as_ptr() as *const i32) }
                        }
                        false => _mm512_setzero_si512(),
                    }
                });
                for (p, depth) in crate::simd::transpose16(block).iter().enumerate().take(kcp - p0) {
                    // SAFETY: up to 16 values from slot g0 of depth p0 + p < kcp, inside the panel
                    // (length checked above; `keep` stops at mr).
                    unsafe {
                        let at = panel.as_mut_ptr().add((p0 + p) * mr + g0) as *mut i32;
                        _mm512_mask_storeu_epi32(at, keep, *depth)
                    };
                }
            }
        }
    }

    /// A strip (or panel) `s` of `width` columns (at most 32; zero past `n`) from a row-major f32
    /// view (`v.cs == 1`: each depth's columns side by side, as a row-major B or a transposed A
    /// stored depth by depth, like the attention's `Pᵀ`): per depth one or two masked loads and
    /// stores. Depths past `kc` are zero.
    ///
    /// # Safety
    /// AVX-512F; `v.cs == 1` and `width <= 32`; `strip` holds `width · kcp` values.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn pack_depths_f32(
        v: &View<'_, f32>,
        (pc, kc, kcp): (usize, usize, usize),
        s: usize,
        n: usize,
        width: usize,
        strip: &mut [f32],
    ) {
        let cols = width.min(n - s * width);
        assert!(strip.len() >= width * kcp && width <= 32 && v.cs == 1);
        // Per 16-wide half: the lanes stored (the strip's width) and those loaded (its columns).
        let mask = |w: usize, half: usize| ((1u64 << w.saturating_sub(16 * half).min(16)) - 1) as __mmask16;
        let (keep, load) = ([mask(width, 0), mask(width, 1)], [mask(cols, 0), mask(cols, 1)]);
        let halves = width.div_ceil(16);
        for p in 0..kcp {
            let line = match p < kc {
                true => {
                    let start = (pc + p) * v.rs + s * width;
                    &v.data[start..start + cols]
                }
                false => &[][..],
            };
            for h in 0..halves {
                // SAFETY: the load reads lanes of `line` only (its `cols` values, none past `kc`);
                // the store writes `width` values at depth p < kcp of the strip (length checked).
                unsafe {
                    let l = if line.is_empty() { 0 } else { load[h] };
                    let x = _mm512_maskz_loadu_ps(l, line.as_ptr().wrapping_add(16 * h));
                    _mm512_mask_storeu_ps(strip.as_mut_ptr().add(p * width + 16 * h), keep[h], x);
                }
            }
        }
    }
    use std::arch::x86_64::*;

    /// How many depths ahead the f32 microkernels prefetch their operands into L1. A strip (128 KB
    /// at the full depth) and a panel do not fit in L1 together, so each step's values come from L2;
    /// the hardware prefetchers alone left the 12 × 32 kernel at ~80 % of the FMA peak on one core
    /// (matmul 1024³ and 2048³, one thread: +4-6 % with it, 16 steps ahead a little better than 8).
    const PREFETCH_STEPS: usize = 16;

    /// Prefetches depth `p` of a microkernel's operands: the `nr` B values (one or two lines) and
    /// the line where A's values start (a panel's depth is under a line; a panel read in place,
    /// `lda` apart, gets a new line each step). Past the operands' ends it only hints.
    #[inline(always)]
    fn prefetch_step(a: *const f32, lda: usize, b: *const f32, nr: usize, p: usize) {
        let b = b.wrapping_add(p * nr);
        for line in (0..nr).step_by(16) {
            crate::simd::prefetch_line(b.wrapping_add(line) as *const u8);
        }
        crate::simd::prefetch_line(a.wrapping_add(p * lda) as *const u8);
    }

    /// 12 × 32 tile: 24 accumulators, two B vectors and one broadcast per step; A's depths `lda`
    /// apart.
    ///
    /// # Safety
    /// AVX-512F must be available; `a` holds `(kc − 1) × lda + 12` and `b` `kc × 32` values.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile_avx512(kc: usize, a: *const f32, lda: usize, b: *const f32, tile: &mut [f32; super::TILE]) {
        let mut acc = [[_mm512_setzero_ps(); 2]; 12];
        for p in 0..kc {
            // SAFETY: in bounds by the contract.
            unsafe {
                let b0 = _mm512_loadu_ps(b.add(p * 32));
                let b1 = _mm512_loadu_ps(b.add(p * 32 + 16));
                prefetch_step(a, lda, b, 32, p + PREFETCH_STEPS);
                for (r, row) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*a.add(p * lda + r));
                    row[0] = _mm512_fmadd_ps(av, b0, row[0]);
                    row[1] = _mm512_fmadd_ps(av, b1, row[1]);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            // SAFETY: the tile holds 12 × 32 values.
            unsafe {
                _mm512_storeu_ps(tile.as_mut_ptr().add(r * 32), row[0]);
                _mm512_storeu_ps(tile.as_mut_ptr().add(r * 32 + 16), row[1]);
            }
        }
    }

    /// 12 × 32 tile from bf16 pairs: per step, two B vectors of 16 (k, k+1) pairs and one broadcast pair
    /// per row; `vdpbf16ps` adds both products of each pair into the f32 accumulators.
    ///
    /// # Safety
    /// AVX-512F and AVX-512 BF16 must be available; `a` holds `kcp × 12` and `b` `kcp × 32` values
    /// (`kcp` even).
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn tile_avx512_bf16(kcp: usize, a: *const u16, b: *const u16, tile: &mut [f32; super::TILE]) {
        let mut acc = [[_mm512_setzero_ps(); 2]; 12];
        for q in 0..kcp / 2 {
            // SAFETY: in bounds by the contract; __m512bh and __m512i are both 512-bit vectors.
            unsafe {
                let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(q * 64) as *const _));
                let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(q * 64 + 32) as *const _));
                for (r, row) in acc.iter_mut().enumerate() {
                    let pair = (a.add(q * 24 + r * 2) as *const i32).read_unaligned();
                    let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                    row[0] = _mm512_dpbf16_ps(row[0], av, b0);
                    row[1] = _mm512_dpbf16_ps(row[1], av, b1);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            // SAFETY: the tile holds 12 × 32 values.
            unsafe {
                _mm512_storeu_ps(tile.as_mut_ptr().add(r * 32), row[0]);
                _mm512_storeu_ps(tile.as_mut_ptr().add(r * 32 + 16), row[1]);
            }
        }
    }

    /// 6 × 16 tile: 12 accumulators; A's depths `lda` apart.
    ///
    /// # Safety
    /// AVX2 and FMA must be available; `a` holds `(kc − 1) × lda + 6` and `b` `kc × 16` values.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile_avx2(kc: usize, a: *const f32, lda: usize, b: *const f32, tile: &mut [f32; super::TILE]) {
        let mut acc = [[_mm256_setzero_ps(); 2]; 6];
        for p in 0..kc {
            // SAFETY: in bounds by the contract.
            unsafe {
                let b0 = _mm256_loadu_ps(b.add(p * 16));
                let b1 = _mm256_loadu_ps(b.add(p * 16 + 8));
                prefetch_step(a, lda, b, 16, p + PREFETCH_STEPS);
                for (r, row) in acc.iter_mut().enumerate() {
                    let av = _mm256_set1_ps(*a.add(p * lda + r));
                    row[0] = _mm256_fmadd_ps(av, b0, row[0]);
                    row[1] = _mm256_fmadd_ps(av, b1, row[1]);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            // SAFETY: the tile holds at least 6 × 16 values.
            unsafe {
                _mm256_storeu_ps(tile.as_mut_ptr().add(r * 16), row[0]);
                _mm256_storeu_ps(tile.as_mut_ptr().add(r * 16 + 8), row[1]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_bf16_products_are_kept_unless_clearly_slower() {
        let ms = std::time::Duration::from_millis;
        assert!(native_pays(ms(5), ms(10)), "twice as fast (Zen 4-like)");
        assert!(native_pays(ms(11), ms(10)), "a near tie keeps the native products");
        assert!(!native_pays(ms(18), ms(10)), "0.56× (Sapphire Rapids without AMX)");
        // Whatever this CPU answers, the default level is one it has, and never below AVX-512 on an
        // AVX-512 CPU.
        let (best, chosen) = (crate::cpu::detected(), crate::cpu::preferred());
        assert!(chosen <= best && (chosen == best || chosen == Level::Avx512), "{chosen:?} for {best:?}");
        assert_eq!(chosen == Level::Avx512Bf16, best == Level::Avx512Bf16 && bf16_products_pay());
    }

    /// The levels with a bf16 microkernel this CPU can run.
    fn bf16_levels() -> Vec<Level> {
        crate::cpu::available().into_iter().filter(|&l| l >= Level::Avx512Bf16).collect()
    }

    #[test]
    fn row_products_match_a_plain_sum_for_every_layout() {
        // Small integers: every product and sum is exact in f32 and every input exact in bf16. Odd k
        // (a half-padded last bf16 pair), k beyond one packed slice, strides wider than the rows, C
        // cells outside the block that must keep their value, and packing buffers full of NaN (they
        // are reused as they are: only their padding is zeroed).
        for (m, n, k) in [(5, 37, 9), (13, 33, 2 * KC + 7), (1, 1, 1)] {
            for a_transposed in [false, true] {
                let lda = if a_transposed { m + 3 } else { k + 2 };
                let a_len = if a_transposed { k * lda } else { m * lda };
                let a: Vec<f32> = (0..a_len).map(|i| (i % 9) as f32 - 4.0).collect();
                let at = |i: usize, p: usize| if a_transposed { a[p * lda + i] } else { a[i * lda + p] };
                let (ldb, ldc) = (n + 1, n + 5);
                let b: Vec<f32> = (0..k * ldb).map(|i| (i % 7) as f32 - 3.0).collect();
                for accumulate in [false, true] {
                    let mut want = vec![1f32; m * ldc];
                    for i in 0..m {
                        for j in 0..n {
                            let sum: f32 = (0..k).map(|p| at(i, p) * b[p * ldb + j]).sum();
                            want[i * ldc + j] = if accumulate { 1.0 + sum } else { sum };
                        }
                    }
                    let what = format!("{m}x{n}x{k} transposed {a_transposed} accumulate {accumulate}");
                    for level in crate::cpu::available() {
                        let mut c = vec![1f32; m * ldc];
                        let mut scratch = Scratch { a: vec![f32::NAN; 1 << 18], b: vec![f32::NAN; 1 << 18] };
                        gemm_rows(
                            level,
                            (m, n, k),
                            (&a, lda, a_transposed),
                            (&b, ldb),
                            (&mut c, ldc),
                            accumulate,
                            &mut scratch,
                        );
                        assert_eq!(c, want, "{} {what}", level.name());
                    }
                    for level in bf16_levels() {
                        let bits = |v: &[f32]| v.iter().map(|&x| bf16::from_f32(x).to_bits()).collect::<Vec<u16>>();
                        let (ab, bb) = (bits(&a), bits(&b));
                        let mut c = vec![1f32; m * ldc];
                        let mut scratch = Scratch { a: vec![0x7fc0; 1 << 18], b: vec![0x7fc0; 1 << 18] };
                        gemm_rows_bf16(
                            level,
                            (m, n, k),
                            (&ab, lda, a_transposed),
                            (&bb, ldb),
                            (&mut c, ldc),
                            accumulate,
                            &mut scratch,
                        );
                        assert_eq!(c, want, "bf16 {} {what}", level.name());
                    }
                }
            }
        }
    }

    #[test]
    fn stale_packing_buffers_never_leak_into_results() {
        // NaN left in this thread's packed-B buffers, then shapes whose packing has padding (n not a
        // multiple of the strip width; odd k, so the last bf16 pair is half padding): small integers,
        // so every result is exact.
        let (m, n, k) = (5, 37, 9);
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 - 3.0).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 - 2.0).collect(); // [n, k]
        let want: Vec<f32> = (0..m * n).map(|x| (0..k).map(|p| a[x / n * k + p] * w[x % n * k + p]).sum()).collect();
        let poison = || {
            PACKED_B_F32.set(vec![f32::NAN; 1 << 16]);
            PACKED_B_U16.set(vec![0x7fc0; 1 << 16]);
        };
        let av = View { data: &a[..], rs: k, cs: 1 };
        for (rs, cs) in [(1, k), (n, 1)] {
            // Weights [n, k] (transposed), then the same values stored [k, n].
            let b: Vec<f32> = if rs == 1 { w.clone() } else { (0..k * n).map(|i| w[i % n * k + i / n]).collect() };
            let bv = View { data: &b[..], rs, cs };
            for level in crate::cpu::available() {
                poison();
                let mut c = vec![0f32; m * n];
                gemm(level, m, n, k, av, bv, &mut c);
                assert_eq!(c, want, "{} rs {rs}", level.name());
            }
            for level in bf16_levels() {
                poison();
                let (ab, bb): (Vec<bf16>, Vec<bf16>) =
                    (a.iter().map(|&x| bf16::from_f32(x)).collect(), b.iter().map(|&x| bf16::from_f32(x)).collect());
                let mut c = vec![0f32; m * n];
                let (av, bv) = (View { data: &ab[..], rs: k, cs: 1 }, View { data: &bb[..], rs, cs });
                gemm_bf16(level, (m, n, k), av, bv, &mut c);
                assert_eq!(c, want, "bf16 {} rs {rs}", level.name());
            }
        }
    }
}
