//! The layer's weights as sparse-weight keeps them: per channel block and filter, its
//! non-zero weights as taps, each with the place in the window of the input patch it
//! multiplies, so that a pruned layer keeps only its non-zeros. Where filters share their
//! zeros in pairs (weights pruned in blocks of output channels), per pair of filters.

use super::plan::WindowShape;
use super::too_large;
use crate::cache::CacheSizes;
use crate::conv::ConvSpec;
use crate::error::Result;
use crate::kernels::shifted_axpy::{ShiftedAxpy, Tap, TapBounds, TapList, TwinList};
use crate::kernels::Isa;
use crate::limits::saturating_product;
use std::mem::size_of;
use std::ops::Range;

/// The taps of every filter, by channel block, then filter (or pair of filters).
pub(super) enum FilterTaps {
    /// One list per filter: from `starts[b * filters + m]` to `starts[b * filters + m + 1]`
    /// are filter `m`'s taps in channel block `b`.
    Singles {
        list: TapList,
        starts: Vec<TapBounds>,
    },
    /// One list per pair of filters `(2k, 2k + 1)`, from `starts[b * filters / 2 + k]` to
    /// the next.
    Twins { list: TwinList, starts: Vec<usize> },
}

/// At most this share of the non-zero weights (in tenths) may be places of a pair's
/// union for its filters to share a list: a pair whose zeros coincide has half, and the
/// twin kernel's list then costs about half the loads. Unstructured zeros at 50 % make
/// three quarters, at 80 % nine tenths, which the single lists take with fewer
/// multiply-adds.
const TWIN_UNION_TENTHS: usize = 6;

/// Where the filters of each group, in pairs `(2k, 2k + 1)`, share their zeros closely
/// enough to keep one list per pair ([`TWIN_UNION_TENTHS`]), the places of those lists per
/// non-zero weight (1/2 where the zeros coincide): true of weights pruned in blocks of
/// output channels, and of dense weights; never of a group of an odd number of filters.
pub(crate) fn twin_share(spec: &ConvSpec, weights: &[f32]) -> Option<f64> {
    let filter_len = spec.channels_per_group() * spec.kernel[0] * spec.kernel[1];
    if !spec.filters_per_group().is_multiple_of(2) || filter_len == 0 {
        return None;
    }
    let (mut nonzeros, mut union) = (0, 0);
    for pair in weights.chunks_exact(2 * filter_len) {
        let (a, b) = pair.split_at(filter_len);
        for (&x, &y) in a.iter().zip(b) {
            nonzeros += usize::from(x != 0.0) + usize::from(y != 0.0);
            union += usize::from(x != 0.0 || y != 0.0);
        }
    }
    (nonzeros > 0 && union * 10 <= nonzeros * TWIN_UNION_TENTHS)
        .then(|| union as f64 / nonzeros as f64)
}

