//! Sparse-weight on weights pruned in blocks of [`BLOCK_WIDTH`] output channels: one vector multiply-add
//! per non-zero block, pixel and vector, with the output channels in the vector lanes.
//!
//! The list form ([`super::SparseWeight`]) puts pixels in the lanes: it transposes the input
//! into planes, copies each tile's patches into a window and transposes its sums back into
//! the channels-last output, work that does not shrink with the weights (a fifth of its time
//! on 256 -> 256 3x3 at 60 x 60 with 80 % zero blocks, two thirds on 64 -> 64 at 224 x 224
//! with 90 %). Where the zeros come in whole blocks of output channels, the block form reads
//! and writes channels-last as they are: each block keeps the list of its non-zero
//! (tap, input channel) rows, each named by its offset from a pixel's window in a
//! zero-padded copy of the input, and a tile of pixels sums the list in registers
//! ([`BlockListTile`]).
//!
//! Each thread takes an even share of the output rows and goes through it by bands whose
//! padded input rows fit half of L2; within a band, blocks go outside the tiles, so that one
//! block's rows stay in L1 while every tile of the band reads them.

use super::super::run_loop::{over_images, timed};
use super::super::{ConvKernel, ConvSpec, Epilogue, ScratchBytes, Timing, Workspace};
use crate::cache::CacheSizes;
use crate::error::{Error, Result};
use crate::kernels::block_list_tile::{BlockList, BlockListTile};
use crate::kernels::masked_block_tile::{TileOutput, TILE};
use crate::kernels::Isa;
use crate::limits::saturating_product;
use crate::sparse::BLOCK_WIDTH;
use rayon::prelude::*;
use std::mem::size_of;
use std::time::Duration;

/// Prepares the block form.
pub(super) fn prepare(
    spec: &ConvSpec,
    weights: &[f32],
    epilogue: Epilogue,
    isa: Isa,
) -> Result<Box<dyn ConvKernel>> {
    Ok(Box::new(SparseWeightBlocks::<BLOCK_WIDTH>::new(
        *spec, weights, epilogue, isa,
    )?))
}

/// At most how many bytes the block form's lists take for weights of `spec` of which
/// `density` of the blocks of [`BLOCK_WIDTH`] are not all zero (saturating): an offset and a row of
/// [`BLOCK_WIDTH`] weights per non-zero (block, tap, channel), and a start per block.
pub(super) fn prepared_bytes(spec: &ConvSpec, density: f64) -> usize {
    let blocks = spec
        .groups
        .saturating_mul(spec.filters_per_group().div_ceil(BLOCK_WIDTH));
    let slots = saturating_product(&[
        blocks,
        spec.channels_per_group(),
        spec.kernel[0],
        spec.kernel[1],
    ]);
    let entries = (slots as f64 * density).ceil() as usize;
    let entry = size_of::<u32>() + BLOCK_WIDTH * size_of::<f32>();
    entries
        .saturating_mul(entry)
        .saturating_add(blocks.saturating_add(1).saturating_mul(size_of::<usize>()))
}

struct SparseWeightBlocks<const B: usize> {
    spec: ConvSpec,
    kernel: BlockListTile<B>,
    epilogue: Epilogue,
    /// Per (group, block), its entries' range: `starts[i]..starts[i + 1]`.
    starts: Vec<usize>,
    /// Per entry, its offset from a pixel's window in the padded input.
    offsets: Vec<u32>,
    /// Per entry, its block's `B` weights (zeros past the group's filters).
    rows: Vec<f32>,
    /// Pixels per row of the padded input.
    padded_width: usize,
    /// Most output rows per band: as many as keep the band's padded input within half of L2.
    fit_rows: usize,
}

/// How a run cuts the output rows: an even share per job (a thread with its own band
/// buffer), each share cut into bands of at most `fit_rows`, as even as they can be. (Whole
/// bands per thread would leave 12 rows of 14 to one of two threads where 6 fit.)
struct Bands {
    jobs: usize,
    rows_per_job: usize,
    band_rows: usize,
}

