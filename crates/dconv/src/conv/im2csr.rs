//! im2CSR: Direct Conversion of the input to the CSR form of the lowered matrix, then
//! sparse activations x dense weights.
//!
//! The input is first compressed once, pixel by pixel ([`Csoa`]); each row of the lowered
//! matrix is then the concatenation of the non-zero lists of its receptive field's pixels,
//! so conversion costs one pass over the input plus the non-zeros it emits, never `P x K`.
//! The rows are expanded a chunk of k at a time, as the multiply reaches the chunk
//! ([`RowSource::Expanded`]).

use super::method::{MethodEntry, Skips};
use super::panels::{self, prepare_over_panels};
use super::panels::{l1_slab_rows, l2_chunk_rows, WeightPanels};
use super::run_loop::{over_groups, timed};
use super::select::{LayerSize, MAX_TERMS};
use super::tiles::{
    ensure_tiles, multiply_tasks, task_tiles, tile_rows, tiles_scratch, walk_bytes, Tile, TileSums,
};
use super::workspace::Scratch;
use super::{ConvKernel, ConvSpec, Epilogue, RunEpilogue, ScratchBytes, Timing, Workspace};
use crate::kernels::sparse_row_panel::{Entries, RowCursor, SparseRowPanel};
use crate::kernels::Isa;
use crate::sparse::{Csoa, CsrMatrix};
use std::mem::size_of;
use std::ops::Range;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

/// im2csr's place in the method table. Its cost: fixed + input · |X| (the conversion reads
/// the input once) + pixel_tap · P·R·S (per-row bookkeeping) + nz_lowered · d·P·K (entries
/// emitted) + nz_mac · d·PMACs + nz_mac_squared · d²·PMACs.
pub(super) const ENTRY: MethodEntry = MethodEntry {
    name: "im2csr",
    skips: Skips {
        input_zeros: true,
        weight_zeros: false,
    },
    terms: &direct_conversion_terms("nz_lowered"),
    term_values: |s, d, _| direct_conversion_values(s, d, d * s.lowered),
    prepared_bytes: panels::prepared_bytes,
    reads_panels: true,
    prepare: prepare_over_panels!(Im2Csr),
};

/// The cost terms of the two Direct Conversion methods, which differ in what they store:
/// fixed + input · |X| + pixel_tap · P·R·S + `stored` + nz_mac · d·PMACs + nz_mac_squared ·
/// d²·PMACs.
pub(super) const fn direct_conversion_terms(stored: &'static str) -> [&'static str; 6] {
    [
        "fixed",
        "input",
        "pixel_tap",
        stored,
        "nz_mac",
        "nz_mac_squared",
    ]
}

/// The units of [`direct_conversion_terms`] at input density `d`, `stored` the units of
/// the values it stores.
pub(super) fn direct_conversion_values(s: &LayerSize, d: f64, stored: f64) -> [f64; MAX_TERMS] {
    let nz_macs = d * s.panel_macs;
    [1.0, s.input, s.pixel_taps, stored, nz_macs, d * nz_macs]
}

pub(crate) struct Im2Csr<const NB: usize> {
    product: CsrProduct<NB>,
}

impl<const NB: usize> Im2Csr<NB> {
    pub fn new(
        spec: ConvSpec,
        panels: Arc<WeightPanels<NB>>,
        epilogue: Epilogue,
        isa: Isa,
    ) -> Self {
        Im2Csr {
            product: CsrProduct::new(spec, panels, epilogue, isa),
        }
    }
}

/// Writes into `csr` the entries in columns `cols` of the lowered rows `rows` of group `g`,
/// expanded from the pixel lists.
fn expand_rows(
    spec: &ConvSpec,
    csoa: &Csoa,
    g: usize,
    rows: Range<usize>,
    cols: Range<usize>,
    csr: &mut CsrMatrix,
) {
    let ow = spec.out_width();
    let ks = spec.kernel[1];
    let cg = spec.channels_per_group();
    // The kernel taps whose channels the columns hold, in part or whole.
    let taps = cols.start / cg..cols.end.div_ceil(cg);
    csr.clear(spec.lowered_cols());
    for p in rows {
        let (oy, ox) = (p / ow, p % ow);
        for tap in taps.clone() {
            let (r, s) = (tap / ks, tap % ks);
            let (Some(iy), Some(ix)) = (spec.input_row(oy, r), spec.input_col(ox, s)) else {
                continue;
            };
            let (chans, vals) = csoa.pixel(iy, ix, g);
            // The tap's channels within the columns: all of them, unless a chunk of k cuts
            // through the tap.
            let first = tap * cg;
            let (lo, hi) = (cols.start.saturating_sub(first), cols.end - first);
            let within = if lo == 0 && hi >= cg {
                0..chans.len()
            } else {
                chans.partition_point(|&c| (c as usize) < lo)
                    ..chans.partition_point(|&c| (c as usize) < hi)
            };
            csr.extend_row(first as u32, &chans[within.clone()], &vals[within]);
        }
        csr.end_row();
    }
}

