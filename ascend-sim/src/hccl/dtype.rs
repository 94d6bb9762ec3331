//! HCCL data types and reduce operations on raw memory. Reductions of fp16 and bf16 accumulate in f32
//! and round once; integers wrap.

use ascend_sys::*;
use half::f16;

/// A supported element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    /// 8-bit signed integer (`HCCL_DATA_TYPE_INT8`).
    I8,
    /// 16-bit signed integer (`HCCL_DATA_TYPE_INT16`).
    I16,
    /// 32-bit signed integer (`HCCL_DATA_TYPE_INT32`).
    I32,
    /// 64-bit signed integer (`HCCL_DATA_TYPE_INT64`).
    I64,
    /// 8-bit unsigned integer (`HCCL_DATA_TYPE_UINT8`).
    U8,
    /// 16-bit unsigned integer (`HCCL_DATA_TYPE_UINT16`).
    U16,
    /// 32-bit unsigned integer (`HCCL_DATA_TYPE_UINT32`).
    U32,
    /// 64-bit unsigned integer (`HCCL_DATA_TYPE_UINT64`).
    U64,
    /// IEEE half precision (`HCCL_DATA_TYPE_FP16`).
    F16,
    /// bfloat16 (`HCCL_DATA_TYPE_BFP16`).
    Bf16,
    /// IEEE single precision (`HCCL_DATA_TYPE_FP32`).
    F32,
    /// IEEE double precision (`HCCL_DATA_TYPE_FP64`).
    F64,
}

/// A reduce operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Element-wise sum (`HCCL_REDUCE_SUM`).
    Sum,
    /// Element-wise product (`HCCL_REDUCE_PROD`).
    Prod,
    /// Element-wise maximum (`HCCL_REDUCE_MAX`); for floats a NaN loses to any number.
    Max,
    /// Element-wise minimum (`HCCL_REDUCE_MIN`); for floats a NaN loses to any number.
    Min,
}

impl DType {
    /// Every type, in declaration order (`ALL[t as usize] == t`).
    pub const ALL: [DType; 12] = [
        DType::I8,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::U8,
        DType::U16,
        DType::U32,
        DType::U64,
        DType::F16,
        DType::Bf16,
        DType::F32,
        DType::F64,
    ];

    /// From an `HcclDataType`: `Err(HCCL_E_NOT_SUPPORT)` for a type with no host meaning (INT128, FP8,
    /// HIF8), `Err(HCCL_E_PARA)` for an unknown value.
    pub fn from_hccl(t: HcclDataType) -> Result<DType, i32> {
        Ok(match t {
            HCCL_DATA_TYPE_INT8 => DType::I8,
            HCCL_DATA_TYPE_INT16 => DType::I16,
            HCCL_DATA_TYPE_INT32 => DType::I32,
            HCCL_DATA_TYPE_INT64 => DType::I64,
            HCCL_DATA_TYPE_UINT8 => DType::U8,
            HCCL_DATA_TYPE_UINT16 => DType::U16,
            HCCL_DATA_TYPE_UINT32 => DType::U32,
            HCCL_DATA_TYPE_UINT64 => DType::U64,
            HCCL_DATA_TYPE_FP16 => DType::F16,
            HCCL_DATA_TYPE_BFP16 => DType::Bf16,
            HCCL_DATA_TYPE_FP32 => DType::F32,
            HCCL_DATA_TYPE_FP64 => DType::F64,
            HCCL_DATA_TYPE_INT128
            | HCCL_DATA_TYPE_HIF8
            | HCCL_DATA_TYPE_FP8E4M3
            | HCCL_DATA_TYPE_FP8E5M2
            | HCCL_DATA_TYPE_FP8E8M0 => return Err(HCCL_E_NOT_SUPPORT),
            _ => return Err(HCCL_E_PARA),
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::I8 | DType::U8 => 1,
            DType::I16 | DType::U16 | DType::F16 | DType::Bf16 => 2,
            DType::I32 | DType::U32 | DType::F32 => 4,
            DType::I64 | DType::U64 | DType::F64 => 8,
        }
    }
}

impl Op {
    /// From an `HcclReduceOp` (`Err(HCCL_E_PARA)` for an unknown one).
    pub fn from_hccl(op: HcclReduceOp) -> Result<Op, i32> {
        Ok(match op {
            HCCL_REDUCE_SUM => Op::Sum,
            HCCL_REDUCE_PROD => Op::Prod,
            HCCL_REDUCE_MAX => Op::Max,
            HCCL_REDUCE_MIN => Op::Min,
            _ => return Err(HCCL_E_PARA),
        })
    }