impl<const B: usize> SparseWeightBlocks<B> {
    fn new(spec: ConvSpec, weights: &[f32], epilogue: Epilogue, isa: Isa) -> Result<Self> {
        let [_, padded_width] = spec.padded_size()?;
        let (cg, mg) = (spec.channels_per_group(), spec.filters_per_group());
        let [kh, kw] = spec.kernel;
        let [dh, dw] = spec.dilation;
        let blocks = mg.div_ceil(B);
        let (mut starts, mut offsets, mut rows) = (vec![0], Vec::new(), Vec::new());
        let weight =
            |m: usize, c: usize, r: usize, s: usize| weights[((m * cg + c) * kh + r) * kw + s];
        for g in 0..spec.groups {
            for b in 0..blocks {
                let filters = g * mg + b * B..g * mg + mg.min((b + 1) * B);
                for (r, s) in (0..kh).flat_map(|r| (0..kw).map(move |s| (r, s))) {
                    for c in 0..cg {
                        if filters.clone().all(|m| weight(m, c, r, s) == 0.0) {
                            continue;
                        }
                        let offset = saturating_product(&[r * dh, padded_width, spec.channels])
                            .saturating_add(saturating_product(&[s * dw, spec.channels]))
                            .saturating_add(g * cg + c);
                        offsets.push(u32::try_from(offset).map_err(|_| too_large())?);
                        let mut row = [0.0; B];
                        for (w, m) in row.iter_mut().zip(filters.clone()) {
                            *w = weight(m, c, r, s);
                        }
                        rows.extend(row);
                    }
                }
                starts.push(offsets.len());
            }
        }
        Ok(SparseWeightBlocks {
            spec,
            kernel: BlockListTile::for_isa(isa),
            epilogue,
            starts,
            offsets,
            rows,
            padded_width,
            fit_rows: fit_rows(&spec, padded_width, &CacheSizes::detect()),
        })
    }

    /// Padded input rows a band of `rows` output rows reads.
    fn rows_in(&self, rows: usize) -> usize {
        (rows - 1) * self.spec.stride[0] + (self.spec.kernel[0] - 1) * self.spec.dilation[0] + 1
    }

    /// Floats of one band's padded input.
    fn band_len(&self, bands: &Bands) -> usize {
        saturating_product(&[
            self.rows_in(bands.band_rows),
            self.padded_width,
            self.spec.channels,
        ])
    }

    /// The bands of a run on the current thread pool.
    fn bands(&self) -> Bands {
        let rows = self.spec.out_height().max(1);
        let rows_per_job = rows.div_ceil(rayon::current_num_threads().clamp(1, rows));
        let bands_per_job = rows_per_job.div_ceil(self.fit_rows);
        Bands {
            jobs: rows.div_ceil(rows_per_job),
            rows_per_job,
            band_rows: rows_per_job.div_ceil(bands_per_job),
        }
    }

    /// Copies the padded input rows of the band of output rows `rows` into `band`: each row
    /// `padded_width` pixels, zeros where the padding is.
    fn fill_band(&self, image: &[f32], rows: &std::ops::Range<usize>, band: &mut [f32]) {
        let s = &self.spec;
        let c = s.channels;
        let left = s.padding.left;
        let row_len = self.padded_width * c;
        let first = rows.start * s.stride[0];
        for (i, row) in band
            .chunks_exact_mut(row_len)
            .take(self.rows_in(rows.len()))
            .enumerate()
        {
            match s.unpadded_row(first + i) {
                Some(iy) => {
                    let (head, rest) = row.split_at_mut(left * c);
                    head.fill(0.0);
                    let (inside, tail) = rest.split_at_mut(s.width * c);
                    inside.copy_from_slice(&image[iy * s.width * c..][..s.width * c]);
                    tail.fill(0.0);
                }
                None => row.fill(0.0),
            }
        }
    }