/// A tile's lowered rows and the scratch of their multiply.
#[derive(Default)]
pub(crate) struct CsrTile {
    pub csr: CsrMatrix,
    /// The output rows it holds (for im2csr, which expands them as it multiplies).
    rows: Range<usize>,
    cursors: Vec<RowCursor>,
    /// The cursors where the current slab of k starts.
    slab_start: Vec<RowCursor>,
    sums: TileSums,
}

impl Scratch for CsrTile {
    fn bytes(&self) -> usize {
        self.csr.bytes()
            + (self.cursors.len() + self.slab_start.len()) * size_of::<RowCursor>()
            + self.sums.bytes()
    }
}

impl CsrTile {
    /// Points each row's cursor at its first entry.
    fn start_walks(&mut self) {
        let (row_ptr, _, _) = self.csr.parts();
        self.cursors.clear();
        self.cursors.extend(row_ptr.windows(2).map(|w| RowCursor {
            next: w[0],
            end: w[1],
        }));
    }
}

impl Tile for CsrTile {
    fn sums(&mut self) -> &mut TileSums {
        &mut self.sums
    }
}

/// Where the CSR rows of the tiles come from.
#[derive(Clone, Copy)]
pub(crate) enum RowSource<'a> {
    /// Built whole before the multiply (the lowered CSR baseline compresses them).
    Built,
    /// Expanded from these pixel lists a chunk of k at a time, as the multiply reaches the
    /// chunk (im2CSR): the rows of a chunk are then written and read in L2, where a whole
    /// tile's rows would spill to L3 and come back scattered.
    Expanded(&'a Csoa),
}

/// The product of CSR rows with a layer's weight panels: the multiply that im2CSR and the
/// lowered CSR baseline share.
pub(crate) struct CsrProduct<const NB: usize> {
    pub spec: ConvSpec,
    panels: Arc<WeightPanels<NB>>,
    kernel: SparseRowPanel<NB>,
    pub epilogue: Epilogue,
}

impl<const NB: usize> CsrProduct<NB> {
    /// The product with `panels`, packed from the layer's weights.
    pub fn new(
        spec: ConvSpec,
        panels: Arc<WeightPanels<NB>>,
        epilogue: Epilogue,
        isa: Isa,
    ) -> Self {
        CsrProduct {
            panels,
            spec,
            kernel: SparseRowPanel::for_isa(isa),
            epilogue,
        }
    }

    /// The most bytes the tiles of a layer's CSR rows and their scratch fill, when every
    /// value of the lowered matrix is non-zero and a tile holds the entries of `cols`
    /// lowered columns at once (all of k when its rows are built whole, a chunk when they
    /// are expanded).
    pub fn tiles_bytes(&self, cols: usize) -> usize {
        let blocks = self.panels.blocks();
        tiles_scratch::<CsrTile>(self.spec.out_pixels(), |rows| {
            CsrMatrix::bytes_for(rows, cols).saturating_add(walk_bytes(
                rows,
                blocks,
                WeightPanels::<NB>::WIDTH,
            ))
        })
    }

    /// Multiplies the CSR rows of every tile (`split` is `task_tiles`' answer), from
    /// `source`, by the panels of group `g`, writing the image's NHWC output `out`, then
    /// applies the epilogue to the group's channels. Returns the output's zeros and the
    /// time spent expanding rows, summed over the threads.
    ///
    /// Loops, outside in: tasks of tiles, in parallel ([`multiply_tasks`]); chunks of k
    /// whose panel rows, of every block, stay in L2 (so that they come from memory once,
    /// whichever tile of the task uses them); tiles; then [`multiply_chunk`](Self::multiply_chunk).
    pub fn multiply_tiles(
        &self,
        (g, epilogue): (usize, RunEpilogue),
        source: RowSource,
        tiles: &mut [CsrTile],
        split: (usize, usize),
        out: (&mut [f32], usize),
    ) -> (usize, Duration) {
        let k = self.spec.lowered_cols();
        let chunk = self.chunk_rows();
        let expanding = Mutex::new(Duration::ZERO);
        let zeros = multiply_tasks(
            &self.spec,
            (g, epilogue),
            &self.panels,
            tiles,
            split,
            out,
            |task| {
                let mut spent = Duration::ZERO;
                if let RowSource::Built = source {
                    task.iter_mut().for_each(CsrTile::start_walks);
                }
                for chunk_start in (0..k).step_by(chunk) {
                    let cols = chunk_start..(chunk_start + chunk).min(k);
                    for t in task.iter_mut() {
                        if let RowSource::Expanded(csoa) = source {
                            let ((), expanding) = timed(|| {
                                let rows = t.rows.clone();
                                expand_rows(&self.spec, csoa, g, rows, cols.clone(), &mut t.csr);
                                t.start_walks();
                            });
                            spent += expanding;
                        }
                        self.multiply_chunk(g, t, cols.clone());
                    }
                }
                *expanding.lock().expect("no thread panics holding it") += spent;
            },
        );
        (zeros, expanding.into_inner().expect("no thread panicked"))
    }