impl FilterTaps {
    /// Packs ONNX `[M][C/G][R][S]` weights for windows of `window`'s shape, in pairs of
    /// filters if `twins` (which needs an even number of filters per group). Fails when an
    /// offset into the window does not fit 32 bits.
    pub fn pack(
        spec: &ConvSpec,
        weights: &[f32],
        window: &WindowShape,
        twins: bool,
    ) -> Result<Self> {
        let [kr, ks] = spec.kernel;
        let (cg, mg) = (spec.channels_per_group(), spec.filters_per_group());
        assert!(
            !twins || mg.is_multiple_of(2),
            "pairs of filters within a group"
        );
        let (block, blocks) = (window.block, window.blocks);
        let offsets = tap_offsets(spec, window);
        let largest = (block - 1) * window.channel + offsets.iter().max().unwrap_or(&0);
        u32::try_from(largest).map_err(|_| too_large())?;
        // Filter m's taps in channel block b.
        let filter_taps = |b: usize, m: usize, taps: &mut Vec<Tap>| {
            let filter = &weights[m * cg * kr * ks..][..cg * kr * ks];
            let group_first = m / mg * cg;
            let channels = (b * block).max(group_first)..((b + 1) * block).min(group_first + cg);
            // Every weight is written and only the non-zeros advance the position: a
            // branch on each weight would mispredict at every sparsity but 0 and 100 %.
            taps.resize(channels.len() * kr * ks, Tap::default());
            let mut n = 0;
            for c in channels {
                let base = (c - b * block) * window.channel;
                let kernel = &filter[(c - group_first) * kr * ks..][..kr * ks];
                for (&weight, &offset) in kernel.iter().zip(&offsets) {
                    // Within `largest`, which fits (checked above).
                    let offset = (base + offset) as u32;
                    taps[n] = Tap { offset, weight };
                    n += usize::from(weight != 0.0);
                }
            }
            taps.truncate(n);
        };
        let (mut first, mut second) = (Vec::new(), Vec::new());
        // Kept for the layer's life: no slack from growing, so that `prepared_bytes` holds.
        Ok(if twins {
            let mut list = TwinList::default();
            let mut starts = Vec::with_capacity(spec.filters / 2 * blocks + 1);
            starts.push(0);
            for b in 0..blocks {
                for m in (0..spec.filters).step_by(2) {
                    filter_taps(b, m, &mut first);
                    filter_taps(b, m + 1, &mut second);
                    starts.push(list.push_pair(&mut first, &mut second));
                }
            }
            list.shrink_to_fit();
            FilterTaps::Twins { list, starts }
        } else {
            // Taps one vector apart (kernel rows r and r + 1 at stride 1) become pairs.
            let mut list = TapList::new(window.lanes);
            let mut starts = Vec::with_capacity(spec.filters * blocks + 1);
            starts.push(list.end());
            for b in 0..blocks {
                for m in 0..spec.filters {
                    filter_taps(b, m, &mut first);
                    starts.push(list.push_tile(&mut first));
                }
            }
            list.shrink_to_fit();
            FilterTaps::Singles { list, starts }
        })
    }

    /// Filters per list: 2 for pairs of filters, else 1. A run's chunks of filters start
    /// at a multiple of it.
    pub fn filters_per_list(&self) -> usize {
        match self {
            FilterTaps::Singles { .. } => 1,
            FilterTaps::Twins { .. } => 2,
        }
    }

    /// Adds the taps of `filters` (of `all` filters) in channel block `b` to their tiles
    /// `sums` (`[filter][tile]`), reading `window`.
    pub fn multiply(
        &self,
        axpy: &ShiftedAxpy,
        window: &[f32],
        (b, filters, all): (usize, Range<usize>, usize),
        sums: &mut [f32],
    ) {
        match self {
            FilterTaps::Singles { list, starts } => {
                let first = b * all;
                let bounds = &starts[first + filters.start..=first + filters.end];
                axpy.tiles(window, list, bounds, sums);
            }
            FilterTaps::Twins { list, starts } => {
                assert!(
                    filters.start.is_multiple_of(2) && filters.end.is_multiple_of(2),
                    "whole pairs of filters"
                );
                let first = b * all / 2;
                let bounds = &starts[first + filters.start / 2..=first + filters.end / 2];
                axpy.twin_tiles(window, list, bounds, sums);
            }
        }
    }

    /// One past the largest window offset any tap reads (0 when there are none).
    pub fn span(&self) -> usize {
        match self {
            FilterTaps::Singles { list, .. } => list.span(),
            FilterTaps::Twins { list, .. } => list.span(),
        }
    }

    /// Bytes it keeps.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        match self {
            FilterTaps::Singles { list, starts } => {
                list.bytes() + starts.capacity() * size_of::<TapBounds>()
            }
            FilterTaps::Twins { list, starts } => {
                list.bytes() + starts.capacity() * size_of::<usize>()
            }
        }
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
/// takes less than two, and twin lists, of at most six tenths as many places at 12 bytes,
/// less than one), and where each filter's taps start in each channel block (of single
/// filters' windows, which have the most blocks). A pruned
/// layer keeps a fraction of its dense size, and a memory budget counts only that.
pub(crate) fn prepared_bytes(spec: &ConvSpec, nonzeros: usize) -> usize {
    let blocks = Isa::ALL
        .iter()
        .map(|&isa| WindowShape::new(spec, isa, &CacheSizes::detect(), false).blocks)
        .max()
        .unwrap_or(1);
    let starts = saturating_product(&[spec.filters, blocks, size_of::<TapBounds>()]);
    nonzeros
        .saturating_mul(size_of::<Tap>())
        .saturating_add(starts)
        .saturating_add(size_of::<TapBounds>())
}
