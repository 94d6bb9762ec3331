//! The small kernels around the products of a transformer layer: RMSNorm, rotary embeddings (NeoX
//! layout, as Llama uses), SiLU·mul (SwiGLU), residual add, embedding lookup and argmax. Rows are
//! split over the compute pool; f16/bf16 are computed in f32. Host index data (token ids,
//! positions) are slices checked before anything is enqueued.
//!
//! Every function fails with `InvalidArgument`, enqueuing nothing, when a buffer's length does not
//! match the shape its doc gives, a size that shapes a row (dimension, head size, width, `inter`) is
//! zero, or a size overflows; and returns the runtime's error when the stream cannot take the work.
//! Inputs of zero rows are accepted (there is nothing to compute), except by [`rotary`], which needs
//! its positions to find the rows.
//!
//! On an NPU stream the same calls run aclnnRmsNorm, aclnnRotaryPositionEmbedding, aclnnSwiGlu,
//! aclnnInplaceAdd, aclnnEmbedding and aclnnArgMax ([`npu`]).

pub mod npu;

use crate::args::expect_len;
use crate::matmul::Element;
use ascend_rt::{DeviceBuffer, Error, Result, Stream};
use std::sync::Arc;

/// Rows per pool item (enough work to amortise scheduling).
const ROWS_PER_ITEM: usize = 8;

/// True when the stream runs host kernels (the simulator); false on an NPU.
fn on_host(stream: &Stream) -> bool {
    stream.context().runtime().host_addressable()
}

/// Runs `f(row_index, row)` over the `width`-element rows of `data`, on the pool.
fn par_rows<T: Send>(data: &mut [T], width: usize, f: &(dyn Fn(usize, &mut [T]) + Sync)) {
    let rows = data.len() / width.max(1);
    let addr = data.as_mut_ptr() as usize;
    ascend_rt::host::pool().parallel_for(rows.div_ceil(ROWS_PER_ITEM), &|item| {
        for r in item * ROWS_PER_ITEM..rows.min((item + 1) * ROWS_PER_ITEM) {
            // SAFETY: rows are disjoint `width`-element ranges of `data`, which outlives the loop.
            let row = unsafe { std::slice::from_raw_parts_mut((addr as *mut T).add(r * width), width) };
            f(r, row);
        }
    });
}

/// `out[r] = x[r] / sqrt(mean(x[r]²) + eps) · weight`, rows of `weight.len()` elements.
pub fn rms_norm<T: Element>(
    stream: &Arc<Stream>,
    x: &DeviceBuffer<T>,
    weight: &DeviceBuffer<T>,
    eps: f32,
    out: &mut DeviceBuffer<T>,
) -> Result<()> {
    let dim = weight.len();
    if dim == 0 || !x.len().is_multiple_of(dim) || !(eps >= 0.0 && eps.is_finite()) {
        return Err(Error::InvalidArgument(format!(
            "rms_norm: {} elements are not rows of {dim}, or eps {eps} is not a finite non-negative number",
            x.len()
        )));
    }
    expect_len("rms_norm out", out.len(), &[x.len()])?;
    if !on_host(stream) {
        return npu::rms_norm(stream, x, weight, eps, out);
    }
    let mut l = stream.host_launch()?;
    let (xh, wh, mut oh) = (l.read(x)?, l.read(weight)?, l.write(out)?);
    l.launch(move || {
        // SAFETY: inside the kernel the views are live and ordered after their writes.
        let (x, w, o) = unsafe { (xh.as_slice(), wh.as_slice(), oh.as_mut_slice()) };
        par_rows(o, dim, &|r, row| {
            let src = &x[r * dim..(r + 1) * dim];
            let ss: f32 = src.iter().map(|v| v.to_f32() * v.to_f32()).sum();
            let inv = 1.0 / (ss / dim as f32 + eps).sqrt();
            for ((o, v), g) in row.iter_mut().zip(src).zip(w) {
                *o = T::from_f32(v.to_f32() * inv * g.to_f32());
            }
        });
    })
}

