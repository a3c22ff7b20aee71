//! Compressed Sparse Overlapped Activations.

use crate::kernels::compact::Compaction;
use crate::kernels::Isa;
use rayon::prelude::*;
use std::mem::size_of;
use std::ops::Range;

/// The non-zero activations of one NHWC image, each stored once with its position: for every
/// pixel and channel group, the channels (within the group) that are non-zero and their
/// values, packed one list after another. Neighbouring receptive fields share these lists
/// instead of copying them, which is what im2CSOA multiplies from and what im2CSR expands
/// its rows from.
///
/// Each list is cut into the sub-lists of chunks of a group's channels (the last chunk may
/// be narrower), and where each sub-list starts is recorded: a reader that walks the
/// channels chunk by chunk then knows each walk's length before it starts, rather than
/// finding its end by comparing channels as it goes.
///
/// Building it costs two passes over the image (count, then fill) and stores only the
/// non-zeros, so that the lists of a layer's image stay in cache while they are re-read for
/// every kernel tap.
#[derive(Debug, Clone, Default)]
pub struct Csoa {
    width: usize,
    groups: usize,
    /// Channels per chunk, and chunks per (pixel, group) list.
    chunk: usize,
    chunks: usize,
    /// Start of each (pixel, group, chunk) sub-list in `chans`/`vals`; one more entry closes
    /// the last.
    offsets: Vec<usize>,
    /// Channel within the group, per entry.
    chans: Vec<u32>,
    vals: Vec<f32>,
}

/// Rows of pixels below which a fill is not split further across threads.
const ROWS_PER_TASK: usize = 4;

impl Csoa {
    /// Compresses one NHWC image of `height x width x channels`, split into `groups` channel
    /// groups whose lists are cut into chunks of `chunk` channels. Panics if the sizes
    /// disagree (a programming error: callers check them).
    pub fn from_image(
        image: &[f32],
        [height, width, channels]: [usize; 3],
        groups: usize,
        chunk: usize,
    ) -> Self {
        let mut csoa = Csoa::default();
        csoa.fill(image, [height, width, channels], groups, chunk);
        csoa
    }

    /// Refills `self` from an image, reusing its buffers. Rows of pixels are compressed in
    /// parallel.
    pub fn fill(
        &mut self,
        image: &[f32],
        [height, width, channels]: [usize; 3],
        groups: usize,
        chunk: usize,
    ) {
        assert_eq!(image.len(), height * width * channels, "image size");
        assert!(
            groups > 0 && channels.is_multiple_of(groups),
            "groups must divide channels"
        );
        assert!(chunk > 0, "chunks hold at least one channel");
        let cg = channels / groups;
        let chunks = cg.div_ceil(chunk);
        self.width = width;
        self.groups = groups;
        (self.chunk, self.chunks) = (chunk.min(cg), chunks);
        let lists = height * width * groups * chunks;
        let compaction = Compaction::for_isa(Isa::detect());
        // Pass 1: count each sub-list's non-zeros, in parallel by rows of pixels.
        self.offsets.resize(lists + 1, 0);
        let (counts, _) = self.offsets.split_at_mut(lists);
        counts
            .par_chunks_mut(width * groups * chunks)
            .zip(image.par_chunks(width * channels))
            .for_each(|(counts, row)| {
                let sub_lists = row.chunks_exact(cg).flat_map(|list| list.chunks(chunk));
                for (count, list) in counts.iter_mut().zip(sub_lists) {
                    *count = compaction.count_nonzeros(list);
                }
            });
        // Counts to offsets (an exclusive prefix sum), closed by the total.
        let mut total = 0;
        for offset in counts.iter_mut() {
            let count = std::mem::replace(offset, total);
            total += count;
        }
        self.offsets[lists] = total;
        self.chans.resize(total, 0);
        self.vals.resize(total, 0.0);
        // Pass 2: fill, splitting the entries at row boundaries between threads. An image
        // with no non-zero has nothing to fill, and its empty buffers no memory to point at:
        // AVX-512's masked stores of zero lanes there take a slow assist every 16 values
        // (an all-zero 30x30x512 image converted 3x slower).
        if total == 0 {
            return;
        }
        let row_entries = |y: usize| self.offsets[y * width * groups * chunks];
        fill_rows(
            image,
            0..height,
            width * channels,
            cg,
            &row_entries,
            &mut self.chans,
            &mut self.vals,
        );
    }

    /// The non-zero channels (within group `g`) and values of pixel `(y, x)`.
    #[inline]
    pub fn pixel(&self, y: usize, x: usize, g: usize) -> (&[u32], &[f32]) {
        let range = self.pixel_range(y * self.width + x, g);
        (&self.chans[range.clone()], &self.vals[range])
    }

    /// Where the entries of pixel `y * width + x` in group `g` lie in [`Csoa::entries`].
    #[inline]
    pub fn pixel_range(&self, pixel: usize, g: usize) -> Range<usize> {
        let first = (pixel * self.groups + g) * self.chunks;
        self.offsets[first]..self.offsets[first + self.chunks]
    }

    /// Where the entries of chunk `chunk` of pixel `pixel`'s list in group `g` lie in
    /// [`Csoa::entries`].
    #[inline]
    pub fn chunk_range(&self, pixel: usize, g: usize, chunk: usize) -> Range<usize> {
        assert!(chunk < self.chunks, "chunk {chunk} of {}", self.chunks);
        let at = (pixel * self.groups + g) * self.chunks + chunk;
        self.offsets[at]..self.offsets[at + 1]
    }