    /// Computes the band of output rows `rows` from its padded input `band` into `out`
    /// (those rows, channels-last, `pitch` floats per pixel), without the epilogue.
    fn multiply_band(
        &self,
        band: &[f32],
        rows: std::ops::Range<usize>,
        out: &mut [f32],
        pitch: usize,
    ) {
        let s = &self.spec;
        let (ow, mg) = (s.out_width(), s.filters_per_group());
        let blocks = mg.div_ceil(B);
        let [sh, sw] = s.stride;
        let pixels = rows.len() * ow;
        let window = |(y, x): (usize, usize)| (y * sh * self.padded_width + x * sw) * s.channels;
        let next = |(y, x): (usize, usize)| if x + 1 == ow { (y + 1, 0) } else { (y, x + 1) };
        for g in 0..s.groups {
            for b in 0..blocks {
                let entries = self.starts[g * blocks + b]..self.starts[g * blocks + b + 1];
                let list = BlockList::<B>::new(
                    &self.offsets[entries.clone()],
                    &self.rows[entries.start * B..entries.end * B],
                );
                let first = g * mg + b * B;
                let width = B.min(mg - b * B);
                // Tiles run on across the band's rows, (row, column) stepped along without a
                // division: only the band's last tile may be short.
                let mut at = (0, 0);
                for p0 in (0..pixels).step_by(TILE) {
                    let count = TILE.min(pixels - p0);
                    // A short tile repeats its last pixel, whose sums it does not write.
                    let mut windows = [0; TILE];
                    for (i, w) in windows.iter_mut().enumerate() {
                        *w = window(at);
                        if i + 1 < count {
                            at = next(at);
                        }
                    }
                    at = next(at);
                    let output = TileOutput {
                        out: &mut out[p0 * pitch + first..],
                        rows: count,
                        pitch,
                        width,
                    };
                    self.kernel.multiply(band, &windows, &list, output);
                }
            }
        }
    }
}

/// Output rows per band: as many as keep the band's padded input within half of L2 (at
/// least one).
fn fit_rows(spec: &ConvSpec, padded_width: usize, cache: &CacheSizes) -> usize {
    let per_row = saturating_product(&[padded_width, spec.channels, 4]).max(1);
    let fit = cache.l2_share(1, 2) / per_row;
    let reach = (spec.kernel[0] - 1) * spec.dilation[0] + 1;
    if fit > reach {
        (fit - reach) / spec.stride[0] + 1
    } else {
        1
    }
}

/// The error of a layer whose padded input is too large for the offsets.
fn too_large() -> Error {
    Error::Overflow("sparse-weight block offsets")
}

impl<const B: usize> ConvKernel for SparseWeightBlocks<B> {
    fn scratch(&self) -> ScratchBytes {
        let bands = self.bands();
        ScratchBytes::floats(bands.jobs.saturating_mul(self.band_len(&bands)))
    }