/// Rotary embeddings in place on `x` (`[tokens, heads, head_dim]`, NeoX layout: the first and second
/// halves of each head are the pairs), token t at `positions[t]`, frequencies `theta^(−2i/head_dim)`.
pub fn rotary<T: Element>(
    stream: &Arc<Stream>,
    x: &mut DeviceBuffer<T>,
    positions: &[i32],
    head_dim: usize,
    theta: f32,
) -> Result<()> {
    let tokens = positions.len();
    let row = tokens.checked_mul(head_dim);
    if head_dim == 0 || !head_dim.is_multiple_of(2) || tokens == 0 || row.is_none_or(|n| !x.len().is_multiple_of(n)) {
        return Err(Error::InvalidArgument(format!(
            "rotary: {} elements are not {tokens} tokens of heads of {head_dim} (even) elements",
            x.len()
        )));
    }
    if let Some(p) = positions.iter().find(|&&p| p < 0) {
        return Err(Error::InvalidArgument(format!("rotary: position {p} is negative")));
    }
    if !(theta > 1.0 && theta.is_finite()) {
        return Err(Error::InvalidArgument(format!("rotary: theta {theta} must be a finite number above 1")));
    }
    if !on_host(stream) {
        return npu::rotary(stream, x, positions, head_dim, theta);
    }
    let width = x.len() / tokens;
    let positions = positions.to_vec();
    let half = head_dim / 2;
    let inv_freq = inv_freq(head_dim, theta);
    let mut l = stream.host_launch()?;
    let mut xh = l.write(x)?;
    l.launch(move || {
        // SAFETY: inside the kernel the view is live and ordered after its writes.
        let x = unsafe { xh.as_mut_slice() };
        par_rows(x, width, &|t, row| {
            let p = positions[t] as f64;
            let (cos, sin): (Vec<f32>, Vec<f32>) =
                inv_freq.iter().map(|f| ((p * f).cos() as f32, (p * f).sin() as f32)).unzip();
            for head in row.chunks_exact_mut(head_dim) {
                let (a, b) = head.split_at_mut(half);
                for i in 0..half {
                    let (x0, x1) = (a[i].to_f32(), b[i].to_f32());
                    a[i] = T::from_f32(x0 * cos[i] - x1 * sin[i]);
                    b[i] = T::from_f32(x1 * cos[i] + x0 * sin[i]);
                }
            }
        });
    })
}

/// Rotary frequencies `theta^(−2i/head_dim)` for the `head_dim / 2` pairs.
fn inv_freq(head_dim: usize, theta: f32) -> Vec<f64> {
    (0..head_dim / 2).map(|i| (theta as f64).powf(-2.0 * i as f64 / head_dim as f64)).collect()
}

/// SwiGLU: `out[t, i] = silu(gate_up[t, i]) · gate_up[t, inter + i]`, with `gate_up`
/// `[tokens, 2·inter]` (gate half, then up half) and `out` `[tokens, inter]`.
pub fn silu_mul<T: Element>(
    stream: &Arc<Stream>,
    gate_up: &DeviceBuffer<T>,
    inter: usize,
    out: &mut DeviceBuffer<T>,
) -> Result<()> {
    if inter.checked_mul(2).is_none_or(|n| n == 0 || !gate_up.len().is_multiple_of(n)) {
        return Err(Error::InvalidArgument(format!(
            "silu_mul: {} elements are not rows of 2 × {inter}",
            gate_up.len()
        )));
    }
    expect_len("silu_mul out", out.len(), &[gate_up.len() / 2])?;
    if !on_host(stream) {
        return npu::silu_mul(stream, gate_up, inter, out);
    }
    let mut l = stream.host_launch()?;
    let (gh, mut oh) = (l.read(gate_up)?, l.write(out)?);
    l.launch(move || {
        // SAFETY: inside the kernel the views are live and ordered after their writes.
        let (g, o) = unsafe { (gh.as_slice(), oh.as_mut_slice()) };
        par_rows(o, inter, &|t, row| {
            let (gate, up) = g[t * 2 * inter..(t + 1) * 2 * inter].split_at(inter);
            for ((o, a), b) in row.iter_mut().zip(gate).zip(up) {
                let a = a.to_f32();
                *o = T::from_f32(a / (1.0 + (-a).exp()) * b.to_f32());
            }
        });
    })
}

