//! HCCL data types and reduce operations on raw memory. Reductions of fp16 and bf16 accumulate in f32
//! and round once; integers wrap.

use ascend_sys::*;
use half::{bf16, f16};

/// A supported element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    F16,
    Bf16,
    F32,
    F64,
}

/// A reduce operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Sum,
    Prod,
    Max,
    Min,
}

impl DType {
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

fn combine<A: Acc>(op: Op, a: A, b: A) -> A {
    match op {
        Op::Sum => a.add(b),
        Op::Prod => a.mul(b),
        Op::Max => a.max(b),
        Op::Min => a.min(b),
    }
}

/// Reduces `srcs` element-wise into every one of `dsts` (`n` elements each; writing two destinations
/// in one pass saves re-reading the result). A destination may be one of the sources.
///
/// # Safety
/// Every pointer must be valid for `n` elements of `t` (aligned or not), and a destination must not
/// overlap a source other than itself.
pub unsafe fn reduce(t: DType, op: Op, dsts: &[*mut u8], srcs: &[*const u8], n: usize) {
    let dst = dsts;
    // SAFETY (all arms): forwarded from this function's contract.
    unsafe {
        match t {
            DType::I8 => direct::<i8>(op, dst, srcs, n),
            DType::I16 => direct::<i16>(op, dst, srcs, n),
            DType::I32 => direct::<i32>(op, dst, srcs, n),
            DType::I64 => direct::<i64>(op, dst, srcs, n),
            DType::U8 => direct::<u8>(op, dst, srcs, n),
            DType::U16 => direct::<u16>(op, dst, srcs, n),
            DType::U32 => direct::<u32>(op, dst, srcs, n),
            DType::U64 => direct::<u64>(op, dst, srcs, n),
            DType::F32 => direct::<f32>(op, dst, srcs, n),
            DType::F64 => direct::<f64>(op, dst, srcs, n),
            DType::F16 => {
                widened(op, dst, srcs, n, |x: u16| f16::from_bits(x).to_f32(), |x| f16::from_f32(x).to_bits())
            }
            DType::Bf16 => {
                widened(op, dst, srcs, n, |x: u16| bf16::from_bits(x).to_f32(), |x| bf16::from_f32(x).to_bits())
            }
        }
    }
}

/// Elements per block: small enough for the stack, large enough to vectorise.
const BLOCK: usize = 1024;

unsafe fn direct<T: Acc>(op: Op, dsts: &[*mut u8], srcs: &[*const u8], n: usize) {
    let mut block = [std::mem::MaybeUninit::<T>::uninit(); BLOCK];
    let mut start = 0;
    while start < n {
        let len = BLOCK.min(n - start);
        // SAFETY: `block` has room for `len` values; the sources hold `n` elements (contract).
        let a: &mut [T] = unsafe {
            let a = std::slice::from_raw_parts_mut(block.as_mut_ptr() as *mut T, len);
            for (i, v) in a.iter_mut().enumerate() {
                *v = (srcs[0] as *const T).add(start + i).read_unaligned();
            }
            a
        };
        for s in &srcs[1..] {
            let s = *s as *const T;
            for (i, v) in a.iter_mut().enumerate() {
                // SAFETY: in bounds by the contract.
                *v = combine(op, *v, unsafe { s.add(start + i).read_unaligned() });
            }
        }
        for &dst in dsts {
            let dst = dst as *mut T;
            for (i, v) in a.iter().enumerate() {
                // SAFETY: in bounds by the contract.
                unsafe { dst.add(start + i).write_unaligned(*v) };
            }
        }
        start += len;
    }
}

unsafe fn widened(
    op: Op,
    dsts: &[*mut u8],
    srcs: &[*const u8],
    n: usize,
    load: impl Fn(u16) -> f32,
    store: impl Fn(f32) -> u16,
) {
    let mut acc = [0f32; BLOCK];
    let mut start = 0;
    while start < n {
        let len = BLOCK.min(n - start);
        let a = &mut acc[..len];
        let first = srcs[0] as *const u16;
        for (i, v) in a.iter_mut().enumerate() {
            // SAFETY: in bounds by the contract.
            *v = load(unsafe { first.add(start + i).read_unaligned() });
        }
        for s in &srcs[1..] {
            let s = *s as *const u16;
            for (i, v) in a.iter_mut().enumerate() {
                // SAFETY: in bounds by the contract.
                *v = combine(op, *v, load(unsafe { s.add(start + i).read_unaligned() }));
            }
        }
        for &dst in dsts {
            let dst = dst as *mut u16;
            for (i, v) in a.iter().enumerate() {
                // SAFETY: in bounds by the contract.
                unsafe { dst.add(start + i).write_unaligned(store(*v)) };
            }
        }
        start += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
