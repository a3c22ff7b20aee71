//! Compressed Sparse Overlapped Activations.

use rayon::prelude::*;

/// The non-zero activations of one NHWC image, each stored once with its position: for every
/// pixel and channel group, the channels (within the group) that are non-zero and their
/// values. Neighbouring receptive fields share these lists instead of copying them, which is
/// what im2CSOA multiplies from and what im2CSR expands its rows from.
///
/// Storage has a fixed slot of `channels` entries per pixel, so building it never allocates
/// by the data and costs one pass over the image.
#[derive(Debug, Clone, Default)]
pub struct Csoa {
    height: usize,
    width: usize,
    channels: usize,
    groups: usize,
    /// Non-zero count per (pixel, group).
    counts: Vec<u32>,
    /// Channel within the group, per slot.
    chans: Vec<u32>,
    vals: Vec<f32>,
}

impl Csoa {
    /// Compresses one NHWC image of `height x width x channels`, split into `groups` channel
    /// groups. Panics if the sizes disagree (a programming error: callers check them).
    pub fn from_image(
        image: &[f32],
        height: usize,
        width: usize,
        channels: usize,
        groups: usize,
    ) -> Self {
        let mut csoa = Csoa::default();
        csoa.fill(image, height, width, channels, groups);
        csoa
    }

    /// Refills `self` from an image, reusing its buffers. Rows of pixels are compressed in
    /// parallel.
    pub fn fill(
        &mut self,
        image: &[f32],
        height: usize,
        width: usize,
        channels: usize,
        groups: usize,
    ) {
        assert_eq!(image.len(), height * width * channels, "image size");
        assert!(
            groups > 0 && channels.is_multiple_of(groups),
            "groups must divide channels"
        );
        *self = Csoa {
            height,
            width,
            channels,
            groups,
            counts: std::mem::take(&mut self.counts),
            chans: std::mem::take(&mut self.chans),
            vals: std::mem::take(&mut self.vals),
        };
        self.counts.resize(height * width * groups, 0);
        self.chans.resize(image.len(), 0);
        self.vals.resize(image.len(), 0.0);
        let cg = channels / groups;
        let row = width * channels;
        image
            .par_chunks(row)
            .zip(self.chans.par_chunks_mut(row))
            .zip(self.vals.par_chunks_mut(row))
            .zip(self.counts.par_chunks_mut(width * groups))
            .for_each(|(((src, chans), vals), counts)| {
                let slots = src
                    .chunks_exact(cg)
                    .zip(chans.chunks_exact_mut(cg))
                    .zip(vals.chunks_exact_mut(cg));
                // Slots follow the same (pixel, group) order as `counts`.
                for (((src, chans), vals), count) in slots.zip(counts.iter_mut()) {
                    // Branch-free compaction: write every value, advance only past non-zeros.
                    let mut n = 0usize;
                    for (c, &v) in src.iter().enumerate() {
                        chans[n] = c as u32;
                        vals[n] = v;
                        n += (v != 0.0) as usize;
                    }
                    *count = n as u32;
                }
            });
    }

    /// The non-zero channels (within group `g`) and values of pixel `(y, x)`.
    #[inline]
    pub fn pixel(&self, y: usize, x: usize, g: usize) -> (&[u32], &[f32]) {
        let range = self.pixel_range(y * self.width + x, g);
        (&self.chans[range.clone()], &self.vals[range])
    }

    /// Where the entries of pixel `y * width + x` in group `g` lie in [`Csoa::entries`].
    #[inline]
    pub fn pixel_range(&self, pixel: usize, g: usize) -> std::ops::Range<usize> {
        let pg = pixel * self.groups + g;
        let start = pg * (self.channels / self.groups);
        start..start + self.counts[pg] as usize
    }

    /// All channel indices and values; only the ranges of [`Csoa::pixel_range`] are
    /// meaningful.
    pub fn entries(&self) -> (&[u32], &[f32]) {
        (&self.chans, &self.vals)
    }

    /// Number of non-zero activations.
    pub fn nnz(&self) -> usize {
        self.counts.iter().map(|&c| c as usize).sum()
    }

    pub fn height(&self) -> usize {
        self.height
    }
    pub fn width(&self) -> usize {
        self.width
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_each_non_zero_once_by_pixel_and_group() {
        // 1 x 2 pixels, 4 channels in 2 groups.
        let image = [0.0, 1.0, 2.0, 0.0, /* pixel 2 */ 0.0, 0.0, 0.0, 3.0];
        let csoa = Csoa::from_image(&image, 1, 2, 4, 2);
        assert_eq!(csoa.pixel(0, 0, 0), (&[1u32][..], &[1.0f32][..]));
        assert_eq!(csoa.pixel(0, 0, 1), (&[0u32][..], &[2.0f32][..]));
        assert_eq!(csoa.pixel(0, 1, 0), (&[][..], &[][..]));
        assert_eq!(csoa.pixel(0, 1, 1), (&[1u32][..], &[3.0f32][..]));
        assert_eq!(csoa.nnz(), 3);
    }
}
