//! f32 buffers that start on a cache line.

use std::ops::{Deref, DerefMut};

/// Zero-initialised f32 values whose first lies at the start of a 64-byte cache line, so that
/// 16-lane loads and stores of rows whose length is a multiple of 16 never straddle two lines. A
/// `Vec<f32>` is only 16-byte aligned: reading query rows split across lines, the decode's
/// token-by-token scores took 8 % longer (the kernel alone, cache-hot). Not a rule for every
/// buffer: aligned so, the attention accumulators made bf16 prefill 3-4 % slower.
#[derive(Clone, Default)]
pub(crate) struct Lines {
    lines: Vec<Line>,
    len: usize,
}

/// One cache line of f32 values.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([f32; 16]);

impl Lines {
    /// Makes it `len` values long: the first values as they were, any new ones zero.
    pub fn resize(&mut self, len: usize) {
        self.lines.resize(len.div_ceil(16), Line([0.0; 16]));
        // Shorter: the rest of the last line is zeroed, to read as new values if it grows again.
        if let (Some(last), tail @ 1..) = (self.lines.last_mut(), len % 16) {
            last.0[tail..].fill(0.0);
        }
        self.len = len;
    }
}

impl Deref for Lines {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        // SAFETY: `Line` is `repr(C)` around 16 f32 (64 bytes, no padding), so the lines are
        // 16·lines.len() ≥ len initialised f32 in a row.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<f32>(), self.len) }
    }
}

impl DerefMut for Lines {
    fn deref_mut(&mut self) -> &mut [f32] {
        // SAFETY: as in `deref`, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<f32>(), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::Lines;

    #[test]
    fn lines_start_on_a_cache_line_and_hold_what_was_written_through_resizes() {
        for len in [0, 1, 15, 16, 17, 130] {
            let mut l = Lines::default();
            l.resize(len);
            assert_eq!(l.len(), len);
            assert!(l.iter().all(|&x| x == 0.0));
            assert_eq!(l.as_ptr() as usize % 64, 0, "len {len}");
            l.iter_mut().enumerate().for_each(|(i, x)| *x = i as f32);
            let copy = l.clone();
            assert!(copy.iter().enumerate().all(|(i, &x)| x == i as f32));
            assert_eq!(copy.as_ptr() as usize % 64, 0);
            // Longer: what was there stays, the rest is zero; shorter: the first values stay.
            l.resize(len + 40);
            assert_eq!(l.len(), len + 40);
            assert!(l.iter().enumerate().all(|(i, &x)| x == if i < len { i as f32 } else { 0.0 }));
            assert_eq!(l.as_ptr() as usize % 64, 0);
            l.resize(len / 2);
            assert!(l.len() == len / 2 && l.iter().enumerate().all(|(i, &x)| x == i as f32));
            l.resize(len);
            assert!(l.iter().enumerate().all(|(i, &x)| x == if i < len / 2 { i as f32 } else { 0.0 }), "len {len}");
        }
    }
}
