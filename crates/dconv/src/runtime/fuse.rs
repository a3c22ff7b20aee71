//! Fusion: the pass between folding constants and planning that decides which nodes run
//! as one step. A Conv (or ConvTranspose) takes over the BatchNormalization, per-channel Mul
//! and Add, and activation after it ([`ConvTail`]), and a Conv the residual Add after those
//! and the activation after it; HardSwish written out as four nodes runs as the one
//! operator; a channel shuffle written out as three, as one copy; a residual Add that no
//! Conv took and the activation after it, as one pass. Every decision
//! reads only constants, which the folding pass has computed, so it is made once for the
//! whole graph, before any step is planned (a shuffle's shapes are checked when planned).

use crate::conv::Activation;
use crate::onnx::{Attrs, Model, Node};
use crate::ops::conv::ConvTail;
use crate::ops::normalize::BatchNorm;
use crate::ops::{clip_bounds, Ctx};
use crate::plan::builder::Value;
use std::collections::{HashMap, HashSet};

/// How a node is planned when fusion changed it.
pub(crate) enum Fusion {
    /// A Conv or ConvTranspose with what follows it folded in; `output` is the tensor the
    /// last node taken writes.
    Conv { tail: ConvTail, output: String },
    /// An Add that starts HardSwish written out: HardSwish of `x`, written to `output`.
    HardSwish { x: String, output: String },
    /// An Add, or a Sum of two, whose output only an activation reads (ResNet's residual
    /// Add and the Relu after it): one pass, which counts the zeros the activation makes.
    ActivatedSum {
        activation: Activation,
        output: String,
    },
    /// A Reshape that starts a channel shuffle written out (Reshape, Transpose, Reshape).
    ChannelShuffle(ChannelShuffle),
    /// A BatchNormalization (not after a Conv) that starts per-channel affine maps and an
    /// activation, planned as one pass when its input turns out 4-D.
    Affine(AffineChain),
    /// A Concat that alone reads some of its inputs (`alone`, one flag per non-empty input):
    /// the convolutions that compute those may write them into its output in place.
    Concat { alone: Vec<bool> },
}

/// A run of per-channel affine maps and an activation on `x`, the first a BatchNormalization
/// (DenseNet normalises each Concat so before its Conv); the other `nodes` are taken.
pub(crate) struct AffineChain {
    pub x: String,
    pub tail: ConvTail,
    pub nodes: Vec<usize>,
    pub output: String,
}

/// A channel shuffle as ShuffleNet writes it: `Reshape(x, first)` to five axes, `Transpose`
/// of axes 1 and 2, `Reshape(., second)` to four, with no other reader of the two tensors
/// between. Whether the reshapes split and merge the channels of `x` is known only once its
/// shape is: the planner checks, and plans the three nodes one by one when they do not.
pub(crate) struct ChannelShuffle {
    pub x: String,
    pub first: Vec<i64>,
    pub second: Vec<i64>,
    /// The Transpose and the second Reshape.
    pub nodes: [usize; 2],
    pub output: String,
}

/// The fusion pass's decisions: what becomes of the nodes that start a fused group, and the
/// nodes the groups take (planned with the first, so skipped).
#[derive(Default)]
pub(crate) struct Fusions {
    pub at: HashMap<usize, Fusion>,
    pub taken: HashSet<usize>,
}

/// Decides the fusions of `model`'s nodes, but the `planned` ones (constants folded
/// already), from the constants in `values`.
pub(crate) fn fuse(
    model: &Model,
    values: &HashMap<String, Value>,
    planned: &HashSet<usize>,
) -> Fusions {
    let graph = Graph::new(model);
    let opset = model.opset();
    let mut fusions = Fusions::default();
    for (i, node) in model.nodes.iter().enumerate() {
        if planned.contains(&i) || fusions.taken.contains(&i) {
            continue;
        }
        let found = match node.op_type() {
            "Conv" | "ConvTranspose" => conv_tail(&graph, i, values, opset)
                .map(|(tail, taken, output)| (Fusion::Conv { tail, output }, taken)),
            "Add" | "Sum" => hard_swish_written_out(&graph, i, values, opset)
                .map(|hs| {
                    let x = hs.x;
                    let output = hs.output;
                    (Fusion::HardSwish { x, output }, hs.nodes.to_vec())
                })
                .or_else(|| activated_sum(&graph, i, values, opset)),
            "Reshape" => channel_shuffle(&graph, i, values, opset).map(|shuffle| {
                let taken = shuffle.nodes.to_vec();
                (Fusion::ChannelShuffle(shuffle), taken)
            }),
            "BatchNormalization" => affine_chain(&graph, i, values, opset).map(|chain| {
                let taken = chain.nodes.clone();
                (Fusion::Affine(chain), taken)
            }),
            "Concat" => {
                let inputs = node.input.iter().filter(|x| !x.is_empty());
                let alone: Vec<bool> = inputs.map(|x| graph.sole_consumer(x) == Some(i)).collect();
                alone
                    .contains(&true)
                    .then(|| (Fusion::Concat { alone }, Vec::new()))
            }
            _ => None,
        };
        if let Some((fusion, taken)) = found {
            fusions.at.insert(i, fusion);
            fusions.taken.extend(taken);
        }
    }
    fusions
}