    /// Channels per chunk: the `chunk` of the last fill, or the group's width if that was
    /// narrower.
    pub fn chunk(&self) -> usize {
        self.chunk
    }

    /// All channel indices and values, list after list.
    pub fn entries(&self) -> (&[u32], &[f32]) {
        (&self.chans, &self.vals)
    }

    /// Bytes its lists and offsets hold.
    pub fn bytes(&self) -> usize {
        self.offsets.len() * size_of::<usize>()
            + self.chans.len() * size_of::<u32>()
            + self.vals.len() * size_of::<f32>()
    }

    /// The most bytes it holds for an image of `pixels x channels` cut into `lists` lists
    /// (pixels x groups x chunks), when every activation is non-zero (saturating).
    pub fn bytes_for(pixels: usize, channels: usize, lists: usize) -> usize {
        let entry = size_of::<u32>() + size_of::<f32>();
        let offsets = lists.saturating_add(1).saturating_mul(size_of::<usize>());
        offsets.saturating_add(pixels.saturating_mul(channels).saturating_mul(entry))
    }

    /// Number of non-zero activations.
    pub fn nnz(&self) -> usize {
        self.chans.len()
    }
}

/// Writes the non-zeros of pixel rows `rows` (their entries start at `row_entries(rows.start)`
/// and `chans`/`vals` hold exactly them), halving the rows across threads.
fn fill_rows(
    image: &[f32],
    rows: Range<usize>,
    row_len: usize,
    cg: usize,
    row_entries: &(impl Fn(usize) -> usize + Sync),
    chans: &mut [u32],
    vals: &mut [f32],
) {
    if rows.len() > ROWS_PER_TASK {
        let mid = rows.start + rows.len() / 2;
        let split = row_entries(mid) - row_entries(rows.start);
        let (chans_lo, chans_hi) = chans.split_at_mut(split);
        let (vals_lo, vals_hi) = vals.split_at_mut(split);
        rayon::join(
            || {
                fill_rows(
                    image,
                    rows.start..mid,
                    row_len,
                    cg,
                    row_entries,
                    chans_lo,
                    vals_lo,
                )
            },
            || {
                fill_rows(
                    image,
                    mid..rows.end,
                    row_len,
                    cg,
                    row_entries,
                    chans_hi,
                    vals_hi,
                )
            },
        );
        return;
    }
    let (compaction, mut n) = (Compaction::for_isa(Isa::detect()), 0);
    for list in image[rows.start * row_len..rows.end * row_len].chunks_exact(cg) {
        n = compaction.compact_nonzeros(list, 0, chans, vals, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_each_non_zero_once_by_pixel_and_group() {
        // 1 x 2 pixels, 4 channels in 2 groups.
        let image = [0.0, 1.0, 2.0, 0.0, /* pixel 2 */ 0.0, 0.0, 0.0, 3.0];
        let csoa = Csoa::from_image(&image, [1, 2, 4], 2, 2);
        assert_eq!(csoa.pixel(0, 0, 0), (&[1u32][..], &[1.0f32][..]));
        assert_eq!(csoa.pixel(0, 0, 1), (&[0u32][..], &[2.0f32][..]));
        assert_eq!(csoa.pixel(0, 1, 0), (&[][..], &[][..]));
        assert_eq!(csoa.pixel(0, 1, 1), (&[1u32][..], &[3.0f32][..]));
        assert_eq!(csoa.nnz(), 3);
    }

    #[test]
    fn refilling_a_larger_image_in_parallel_matches_a_direct_scan() {
        let (h, w, c) = (23, 5, 6);
        let image: Vec<f32> = (0..h * w * c)
            .map(|i| if i % 3 == 0 { i as f32 } else { 0.0 })
            .collect();
        let mut csoa = Csoa::from_image(&[1.0; 4], [1, 1, 4], 1, 4);
        csoa.fill(&image, [h, w, c], 3, 1);
        for y in 0..h {
            for x in 0..w {
                for g in 0..3 {
                    let base = (y * w + x) * c + g * 2;
                    let want: Vec<u32> = (0..2)
                        .filter(|&k| image[base + k] != 0.0)
                        .map(|k| k as u32)
                        .collect();
                    assert_eq!(csoa.pixel(y, x, g).0, &want[..], "pixel {y},{x} group {g}");
                }
            }
        }
        assert_eq!(csoa.nnz(), image.iter().filter(|&&v| v != 0.0).count());
    }

    #[test]
    fn chunks_split_each_list_by_channel() {
        // One pixel, 7 channels in 1 group, chunks of 3 (the last one channel wide).
        let image = [1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 3.0];
        let csoa = Csoa::from_image(&image, [1, 1, 7], 1, 3);
        let (chans, _) = csoa.entries();
        let chunk = |k| &chans[csoa.chunk_range(0, 0, k)];
        assert_eq!(
            (chunk(0), chunk(1), chunk(2)),
            (&[0, 2][..], &[][..], &[6][..])
        );
        assert_eq!(csoa.pixel_range(0, 0), 0..3);
        // A chunk wider than the group is the whole list.
        let csoa = Csoa::from_image(&image, [1, 1, 7], 1, 64);
        assert_eq!(csoa.chunk_range(0, 0, 0), 0..3);
        assert!(std::panic::catch_unwind(|| csoa.chunk_range(0, 0, 1)).is_err());
    }
}