/// `x += y` elementwise (residual connections).
pub fn add_assign<T: Element>(stream: &Arc<Stream>, x: &mut DeviceBuffer<T>, y: &DeviceBuffer<T>) -> Result<()> {
    expect_len("add_assign y", y.len(), &[x.len()])?;
    if !on_host(stream) {
        return npu::add_assign(stream, x, y);
    }
    let mut l = stream.host_launch()?;
    let (mut xh, yh) = (l.write(x)?, l.read(y)?);
    l.launch(move || {
        // SAFETY: inside the kernel the views are live and ordered after their writes.
        let (x, y) = unsafe { (xh.as_mut_slice(), yh.as_slice()) };
        x.iter_mut().zip(y).for_each(|(a, b)| *a = T::from_f32(a.to_f32() + b.to_f32()));
    })
}

/// `out[t] = table[ids[t]]`, rows of `dim` elements; every id is checked against the table.
pub fn embedding<T: Element>(
    stream: &Arc<Stream>,
    table: &DeviceBuffer<T>,
    dim: usize,
    ids: &[i32],
    out: &mut DeviceBuffer<T>,
) -> Result<()> {
    if dim == 0 || !table.len().is_multiple_of(dim) {
        return Err(Error::InvalidArgument(format!("embedding: {} elements are not rows of {dim}", table.len())));
    }
    let vocab = table.len() / dim;
    if let Some((t, id)) = ids.iter().enumerate().find(|(_, &id)| id < 0 || id as usize >= vocab) {
        return Err(Error::InvalidArgument(format!(
            "embedding: token {t} has id {id}, outside the vocabulary of {vocab}"
        )));
    }
    expect_len("embedding out", out.len(), &[ids.len(), dim])?;
    if !on_host(stream) {
        return npu::embedding(stream, table, dim, ids, out);
    }
    let ids = ids.to_vec();
    let mut l = stream.host_launch()?;
    let (th, mut oh) = (l.read(table)?, l.write(out)?);
    l.launch(move || {
        // SAFETY: inside the kernel the views are live and ordered after their writes.
        let (table, o) = unsafe { (th.as_slice(), oh.as_mut_slice()) };
        for (row, &id) in o.chunks_exact_mut(dim).zip(&ids) {
            row.copy_from_slice(&table[id as usize * dim..(id as usize + 1) * dim]);
        }
    })
}

/// `out[r]` = index of the largest of row r of `x` (rows of `width`; the first on ties). A NaN
/// counts as the largest (the first NaN wins), as in torch and aclnnArgMax. `out` is i64, as
/// aclnnArgMax writes it.
pub fn argmax<T: Element>(
    stream: &Arc<Stream>,
    x: &DeviceBuffer<T>,
    width: usize,
    out: &mut DeviceBuffer<i64>,
) -> Result<()> {
    if width == 0 || !x.len().is_multiple_of(width) {
        return Err(Error::InvalidArgument(format!("argmax: {} elements are not rows of {width}", x.len())));
    }
    expect_len("argmax out", out.len(), &[x.len() / width])?;
    if !on_host(stream) {
        return npu::argmax(stream, x, width, out);
    }
    let mut l = stream.host_launch()?;
    let (xh, mut oh) = (l.read(x)?, l.write(out)?);
    l.launch(move || {
        // SAFETY: inside the kernel the views are live and ordered after their writes.
        let (x, o) = unsafe { (xh.as_slice(), oh.as_mut_slice()) };
        for (r, v) in o.iter_mut().enumerate() {
            let row = &x[r * width..(r + 1) * width];
            let mut best = (0usize, f32::NEG_INFINITY);
            for (i, e) in row.iter().enumerate() {
                let e = e.to_f32();
                if e.is_nan() {
                    best = (i, e);
                    break;
                }
                if e > best.1 {
                    best = (i, e);
                }
            }
            *v = best.0 as i64;
        }
    })
}