/// A model's nodes with who reads each tensor, for the fusions that look ahead.
struct Graph<'m> {
    nodes: &'m [Node],
    consumers: HashMap<&'m str, Vec<usize>>,
    /// The node that writes each tensor a node writes.
    producers: HashMap<&'m str, usize>,
    outputs: HashSet<&'m str>,
}

impl<'m> Graph<'m> {
    fn new(model: &'m Model) -> Self {
        let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut producers = HashMap::new();
        for (j, node) in model.nodes.iter().enumerate() {
            for input in node.input.iter().filter(|i| !i.is_empty()) {
                consumers.entry(input.as_str()).or_default().push(j);
            }
            producers.extend(node.output.iter().map(|o| (o.as_str(), j)));
        }
        Graph {
            nodes: &model.nodes,
            consumers,
            producers,
            outputs: model.outputs().iter().map(String::as_str).collect(),
        }
    }

    /// The one node that reads `name`, when nothing else (not even the graph's outputs) does.
    fn sole_consumer(&self, name: &str) -> Option<usize> {
        match self.consumers.get(name).map(Vec::as_slice) {
            Some(&[j]) if !self.outputs.contains(name) => Some(j),
            _ => None,
        }
    }
    /// Whether tensor `name` is computed before node `i` runs: a graph input, or written by
    /// an earlier node (nodes are in topological order).
    fn ready_before(&self, name: &str, i: usize) -> bool {
        self.producers.get(name).is_none_or(|&p| p < i)
    }
    fn is_unused(&self, name: &str) -> bool {
        name.is_empty() || (!self.consumers.contains_key(name) && !self.outputs.contains(name))
    }
}

fn channel_shuffle(
    graph: &Graph,
    reshape: usize,
    values: &HashMap<String, Value>,
    opset: i64,
) -> Option<ChannelShuffle> {
    // A Reshape's constant target, with zeros copying the input's axes (allowzero unset).
    let target = |node: &Node, rank: usize| {
        let plain = node.op_type() == "Reshape"
            && Attrs(&node.attribute).int("allowzero", 0) == 0
            && opset >= 5;
        let shape = values.get(node.input.get(1)?)?.as_const()?.to_i64_vec();
        (plain && shape.len() == rank).then_some(shape)
    };
    let nodes = graph.nodes;
    let first = target(&nodes[reshape], 5)?;
    let transpose = graph.sole_consumer(nodes[reshape].output.first()?)?;
    let transpose_node = &nodes[transpose];
    let perm = Attrs(&transpose_node.attribute).ints("perm")?;
    if transpose_node.op_type() != "Transpose" || perm != [0, 2, 1, 3, 4] {
        return None;
    }
    let last = graph.sole_consumer(transpose_node.output.first()?)?;
    let second = target(&nodes[last], 4)?;
    Some(ChannelShuffle {
        x: nodes[reshape].input.first()?.clone(),
        first,
        second,
        nodes: [transpose, last],
        output: nodes[last].output.first()?.clone(),
    })
}

/// HardSwish written out as four nodes, as exporters without the operator write it
/// (PaddlePaddle's MobileNetV3): `Add(x, 3) -> Clip(0, 6) -> Mul(x, .) -> Div(., 6)`, the
/// last possibly `Mul(., 1/6)`, with no other reader of the three intermediate tensors.
struct HardSwishWrittenOut {
    x: String,
    /// The Clip, Mul and Div nodes, planned with the Add as one step.
    nodes: [usize; 3],
    output: String,
}

