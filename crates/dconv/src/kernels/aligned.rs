//! Float buffers that start on a cache line.

/// Bytes of a cache line (and of an AVX-512 vector).
const LINE: usize = 64;
const FLOATS_PER_LINE: usize = LINE / 4;

/// A float buffer whose first element sits on a 64-byte boundary, so that whole-vector loads
/// of rows that are multiples of 16 floats never straddle two cache lines. (A large `Vec`
/// may start 16 bytes past a page boundary, and every 64-byte load from it then touches two
/// lines.)
#[derive(Debug, Clone, Default)]
pub struct CacheAligned {
    buf: Vec<f32>,
    start: usize,
    len: usize,
}

impl CacheAligned {
    /// `len` zeros.
    pub fn zeroed(len: usize) -> Self {
        let mut aligned = CacheAligned::default();
        aligned.reset_zeroed(len);
        aligned
    }

    /// Makes the buffer `len` zeros, reusing its memory when it is large enough.
    pub fn reset_zeroed(&mut self, len: usize) {
        self.reset(len);
        self.as_mut_slice().fill(0.0);
    }

    /// Makes the buffer `len` floats long, reusing its memory when it is large enough, and
    /// then without writing it: it holds whatever it held (zeros where it is new), for a
    /// caller that overwrites it.
    pub fn reset(&mut self, len: usize) {
        if self.buf.len() < len + FLOATS_PER_LINE - 1 {
            self.buf = vec![0.0; len + FLOATS_PER_LINE - 1];
            // In floats; an f32 pointer can always reach a 64-byte boundary.
            self.start = self
                .buf
                .as_ptr()
                .align_offset(LINE)
                .min(FLOATS_PER_LINE - 1);
        }
        self.len = len;
    }

    /// Bytes it holds, with the slack that aligns it.
    pub fn bytes(&self) -> usize {
        self.buf.len() * size_of::<f32>()
    }

    /// The most bytes a buffer of `len` floats holds (saturating).
    pub fn bytes_for(len: usize) -> usize {
        len.saturating_add(FLOATS_PER_LINE - 1)
            .saturating_mul(size_of::<f32>())
    }

    pub fn as_slice(&self) -> &[f32] {
        &self.buf[self.start..self.start + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_a_cache_line_and_reuses_its_memory() {
        let mut buf = CacheAligned::zeroed(1000);
        assert_eq!(buf.as_slice().as_ptr() as usize % LINE, 0);
        buf.as_mut_slice()[999] = 1.0;
        let before = buf.as_slice().as_ptr();
        buf.reset_zeroed(500);
        assert_eq!(
            (buf.as_slice().len(), buf.as_slice().as_ptr()),
            (500, before)
        );
        assert!(buf.as_slice().iter().all(|&v| v == 0.0));
        buf.reset_zeroed(5000);
        assert_eq!(buf.as_slice().as_ptr() as usize % LINE, 0);
        assert_eq!(buf.as_slice().len(), 5000);
    }
}
