//! Magnitude pruning of an ONNX model's weights: in each chosen layer, the weights of
//! smallest magnitude are set to zero until the asked fraction of them is zero; or, with a
//! block size B, whole blocks of B consecutive output channels of one group at one (input
//! channel, kernel tap) of a Conv, those of smallest L2 norm, until the asked fraction of blocks is zero (the
//! structure a vector of B filters' sums can skip). The model is
//! re-encoded with only those initializers changed, so that any ONNX runtime loads it.

use crate::error::{Error, Result};
use crate::onnx::decode_tensor;
use crate::onnx::proto::tensor_proto::{DataLocation, DataType};
use crate::onnx::proto::{ModelProto, TensorProto};
use crate::tensor::TensorData;
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::Path;

/// The fraction of weights that Deep Compression (Han et al., 2016) keeps in VGG-16's
/// thirteen convolutions, conv1_1 to conv5_3.
pub const DEEP_COMPRESSION_VGG16_KEEP: [f64; 13] = [
    0.58, 0.22, 0.34, 0.36, 0.53, 0.24, 0.42, 0.32, 0.27, 0.34, 0.35, 0.29, 0.36,
];

/// How much of each layer to prune.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// The same fraction of zeros in every chosen layer.
    Uniform(f64),
    /// Deep Compression's densities for VGG-16; the model must have exactly 13 Convs.
    DeepCompressionVgg16,
    /// A fraction per layer, keyed by node name or weight initializer name; other layers
    /// are left as they are.
    PerLayer(HashMap<String, f64>),
}

/// What to prune.
#[derive(Debug, Clone, PartialEq)]
pub struct PruneOptions {
    pub target: Target,
    /// Leave the first Conv dense (it sees the raw image, where zeros buy nothing).
    pub skip_first: bool,
    /// Also prune the weights of Gemm and MatMul nodes (element by element).
    pub include_gemm: bool,
    /// Prune Conv weights in blocks of this many consecutive output channels; None (or 1):
    /// element by element.
    pub block: Option<usize>,
}

/// One pruned weight tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct PrunedLayer {
    /// The node (or `#index`) whose weights these are.
    pub node: String,
    pub op: String,
    /// The tensor the node computes (its first output).
    pub output: String,
    pub initializer: String,
    pub weights: usize,
    pub sparsity_before: f64,
    pub sparsity_after: f64,
}

/// Prunes the serialized model `bytes` and returns the re-encoded model with a row per
/// pruned layer. `base` is the model's folder: external weight data is read from it and
/// inlined into the output (None refuses external data).
pub fn prune_model(
    bytes: &[u8],
    base: Option<&Path>,
    options: &PruneOptions,
) -> Result<(Vec<u8>, Vec<PrunedLayer>)> {
    let mut model = ModelProto::decode(bytes)
        .map_err(|e| Error::InvalidModel(format!("not an ONNX model: {e}")))?;
    let graph = model
        .graph
        .as_mut()
        .ok_or_else(|| Error::InvalidModel("the model has no graph".into()))?;
    if options.block == Some(0) {
        return Err(Error::InvalidArgument(
            "a pruning block holds at least one output channel".into(),
        ));
    }
    let layers = prunable_layers(graph, options.include_gemm);
    let targets = layer_targets(&layers, options)?;

    let index: HashMap<String, usize> = graph
        .initializer
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name().to_string(), i))
        .collect();
    let mut done = HashSet::new();
    let mut report = Vec::new();
    for (layer, sparsity) in layers.iter().zip(targets) {
        let Some(sparsity) = sparsity else { continue };
        if !done.insert(layer.weight.clone()) {
            continue; // A weight shared by several nodes is pruned once.
        }
        let Some(&i) = index.get(&layer.weight) else {
            return Err(Error::Unsupported(format!(
                "node '{}' ({}): weight '{}' is computed, not an initializer, so it cannot be pruned",
                layer.node, layer.op, layer.weight
            )));
        };
        let tensor = &mut graph.initializer[i];
        let block = options.block.filter(|_| layer.op == "Conv").unwrap_or(1);
        let blocks = Blocks {
            width: block,
            groups: layer.groups,
        };
        let (before, after) =
            prune_initializer(tensor, base, sparsity, blocks).map_err(|e| Error::Node {
                node: layer.node.clone(),
                op: layer.op.clone(),
                source: Box::new(e),
            })?;
        report.push(PrunedLayer {
            node: layer.node.clone(),
            op: layer.op.clone(),
            output: layer.output.clone(),
            initializer: layer.weight.clone(),
            weights: element_count(tensor),
            sparsity_before: before,
            sparsity_after: after,
        });
    }
    Ok((model.encode_to_vec(), report))
}