fn hard_swish_written_out(
    graph: &Graph,
    add: usize,
    values: &HashMap<String, Value>,
    opset: i64,
) -> Option<HardSwishWrittenOut> {
    let scalar = |name: &str, expected: f32| {
        values
            .get(name)
            .and_then(Value::as_const)
            .and_then(|t| t.as_f32())
            .is_some_and(|d| d.len() == 1 && (d[0] - expected).abs() <= 1e-6 * expected)
    };
    // The operand of a binary node that is not `known` (None if both or neither are).
    let other = |node: &Node, known: &str| match node.input.as_slice() {
        [a, b] if a == known && b != known => Some(b.clone()),
        [a, b] if b == known && a != known => Some(a.clone()),
        _ => None,
    };
    let nodes = graph.nodes;
    let add_node = &nodes[add];
    if add_node.op_type() != "Add" || opset < 7 {
        return None;
    }
    let x = add_node
        .input
        .iter()
        .find(|name| !scalar(name, 3.0))
        .filter(|x| other(add_node, x).is_some_and(|c| scalar(&c, 3.0)))?
        .clone();
    let clip = graph.sole_consumer(add_node.output.first()?)?;
    let clip_node = &nodes[clip];
    let ctx = Ctx::new(Attrs(&clip_node.attribute), opset);
    let bounds = (clip_node.op_type() == "Clip")
        .then(|| resolve_parameters(clip_node, values))
        .flatten()
        .and_then(|inputs| clip_bounds(&ctx, &inputs).ok())?;
    if bounds != (0.0, 6.0) || clip_node.input.first() != add_node.output.first() {
        return None;
    }
    let mul = graph.sole_consumer(clip_node.output.first()?)?;
    let mul_node = &nodes[mul];
    if mul_node.op_type() != "Mul" || other(mul_node, clip_node.output.first()?)? != x {
        return None;
    }
    let div = graph.sole_consumer(mul_node.output.first()?)?;
    let div_node = &nodes[div];
    let by = other(div_node, mul_node.output.first()?)?;
    let divides_by_six = match div_node.op_type() {
        "Div" => div_node.input.first() == mul_node.output.first() && scalar(&by, 6.0),
        "Mul" => scalar(&by, 1.0 / 6.0),
        _ => false,
    };
    divides_by_six.then(|| HardSwishWrittenOut {
        x,
        nodes: [clip, mul, div],
        output: div_node.output.first().cloned().unwrap_or_default(),
    })
}

/// The other operand of a binary `node` one of whose operands is `x` (a Conv output of `rank`
/// axes, `[N, M, ...]`), when it is a float constant that numpy broadcasting applies per
/// channel without changing the output's shape: a scalar of at most `rank` unit axes, or
/// `[M, 1, ...]` of `rank - 1` axes, or that with a leading unit axis; as `M` values.
fn channel_constant(
    node: &Node,
    x: &str,
    values: &HashMap<String, Value>,
    (filters, rank): (usize, usize),
) -> Option<Vec<f32>> {
    let [a, b] = node.input.as_slice() else {
        return None;
    };
    let other = if a == x {
        b
    } else if b == x {
        a
    } else {
        return None;
    };
    if other == x {
        return None;
    }
    let tensor = values.get(other.as_str())?.as_const()?;
    let data = tensor.as_f32()?;
    let shape = tensor.shape();
    if shape.len() > rank {
        return None;
    }
    if data.len() == 1 {
        return Some(vec![data[0]; filters]);
    }
    let per_channel = match shape {
        [1, rest @ ..] if shape.len() == rank => rest,
        rest => rest,
    };
    let unit_rest = per_channel.iter().skip(1).all(|&d| d == 1);
    (per_channel.len() == rank - 1 && per_channel.first() == Some(&filters) && unit_rest)
        .then(|| data.to_vec())
}

/// The inputs of a node that follows a Conv, but its first (the Conv's output, which has no
/// value yet) as None: its parameters (a BatchNormalization's statistics, a Clip's bounds).
/// None when one of them has no value.
fn resolve_parameters(node: &Node, values: &HashMap<String, Value>) -> Option<Vec<Option<Value>>> {
    let mut inputs = vec![None];
    for name in node.input.iter().skip(1) {
        inputs.push(match name.as_str() {
            "" => None,
            name => Some(values.get(name)?.clone()),
        });
    }
    Some(inputs)
}