    /// CANN does not support PROD on int16 and bf16 (`HCCL_E_NOT_SUPPORT`).
    pub fn supported_for(self, t: DType) -> bool {
        !(self == Op::Prod && matches!(t, DType::I16 | DType::Bf16))
    }
}

trait Acc: Copy {
    fn add(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    fn max(self, o: Self) -> Self;
    fn min(self, o: Self) -> Self;
}

macro_rules! int_acc {
    ($($t:ty),*) => {$(
        impl Acc for $t {
            fn add(self, o: Self) -> Self { self.wrapping_add(o) }
            fn mul(self, o: Self) -> Self { self.wrapping_mul(o) }
            fn max(self, o: Self) -> Self { Ord::max(self, o) }
            fn min(self, o: Self) -> Self { Ord::min(self, o) }
        }
    )*};
}
int_acc!(i8, i16, i32, i64, u8, u16, u32, u64);

macro_rules! float_acc {
    ($($t:ty),*) => {$(
        impl Acc for $t {
            fn add(self, o: Self) -> Self { self + o }
            fn mul(self, o: Self) -> Self { self * o }
            fn max(self, o: Self) -> Self { if o > self || self.is_nan() { o } else { self } }
            fn min(self, o: Self) -> Self { if o < self || self.is_nan() { o } else { self } }
        }
    )*};
}
float_acc!(f32, f64);

/// `acc[i] = op(acc[i], x[i])`, with the op chosen once per block so the loop vectorises.
fn combine<A: Acc>(op: Op, acc: &mut [A], x: &[A]) {
    let pairs = acc.iter_mut().zip(x);
    match op {
        Op::Sum => pairs.for_each(|(a, b)| *a = a.add(*b)),
        Op::Prod => pairs.for_each(|(a, b)| *a = a.mul(*b)),
        Op::Max => pairs.for_each(|(a, b)| *a = a.max(*b)),
        Op::Min => pairs.for_each(|(a, b)| *a = a.min(*b)),
    }
}

/// Reduces `srcs` element-wise into every one of `dsts` (`n` elements each; writing two destinations
/// in one pass saves re-reading the result). A destination may be one of the sources.
///
/// # Safety
/// Every pointer must be valid for `n` elements of `t` (any alignment), and a destination must not
/// overlap a source other than itself.
pub unsafe fn reduce(t: DType, op: Op, dsts: &[*mut u8], srcs: &[*const u8], n: usize) {
    // SAFETY (all arms): forwarded from this function's contract.
    unsafe {
        match t {
            DType::I8 => direct::<i8>(op, dsts, srcs, n),
            DType::I16 => direct::<i16>(op, dsts, srcs, n),
            DType::I32 => direct::<i32>(op, dsts, srcs, n),
            DType::I64 => direct::<i64>(op, dsts, srcs, n),
            DType::U8 => direct::<u8>(op, dsts, srcs, n),
            DType::U16 => direct::<u16>(op, dsts, srcs, n),
            DType::U32 => direct::<u32>(op, dsts, srcs, n),
            DType::U64 => direct::<u64>(op, dsts, srcs, n),
            DType::F32 => direct::<f32>(op, dsts, srcs, n),
            DType::F64 => direct::<f64>(op, dsts, srcs, n),
            DType::F16 => widened(op, dsts, srcs, n, f16_to_f32, f32_to_f16),
            DType::Bf16 => widened(op, dsts, srcs, n, bf16_to_f32, f32_to_bf16),
        }
    }
}

/// Elements per block: small enough for the stack and L1, large enough to vectorise.
const BLOCK: usize = 1024;

/// Copies `len` elements at element offset `start` of `src` into `out` (any alignment).
///
/// # Safety
/// `src` is valid for `start + len` elements of `T`.
unsafe fn load<T: Copy + Default>(src: *const u8, start: usize, out: &mut [T]) {
    // SAFETY: by the contract; byte copies need no alignment and `out` holds `out.len()` elements.
    unsafe {
        std::ptr::copy_nonoverlapping(
            (src as *const T).add(start) as *const u8,
            out.as_mut_ptr() as *mut u8,
            std::mem::size_of_val(out),
        )
    };
}

/// Writes `vals` at element offset `start` of every destination.
///
/// # Safety
/// Every destination is valid for `start + vals.len()` elements of `T`.
unsafe fn store<T: Copy>(dsts: &[*mut u8], start: usize, vals: &[T]) {
    for &d in dsts {
        // SAFETY: by the contract; `vals` is a local block, so it does not overlap the destination.
        unsafe {
            std::ptr::copy_nonoverlapping(
                vals.as_ptr() as *const u8,
                (d as *mut T).add(start) as *mut u8,
                std::mem::size_of_val(vals),
            )
        };
    }
}

unsafe fn direct<T: Acc + Default>(op: Op, dsts: &[*mut u8], srcs: &[*const u8], n: usize) {
    let (mut acc, mut x) = ([T::default(); BLOCK], [T::default(); BLOCK]);
    let mut start = 0;
    while start < n {
        let len = BLOCK.min(n - start);
        // SAFETY (loads and store): every pointer holds `n` elements (contract), start + len <= n.
        unsafe { load(srcs[0], start, &mut acc[..len]) };
        for &s in &srcs[1..] {
            unsafe { load(s, start, &mut x[..len]) };
            combine(op, &mut acc[..len], &x[..len]);
        }
        unsafe { store(dsts, start, &acc[..len]) };
        start += len;
    }
}

unsafe fn widened(
    op: Op,
    dsts: &[*mut u8],
    srcs: &[*const u8],
    n: usize,
    widen: fn(&[u16], &mut [f32]),
    narrow: fn(&[f32], &mut [u16]),
) {
    let (mut acc, mut x, mut bits) = ([0f32; BLOCK], [0f32; BLOCK], [0u16; BLOCK]);
    let mut start = 0;
    while start < n {
        let len = BLOCK.min(n - start);
        // SAFETY (loads and store): every pointer holds `n` elements (contract), start + len <= n.
        unsafe { load(srcs[0], start, &mut bits[..len]) };
        widen(&bits[..len], &mut acc[..len]);
        for &s in &srcs[1..] {
            unsafe { load(s, start, &mut bits[..len]) };
            widen(&bits[..len], &mut x[..len]);
            combine(op, &mut acc[..len], &x[..len]);
        }
        narrow(&acc[..len], &mut bits[..len]);
        unsafe { store(dsts, start, &bits[..len]) };
        start += len;
    }
}

fn f16_to_f32(bits: &[u16], out: &mut [f32]) {
    use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
    // F16C when the CPU has it (detected at run time by `half`).
    bits.reinterpret_cast::<f16>().convert_to_f32_slice(out);
}

fn f32_to_f16(vals: &[f32], out: &mut [u16]) {
    use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
    out.reinterpret_cast_mut::<f16>().convert_from_f32_slice(vals);
}

fn bf16_to_f32(bits: &[u16], out: &mut [f32]) {
    out.iter_mut().zip(bits).for_each(|(o, &b)| *o = f32::from_bits((b as u32) << 16));
}

/// Round to nearest even; NaN stays a (quiet) NaN.
fn f32_to_bf16(vals: &[f32], out: &mut [u16]) {
    out.iter_mut().zip(vals).for_each(|(o, &v)| {
        let b = v.to_bits();
        let rounded = ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16;
        *o = if v.is_nan() { ((b >> 16) as u16) | 0x40 } else { rounded };
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    #[test]
    fn all_is_indexed_by_the_discriminant() {
        for (i, t) in DType::ALL.iter().enumerate() {
            assert_eq!(*t as usize, i, "{t:?}");
        }
    }

    fn run<T: Copy + Default>(t: DType, op: Op, inputs: &[Vec<T>]) -> Vec<T> {
        let mut out = vec![T::default(); inputs[0].len()];
        let srcs: Vec<*const u8> = inputs.iter().map(|v| v.as_ptr() as *const u8).collect();
        // SAFETY: all vectors have the same length.
        unsafe { reduce(t, op, &[out.as_mut_ptr() as *mut u8], &srcs, out.len()) };
        out
    }

    #[test]
    fn integer_ops_wrap_and_compare() {
        let a = vec![100i8, -5, 7];
        let b = vec![100i8, 3, -9];
        assert_eq!(run(DType::I8, Op::Sum, &[a.clone(), b.clone()]), vec![-56, -2, -2]);
        assert_eq!(run(DType::I8, Op::Max, &[a.clone(), b.clone()]), vec![100, 3, 7]);
        assert_eq!(run(DType::I8, Op::Min, &[a.clone(), b.clone()]), vec![100, -5, -9]);
        assert_eq!(run(DType::U64, Op::Prod, &[vec![3u64; 2000], vec![5u64; 2000]]), vec![15u64; 2000]);
    }

    #[test]
    fn half_types_accumulate_in_f32() {
        // 2048 + 1 + 1 in f16 step by step would stay at 2048; accumulated in f32 it rounds to 2050.
        let v = |x: f32| vec![f16::from_f32(x)];
        assert_eq!(run(DType::F16, Op::Sum, &[v(2048.0), v(1.0), v(1.0)])[0].to_f32(), 2050.0);
        let b = |x: f32| vec![bf16::from_f32(x); 3];
        assert_eq!(run(DType::Bf16, Op::Max, &[b(1.5), b(-2.0)])[2].to_f32(), 1.5);
    }

    #[test]
    fn bf16_rounding_matches_the_half_crate() {
        let vals: Vec<f32> = (0..100_000)
            .map(|i| (i as f32 - 50_000.0) * 0.37e-3 + (i % 7) as f32 * 1.3e5)
            .chain([f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -0.0, f32::MAX, f32::MIN_POSITIVE])
            .collect();
        let mut ours = vec![0u16; vals.len()];
        f32_to_bf16(&vals, &mut ours);
        for (v, o) in vals.iter().zip(&ours) {
            let want = bf16::from_f32(*v);
            if v.is_nan() {
                assert!(bf16::from_bits(*o).is_nan());
            } else {
                assert_eq!(*o, want.to_bits(), "{v}");
            }
        }
    }
}
