//! The layer's weights as sparse-weight keeps them: per channel block and filter, its
//! non-zero weights as taps, each with the place in the window of the input patch it
//! multiplies, so that a pruned layer keeps only its non-zeros.

use super::plan::WindowShape;
use super::too_large;
use crate::cache::CacheSizes;
use crate::conv::ConvSpec;
use crate::error::Result;
use crate::kernels::shifted_axpy::{Tap, TapBounds, TapList};
use crate::kernels::Isa;
use crate::limits::saturating_product;
use std::mem::size_of;
use std::ops::Range;

/// The taps of every filter, by channel block.
pub(super) struct FilterTaps {
    /// Taps (pairs and single taps) by channel block, then filter; offsets index the window.
    list: TapList,
    /// From `starts[b * filters + m]` to `starts[b * filters + m + 1]` are filter `m`'s taps
    /// in channel block `b`.
    starts: Vec<TapBounds>,
}

impl FilterTaps {
    /// Packs ONNX `[M][C/G][R][S]` weights for windows of `window`'s shape. Fails when an
    /// offset into the window does not fit 32 bits.
    pub fn pack(spec: &ConvSpec, weights: &[f32], window: &WindowShape) -> Result<Self> {
        let [kr, ks] = spec.kernel;
        let (cg, mg) = (spec.channels_per_group(), spec.filters_per_group());
        let (block, blocks) = (window.block, window.blocks);
        let offsets = tap_offsets(spec, window);
        let largest = (block - 1) * window.channel + offsets.iter().max().unwrap_or(&0);
        u32::try_from(largest).map_err(|_| too_large())?;
        // Taps one vector apart (kernel rows r and r + 1 at stride 1) become pairs.
        let mut list = TapList::new(window.lanes);
        let mut starts = Vec::with_capacity(spec.filters * blocks + 1);
        starts.push(list.end());
        let mut filter_taps = Vec::new();
        for b in 0..blocks {
            for (m, filter) in weights.chunks_exact(cg * kr * ks).enumerate() {
                let group_first = m / mg * cg;
                let channels =
                    (b * block).max(group_first)..((b + 1) * block).min(group_first + cg);
                // Every weight is written and only the non-zeros advance the position: a
                // branch on each weight would mispredict at every sparsity but 0 and 100 %.
                filter_taps.resize(channels.len() * kr * ks, Tap::default());
                let mut n = 0;
                for c in channels.clone() {
                    let base = (c - b * block) * window.channel;
                    let kernel = &filter[(c - group_first) * kr * ks..][..kr * ks];
                    for (&weight, &offset) in kernel.iter().zip(&offsets) {
                        // Within `largest`, which fits (checked above).
                        let offset = (base + offset) as u32;
                        filter_taps[n] = Tap { offset, weight };
                        n += usize::from(weight != 0.0);
                    }
                }
                filter_taps.truncate(n);
                starts.push(list.push_tile(&mut filter_taps));
            }
        }
        // Kept for the layer's life: no slack from growing, so that `prepared_bytes` holds.
        list.shrink_to_fit();
        Ok(FilterTaps { list, starts })
    }

    /// All the taps.
    pub fn list(&self) -> &TapList {
        &self.list
    }

    /// The bounds of the taps of `filters` (of `all` filters) in channel block `b`: one more
    /// than the filters, each filter's taps running from its bound to the next.
    #[inline]
    pub fn bounds(&self, b: usize, filters: Range<usize>, all: usize) -> &[TapBounds] {
        let first = b * all;
        &self.starts[first + filters.start..=first + filters.end]
    }

    /// Bytes it keeps.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.list.bytes() + self.starts.capacity() * size_of::<TapBounds>()
    }
}

/// Where kernel position `(r, s)` (at `r * S + s`) reads in a channel's part of the window.
fn tap_offsets(spec: &ConvSpec, window: &WindowShape) -> Vec<usize> {
    let [kr, ks] = spec.kernel;
    (0..kr)
        .flat_map(|r| {
            let (phase, shift) = spec.row_phase(r);
            let phase = window.row_phases.binary_search(&phase).expect("listed");
            let row_offset = shift * window.lanes;
            (0..ks).map(move |s| (phase * ks + s) * window.segment + row_offset)
        })
        .collect()
}

/// At most how many bytes the taps of a layer with `nonzeros` non-zero weights take, on any
/// ISA with this CPU's caches (saturating): one tap per non-zero weight (a pair of taps
/// takes less than two), and where each filter's taps start in each channel block. A pruned
/// layer keeps a fraction of its dense size, and a memory budget counts only that.
pub(crate) fn prepared_bytes(spec: &ConvSpec, nonzeros: usize) -> usize {
    let blocks = Isa::ALL
        .iter()
        .map(|&isa| WindowShape::new(spec, isa, &CacheSizes::detect()).blocks)
        .max()
        .unwrap_or(1);
    let starts = saturating_product(&[spec.filters, blocks, size_of::<TapBounds>()]);
    nonzeros
        .saturating_mul(size_of::<Tap>())
        .saturating_add(starts)
        .saturating_add(size_of::<TapBounds>())
}