/// What follows Conv (or ConvTranspose) node `i` that its epilogue can take over
/// ([`affine_tail`]), with the nodes taken and the tensor the last of them writes. None when
/// nothing follows it so.
fn conv_tail(
    graph: &Graph,
    i: usize,
    values: &HashMap<String, Value>,
    opset: i64,
) -> Option<(ConvTail, Vec<usize>, String)> {
    let node = &graph.nodes[i];
    let channels = filters_and_rank(node, values)?;
    let out = node.output.first().cloned().unwrap_or_default();
    let (mut tail, mut taken, mut out) = affine_tail(graph, out, channels, values, opset);
    let residual = (node.op_type() == "Conv" && tail.activation.is_none())
        .then(|| residual_add(graph, i, &out, values, opset))
        .flatten();
    if let Some((residual, nodes, output)) = residual {
        (tail.residual, out) = (Some(residual.x), output);
        tail.activation = residual.activation;
        taken.extend(nodes);
    }
    (!taken.is_empty()).then_some((tail, taken, out))
}

/// A residual connection that Conv node `i` can finish in its epilogue.
struct ResidualAdd {
    /// The tensor added to the convolution's output.
    x: String,
    /// The activation after the sum, if one is fused.
    activation: Option<Activation>,
}

/// The residual Add after Conv node `i`'s output `out` (through its affine tail): an Add, or
/// a Sum of two, of `out` and a tensor `x` computed before node `i` (so that the Conv can
/// read it), and no constant; with the activation after it when one can be fused, the nodes
/// taken, and the tensor the last of them writes. Whether `x` has the output's shape (no
/// broadcasting) is the planner's to check, when shapes are known.
fn residual_add(
    graph: &Graph,
    i: usize,
    out: &str,
    values: &HashMap<String, Value>,
    opset: i64,
) -> Option<(ResidualAdd, Vec<usize>, String)> {
    let add = graph.sole_consumer(out)?;
    let node = &graph.nodes[add];
    let sum = match node.op_type() {
        "Add" => opset >= 7,
        "Sum" => true,
        _ => false,
    };
    let [a, b] = node.input.as_slice() else {
        return None;
    };
    let x = match (a == out, b == out) {
        (true, false) => b,
        (false, true) => a,
        _ => return None,
    };
    let dynamic = values.get(x).and_then(Value::as_const).is_none();
    if !sum || !dynamic || !graph.ready_before(x, i) {
        return None;
    }
    let added = node.output.first()?.clone();
    let (activation, mut taken, output) = match fused_activation(graph, &added, values, opset) {
        Some((activation, nodes, output)) => (Some(activation), nodes, output),
        None => (None, Vec::new(), added),
    };
    taken.insert(0, add);
    let x = x.clone();
    Some((ResidualAdd { x, activation }, taken, output))
}

/// The BatchNormalization node `i` and the affine maps and activation after it, when there
/// is at least one (a BatchNormalization alone is one pass already). Its input's rank is not
/// known yet: the Mul and Add constants are taken per channel of a 4-D input, which the
/// planner checks.
fn affine_chain(
    graph: &Graph,
    i: usize,
    values: &HashMap<String, Value>,
    opset: i64,
) -> Option<AffineChain> {
    let node = &graph.nodes[i];
    let first = batch_norm(graph, node, values, opset)?;
    let channels = (first.scale.len(), 4);
    let out = node.output.first().cloned().unwrap_or_default();
    let (mut tail, nodes, output) = affine_tail(graph, out, channels, values, opset);
    tail.affines.insert(0, first);
    (!nodes.is_empty()).then(|| AffineChain {
        x: node.input.first().cloned().unwrap_or_default(),
        tail,
        nodes,
        output,
    })
}

/// A BatchNormalization `node` whose parameters are constants and only first output is read.
fn batch_norm(
    graph: &Graph,
    node: &Node,
    values: &HashMap<String, Value>,
    opset: i64,
) -> Option<BatchNorm> {
    let only_y = node.output.iter().skip(1).all(|o| graph.is_unused(o));
    let inputs = resolve_parameters(node, values).filter(|_| only_y)?;
    BatchNorm::from_inputs(&Ctx::new(Attrs(&node.attribute), opset), &inputs).ok()
}