/// A node whose weights may be pruned.
struct Layer {
    node: String,
    op: String,
    output: String,
    weight: String,
    /// A Conv's groups (1 for other nodes): blocks of output channels stay in one group.
    groups: usize,
}

/// The Convs (and, when asked, Gemms and MatMuls) in graph order with the name of their
/// weight input: Conv's and Gemm's second input; for MatMul the second, or the first when
/// only that one is an initializer.
fn prunable_layers(graph: &crate::onnx::proto::GraphProto, include_gemm: bool) -> Vec<Layer> {
    let initializers: HashSet<&str> = graph.initializer.iter().map(|t| t.name()).collect();
    graph
        .node
        .iter()
        .enumerate()
        .filter_map(|(i, node)| {
            let op = node.op_type();
            let weight = match op {
                "Conv" => node.input.get(1),
                "Gemm" if include_gemm => node.input.get(1),
                "MatMul" if include_gemm => match node.input.as_slice() {
                    [a, b]
                        if !initializers.contains(b.as_str())
                            && initializers.contains(a.as_str()) =>
                    {
                        Some(a)
                    }
                    inputs => inputs.get(1),
                },
                _ => None,
            }?;
            let node_name = if node.name().is_empty() {
                format!("#{i}")
            } else {
                node.name().to_string()
            };
            let groups = node
                .attribute
                .iter()
                .find(|a| a.name() == "group")
                .map_or(1, |a| usize::try_from(a.i()).unwrap_or(0));
            Some(Layer {
                node: node_name,
                op: op.to_string(),
                output: node.output.first().cloned().unwrap_or_default(),
                weight: weight.clone(),
                groups,
            })
        })
        .collect()
}