    fn run(
        &self,
        input: &[f32],
        (output, pitch): (&mut [f32], usize),
        residual: Option<&[f32]>,
        ws: &mut Workspace,
    ) -> Timing {
        let epilogue = self.epilogue.adding(residual, output);
        let s = &self.spec;
        let (ow, filters) = (s.out_width(), s.filters);
        let bands = self.bands();
        let band_len = self.band_len(&bands);
        let Bands {
            jobs,
            rows_per_job,
            band_rows,
        } = bands;
        let buffers = ws.floats(jobs * band_len);
        let row_len = ow * pitch;
        over_images(s, (input, (output, pitch)), |image, out, clock| {
            // The band copies count as conversion (the slowest thread's).
            let zeros = clock.interleaved(|| {
                out.par_chunks_mut(rows_per_job * row_len)
                    .zip(buffers.par_chunks_mut(band_len))
                    .enumerate()
                    .map(|(job, (out, band))| {
                        let (mut zeros, mut convert) = (0, Duration::ZERO);
                        let first = job * rows_per_job;
                        for (k, out) in out.chunks_mut(band_rows * row_len).enumerate() {
                            let start = first + k * band_rows;
                            // The image's last pixel may end short of a whole pitch.
                            let rows = start..start + out.len().div_ceil(row_len);
                            convert += timed(|| self.fill_band(image, &rows, band)).1;
                            self.multiply_band(band, rows, out, pitch);
                            zeros += epilogue.apply_rows(out, pitch, filters, 0);
                        }
                        (zeros, convert)
                    })
                    .reduce(|| (0, Duration::ZERO), |a, b| (a.0 + b.0, a.1.max(b.1)))
            });
            clock.count_zeros(zeros);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::im2csoa::block_density;
    use crate::conv::Activation;
    use crate::prune::WeightBlocks;
    use crate::synth::{block_sparse_weights, Rng};

    impl<const B: usize> SparseWeightBlocks<B> {
        fn bytes(&self) -> usize {
            self.offsets.len() * size_of::<u32>()
                + self.rows.len() * size_of::<f32>()
                + self.starts.len() * size_of::<usize>()
        }
    }

    /// Every thread count and band height gives the reference's sums, where a thread's
    /// share of the rows is not a whole number of bands (7 rows in bands of at most 3, say):
    /// no case the layer tests of `tests/` reach on every cache size.
    #[test]
    fn uneven_bands_give_the_references_sums() {
        use crate::conv::reference::Reference;
        use crate::synth::random_sparse;
        let spec = ConvSpec::new(16, 14, 5, 24, [3, 3]).with_padding([1, 1, 1, 1]);
        let mut rng = Rng::new(7);
        let blocks = WeightBlocks::new(24, 1, 16 * 9, 16).unwrap();
        let weights = block_sparse_weights(&blocks, 0.5, &mut rng);
        let input = random_sparse(spec.input_len().unwrap(), 0.3, &mut rng);
        let epilogue = || Epilogue {
            bias: (0..24).map(|m| m as f32 * 0.1 - 1.0).collect(),
            activation: Activation::Relu,
            isa: Isa::Portable,
        };
        // Pixels 27 floats apart, the last one short of a whole pitch, as in a Concat.
        let pixels = spec.output_len().unwrap() / 24;
        let run = |conv: &dyn ConvKernel| {
            let mut out = vec![f32::NAN; (pixels - 1) * 27 + 24];
            conv.run(&input, (&mut out, 27), None, &mut Workspace::default());
            out.chunks(27)
                .flat_map(|p| &p[..24])
                .copied()
                .collect::<Vec<_>>()
        };
        let expected = run(&Reference::new(spec, &weights, epilogue()));
        let mut conv =
            SparseWeightBlocks::<16>::new(spec, &weights, epilogue(), Isa::Portable).unwrap();
        for threads in 1..=4 {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for fit in [1, 2, 3, 4, 6, 50] {
                conv.fit_rows = fit;
                let bands = pool.install(|| conv.bands());
                assert!(bands.band_rows <= fit && bands.jobs <= threads);
                // An even share of the 14 rows per thread, not whole bands per thread.
                assert_eq!(bands.rows_per_job, 14usize.div_ceil(threads));
                assert!(bands.jobs * bands.rows_per_job >= 14);
                let actual = pool.install(|| run(&conv));
                for (i, (a, e)) in actual.iter().zip(&expected).enumerate() {
                    assert!(
                        (a - e).abs() <= 1e-4 * (1.0 + e.abs()),
                        "{threads} threads, {fit} rows a band: [{i}] {a} != {e}"
                    );
                }
            }
        }
    }

    /// The bound a memory budget counts holds what the form keeps, from 40 % zero blocks to
    /// all, with groups and a last block narrower than 16.
    #[test]
    fn prepared_bytes_bound_what_is_kept() {
        for (case, sparsity) in [0.4, 0.75, 0.9, 1.0].into_iter().enumerate() {
            let spec = ConvSpec::new(2 * 20, 9, 11, 2 * 40, [3, 3])
                .with_padding([1, 1, 1, 1])
                .with_groups(2);
            let filter_len = 20 * 9;
            let blocks = WeightBlocks::new(80, 2, filter_len, 16).unwrap();
            let weights = block_sparse_weights(&blocks, sparsity, &mut Rng::new(case as u64));
            let epilogue = Epilogue {
                bias: vec![0.0; spec.filters],
                activation: Activation::None,
                isa: Isa::Portable,
            };
            let conv = SparseWeightBlocks::<16>::new(spec, &weights, epilogue, Isa::Portable);
            let kept = conv.unwrap().bytes();
            let bound = prepared_bytes(&spec, block_density(&spec, &weights));
            assert!(kept <= bound, "at {sparsity}: {kept} > {bound}");
        }
    }
}