/// From tensor `out` of `(filters, rank)` on: the per-channel affine maps (BatchNormalization,
/// and Mul and Add by constants: Inception v2 writes BatchNormalization out so), one after
/// the other, then an activation; with the nodes taken and the tensor the last of them
/// writes (`out` when none is).
fn affine_tail(
    graph: &Graph,
    mut out: String,
    (filters, rank): (usize, usize),
    values: &HashMap<String, Value>,
    opset: i64,
) -> (ConvTail, Vec<usize>, String) {
    let mut tail = ConvTail::default();
    let mut taken = Vec::new();
    while let Some(j) = graph.sole_consumer(&out) {
        let next = &graph.nodes[j];
        let affine = match next.op_type() {
            "BatchNormalization" => batch_norm(graph, next, values, opset),
            "Mul" | "Add" if opset >= 7 => channel_constant(next, &out, values, (filters, rank))
                .map(|c| match next.op_type() {
                    "Mul" => BatchNorm {
                        scale: c,
                        shift: vec![0.0; filters],
                    },
                    _ => BatchNorm {
                        scale: vec![1.0; filters],
                        shift: c,
                    },
                }),
            _ => None,
        };
        match affine {
            Some(bn) if bn.scale.len() == filters => {
                tail.affines.push(bn);
                taken.push(j);
                out = next.output[0].clone();
            }
            _ => break,
        }
    }
    if let Some((activation, nodes, output)) = fused_activation(graph, &out, values, opset) {
        tail.activation = Some(activation);
        taken.extend(nodes);
        out = output;
    }
    (tail, taken, out)
}

/// Add node `add` (opset 7 on: numpy broadcasting) or a Sum of two tensors that are not
/// constants (a residual connection: an Add of a constant belongs to the patterns above),
/// whose output goes only to an activation the pass can fuse; with the nodes taken.
fn activated_sum(
    graph: &Graph,
    add: usize,
    values: &HashMap<String, Value>,
    opset: i64,
) -> Option<(Fusion, Vec<usize>)> {
    let node = &graph.nodes[add];
    let dynamic =
        |name: &String| !name.is_empty() && values.get(name).and_then(Value::as_const).is_none();
    let two = node.input.len() == 2 && node.input.iter().all(dynamic);
    if !two || (node.op_type() == "Add" && opset < 7) {
        return None;
    }
    let (activation, taken, output) = fused_activation(graph, node.output.first()?, values, opset)?;
    Some((Fusion::ActivatedSum { activation, output }, taken))
}

/// The output channels and the rank of a Conv or ConvTranspose node's output, from its
/// weights' shape (its input may not have a value yet: the pass runs before planning); None
/// when they are not known, which planning the node reports.
fn filters_and_rank(node: &Node, values: &HashMap<String, Value>) -> Option<(usize, usize)> {
    let shape = values.get(node.input.get(1)?)?.shape();
    let filters = match node.op_type() {
        "ConvTranspose" => {
            let groups = usize::try_from(Attrs(&node.attribute).int("group", 1)).ok()?;
            shape.get(1)?.checked_mul(groups)?
        }
        _ => *shape.first()?,
    };
    Some((filters, shape.len()))
}

/// The activation after a Conv's output `out` that its epilogue can apply, with the nodes
/// that compute it and the tensor they write: Relu, Clip to [0, 6] or [0, ∞), HardSigmoid,
/// HardSwish, or HardSwish written out as four nodes (whose first and third both read
/// `out`).
fn fused_activation(
    graph: &Graph,
    out: &str,
    values: &HashMap<String, Value>,
    opset: i64,
) -> Option<(Activation, Vec<usize>, String)> {
    let output = |j: usize| graph.nodes[j].output.first().cloned().unwrap_or_default();
    if let Some(j) = graph.sole_consumer(out) {
        let next = &graph.nodes[j];
        let attrs = Attrs(&next.attribute);
        let activation = match next.op_type() {
            "Relu" => Activation::Relu,
            "Clip" => {
                let ctx = Ctx::new(attrs, opset);
                let inputs = resolve_parameters(next, values)?;
                match clip_bounds(&ctx, &inputs).ok()? {
                    (0.0, 6.0) => Activation::Relu6,
                    (0.0, f32::INFINITY) => Activation::Relu,
                    _ => return None,
                }
            }
            "HardSigmoid" => Activation::HardSigmoid {
                alpha: attrs.float("alpha", 0.2),
                beta: attrs.float("beta", 0.5),
            },
            "HardSwish" => Activation::HardSwish,
            _ => return None,
        };
        return Some((activation, vec![j], output(j)));
    }
    let readers = match graph.consumers.get(out).map(Vec::as_slice) {
        Some(&[a, b]) if !graph.outputs.contains(out) => [a, b],
        _ => return None,
    };
    readers
        .iter()
        .zip(readers.iter().rev())
        .find_map(|(&add, &other)| {
            let written = hard_swish_written_out(graph, add, values, opset)?;
            let [clip, mul, div] = written.nodes;
            (written.x == out && other == mul).then(|| {
                (
                    Activation::HardSwish,
                    vec![add, clip, mul, div],
                    written.output,
                )
            })
        })
}