    /// Panel rows of every block that stay in L2 while every tile of a task walks them.
    pub fn chunk_rows(&self) -> usize {
        l2_chunk_rows(WeightPanels::<NB>::WIDTH, self.panels.blocks())
    }

    /// Multiplies the entries of a tile's rows in columns `cols` (one chunk of k), from
    /// where its cursors stand, and leaves them at the next chunk. Loops: slabs of k, then
    /// blocks of output channels, whose panel rows of the slab stay in L1 while every row
    /// of the tile reuses them. Blocks come last so that the rows' entries are fetched once
    /// rather than once per block.
    fn multiply_chunk(&self, g: usize, t: &mut CsrTile, cols: Range<usize>) {
        let k = self.spec.lowered_cols();
        let (width, blocks) = (WeightPanels::<NB>::WIDTH, self.panels.blocks());
        let slab = l1_slab_rows(width);
        let (_, entry_cols, vals) = t.csr.parts();
        for slab_end in (cols.start + slab..cols.end + slab).step_by(slab) {
            let limit = if slab_end >= k {
                u32::MAX
            } else {
                slab_end.min(cols.end) as u32
            };
            t.slab_start.clone_from(&t.cursors);
            for block in 0..blocks {
                // Every block walks the slab from its start; the last leaves the cursors at
                // the next slab.
                t.cursors.copy_from_slice(&t.slab_start);
                self.kernel.accumulate_rows(
                    Entries::new(entry_cols, vals),
                    &mut t.cursors,
                    limit,
                    self.panels.panel(g, block),
                    t.sums.block_mut(block),
                    width,
                );
            }
        }
    }
}

impl<const NB: usize> ConvKernel for Im2Csr<NB> {
    fn scratch(&self) -> ScratchBytes {
        let s = &self.product.spec;
        let pixels = s.height * s.width;
        let csoa = Csoa::bytes_for(pixels, s.channels, pixels.saturating_mul(s.groups));
        let chunk = self.product.chunk_rows().min(s.lowered_cols());
        ScratchBytes {
            floats: 0,
            kept: csoa.saturating_add(self.product.tiles_bytes(chunk)),
        }
    }

    fn run(
        &self,
        input: &[f32],
        (output, pitch): (&mut [f32], usize),
        residual: Option<&[f32]>,
        ws: &mut Workspace,
    ) -> Timing {
        let epilogue = self.product.epilogue.adding(residual, output);
        let s = &self.product.spec;
        let rows = s.out_pixels();
        let (tile, per_task) = task_tiles(rows);
        let (csoa, csr_tiles) = ws.kept_pair::<Csoa, Vec<CsrTile>>();
        ensure_tiles(csr_tiles, rows.div_ceil(tile));
        over_groups(s, (input, (output, pitch)), |image, g, out, clock| {
            if g == 0 {
                // Every group's lists at once, one chunk per list: the rows are cut by slabs
                // of k later.
                let cg = s.channels_per_group();
                clock.convert(|| csoa.fill(image, [s.height, s.width, s.channels], s.groups, cg));
            }
            let zeros = clock.interleaved(|| {
                let tiles = &mut csr_tiles[..rows.div_ceil(tile)];
                for (t, csr_tile) in tiles.iter_mut().enumerate() {
                    csr_tile.rows = tile_rows(t, tile, rows);
                }
                let (zeros, expanding) = self.product.multiply_tiles(
                    (g, epilogue),
                    RowSource::Expanded(csoa),
                    tiles,
                    (tile, per_task),
                    (out, pitch),
                );
                // Expanding runs inside the multiply, on every thread at once: its share of
                // the time is the threads' sum over the threads that ran.
                let parallel = rayon::current_num_threads().min(tiles.len().div_ceil(per_task));
                (zeros, expanding / parallel.max(1) as u32)
            });
            clock.count_zeros(zeros);
        })
    }
}