/// The fraction of zeros to reach in each layer, or None to leave it.
fn layer_targets(layers: &[Layer], options: &PruneOptions) -> Result<Vec<Option<f64>>> {
    let check = |what: &str, f: f64| {
        if (0.0..=1.0).contains(&f) {
            Ok(f)
        } else {
            Err(Error::InvalidArgument(format!(
                "sparsity {f} for {what} is not between 0 and 1"
            )))
        }
    };
    let first_conv = layers.iter().position(|l| l.op == "Conv");
    let mut targets: Vec<Option<f64>> = match &options.target {
        Target::Uniform(f) => {
            let f = check("every layer", *f)?;
            layers.iter().map(|_| Some(f)).collect()
        }
        Target::DeepCompressionVgg16 => {
            let convs = layers.iter().filter(|l| l.op == "Conv").count();
            if convs != DEEP_COMPRESSION_VGG16_KEEP.len() {
                return Err(Error::InvalidArgument(format!(
                    "the deep-compression-vgg16 profile is for VGG-16's 13 convolutions; this model has {convs}"
                )));
            }
            let mut keep = DEEP_COMPRESSION_VGG16_KEEP.iter();
            layers
                .iter()
                .map(|l| {
                    (l.op == "Conv")
                        .then(|| keep.next().map(|k| 1.0 - k))
                        .flatten()
                })
                .collect()
        }
        Target::PerLayer(map) => {
            for (key, &f) in map {
                check(key, f)?;
                if !layers.iter().any(|l| &l.node == key || &l.weight == key) {
                    return Err(Error::InvalidArgument(format!(
                        "'{key}' names no prunable node or weight (prunable: {})",
                        layers
                            .iter()
                            .map(|l| l.node.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
            layers
                .iter()
                .map(|l| map.get(&l.node).or_else(|| map.get(&l.weight)).copied())
                .collect()
        }
    };
    if options.skip_first {
        if let Some(first) = first_conv {
            targets[first] = None;
        }
    }
    Ok(targets)
}

fn element_count(t: &TensorProto) -> usize {
    t.dims.iter().map(|&d| d.max(0) as usize).product()
}

/// How a Conv's weights are pruned in blocks: `width` consecutive output channels of one
/// of its `groups`, at one input channel and tap (width 1: weight by weight).
#[derive(Debug, Clone, Copy)]
struct Blocks {
    width: usize,
    groups: usize,
}

/// Zeros the smallest-magnitude weights of `t` until `sparsity` of them are zero (weights
/// already zero count), or in blocks wider than 1 the blocks of smallest norm (see
/// [`zero_smallest_blocks`]) until `sparsity` of the blocks are; writes them back in the
/// form they came in (`raw_data` or `float_data`), external data inlined as `raw_data`.
/// Returns the sparsity before and after.
fn prune_initializer(
    t: &mut TensorProto,
    base: Option<&Path>,
    sparsity: f64,
    blocks: Blocks,
) -> Result<(f64, f64)> {
    if t.data_type() != DataType::Float as i32 {
        return Err(Error::Unsupported(format!(
            "weight '{}' is not float32; only float32 weights are pruned",
            t.name()
        )));
    }
    let tensor = decode_tensor(t, base)?;
    let TensorData::F32(mut weights) = tensor.into_parts().1 else {
        return Err(Error::Unsupported(format!(
            "weight '{}' is not float",
            t.name()
        )));
    };
    let n = weights.len().max(1) as f64;
    let before = zero_count(&weights) as f64 / n;
    if blocks.width > 1 {
        let filters = t.dims.first().map_or(0, |&m| m.max(0) as usize);
        // Weights whose filters the groups do not divide are left as they are (the model
        // is invalid, and loading it says so).
        let layout = (filters > 0 && weights.len().is_multiple_of(filters))
            .then(|| {
                WeightBlocks::new(
                    filters,
                    blocks.groups,
                    weights.len() / filters,
                    blocks.width,
                )
            })
            .and_then(|b| b.ok());
        if let Some(layout) = layout {
            zero_smallest_blocks(&mut weights, &layout, sparsity);
        }
    } else {
        let count = (sparsity * weights.len() as f64).round() as usize;
        zero_smallest(&mut weights, count);
    }
    let after = zero_count(&weights) as f64 / n;

    let external = t.data_location() == DataLocation::External;
    if t.raw_data.is_some() || external {
        t.raw_data = Some(
            weights
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .collect::<Vec<u8>>()
                .into(),
        );
        t.float_data.clear();
    } else {
        t.float_data = weights;
    }
    if external {
        t.data_location = Some(DataLocation::Default as i32);
        t.external_data.clear();
    }
    Ok((before, after))
}

fn zero_count(weights: &[f32]) -> usize {
    weights.iter().filter(|&&w| w == 0.0).count()
}

/// Sets the `count` weights of smallest magnitude to zero (ties broken by position).
fn zero_smallest(weights: &mut [f32], count: usize) {
    let count = count.min(weights.len());
    if count == 0 {
        return;
    }
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.select_nth_unstable_by(count - 1, |&a, &b| {
        weights[a]
            .abs()
            .total_cmp(&weights[b].abs())
            .then(a.cmp(&b))
    });
    for &i in &order[..count] {
        weights[i] = 0.0;
    }
}

/// How conv weights `[M][C/G][R][S]` split into blocks of `block` consecutive output
/// channels at one (input channel, kernel tap) within a group, the last block of each group
/// shorter when `block` does not divide M/G: the structure a vector of B filters' sums can
/// skip (issue #18), as `dconv prune --block` leaves it
/// and `dconv bench-conv --weight-block` lays it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightBlocks {
    pub(crate) filters: usize,
    groups: usize,
    pub(crate) filter_len: usize,
    block: usize,
}

impl WeightBlocks {
    /// `filter_len` is one filter's length, C/G x R x S; `groups` must divide `filters`.
    pub fn new(filters: usize, groups: usize, filter_len: usize, block: usize) -> Result<Self> {
        if block == 0 {
            return Err(Error::InvalidArgument(
                "a weight block holds at least one output channel".into(),
            ));
        }
        if groups == 0 || !filters.is_multiple_of(groups) {
            return Err(Error::InvalidArgument(format!(
                "{groups} groups do not divide {filters} filters"
            )));
        }
        Ok(WeightBlocks {
            filters,
            groups,
            filter_len,
            block,
        })
    }

    /// The number of blocks.
    pub fn count(&self) -> usize {
        self.groups * self.filter_len * (self.filters / self.groups).div_ceil(self.block)
    }

    /// Each block as its filters and its position within a filter.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (Range<usize>, usize)> + '_ {
        let per_group = self.filters / self.groups;
        (0..self.groups).flat_map(move |g| {
            (0..self.filter_len).flat_map(move |k| {
                (0..per_group).step_by(self.block).map(move |start| {
                    let end = (start + self.block).min(per_group);
                    (g * per_group + start..g * per_group + end, k)
                })
            })
        })
    }

    /// The fraction of blocks of `weights` (M x filter_len values) that are all zero.
    pub fn zero_fraction(&self, weights: &[f32]) -> f64 {
        let zero = self
            .iter()
            .filter(|(filters, k)| {
                filters
                    .clone()
                    .all(|m| weights[m * self.filter_len + k] == 0.0)
            })
            .count();
        zero as f64 / self.count().max(1) as f64
    }
}

/// Zeros the blocks of `weights` (laid out as `blocks` says) of smallest L2 norm, ties by
/// position, until `sparsity` of the blocks are zero (blocks already zero count).
fn zero_smallest_blocks(weights: &mut [f32], blocks: &WeightBlocks, sparsity: f64) {
    let k_len = blocks.filter_len;
    let all: Vec<(Range<usize>, usize)> = blocks.iter().collect();
    let norms: Vec<f64> = all
        .iter()
        .map(|(filters, k)| {
            filters
                .clone()
                .map(|m| f64::from(weights[m * k_len + k]).powi(2))
                .sum()
        })
        .collect();
    let count = ((sparsity * norms.len() as f64).round() as usize).min(norms.len());
    if count == 0 {
        return;
    }
    let mut order: Vec<usize> = (0..norms.len()).collect();
    order.select_nth_unstable_by(count - 1, |&a, &b| {
        norms[a].total_cmp(&norms[b]).then(a.cmp(&b))
    });
    for &b in &order[..count] {
        let (filters, k) = &all[b];
        for m in filters.clone() {
            weights[m * k_len + k] = 0.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{zero_smallest, zero_smallest_blocks, WeightBlocks};

    /// Two filters' blocks of 2 over 3 positions k, plus a lone third filter: the blocks of
    /// smallest norm go whole, the short last block counts as one.
    #[test]
    fn blocks_of_smallest_norm_go_whole() {
        // [M = 3][K = 3]; blocks: (filters 0-1, k) and (filter 2, k).
        let mut w = vec![
            1.0, 0.1, 3.0, //
            -1.0, 0.1, 0.0, //
            0.5, 2.0, 0.01,
        ];
        let blocks = WeightBlocks::new(3, 1, 3, 2).unwrap();
        zero_smallest_blocks(&mut w, &blocks, 0.5);
        // Norms: k0 2.0, k1 0.02, k2 9.0 (filters 0-1); 0.25, 4.0, 0.0001 (filter 2).
        assert_eq!(w, vec![1.0, 0.0, 3.0, -1.0, 0.0, 0.0, 0.0, 2.0, 0.0]);
    }

    /// Blocks stay inside a group: two groups of 3 filters in blocks of 2 are filters 0-1,
    /// 2, 3-4 and 5, never 2-3.
    #[test]
    fn blocks_do_not_cross_groups() {
        // [M = 6][K = 1]: filters 2 and 3 are the two smallest, in different groups.
        let mut w = vec![5.0, 5.0, 0.1, 0.1, 6.0, 7.0];
        let blocks = WeightBlocks::new(6, 2, 1, 2).unwrap();
        zero_smallest_blocks(&mut w, &blocks, 0.5);
        // Norms: 50 (0-1), 0.01 (2), 36.01 (3-4), 49 (5): the two smallest go.
        assert_eq!(w, vec![5.0, 5.0, 0.0, 0.0, 0.0, 7.0]);
    }

    #[test]
    fn zeros_exactly_the_smallest_magnitudes() {
        let mut w = vec![0.5, -0.1, 0.0, 2.0, -3.0, 0.2];
        zero_smallest(&mut w, 3);
        assert_eq!(w, vec![0.5, 0.0, 0.0, 2.0, -3.0, 0.0]);
    }

    #[test]
    fn existing_zeros_count_towards_the_target() {
        let mut w = vec![0.0, 0.0, 1.0, -2.0];
        zero_smallest(&mut w, 2);
        assert_eq!(w, vec![0.0, 0.0, 1.0, -2.0]);
    }
}
