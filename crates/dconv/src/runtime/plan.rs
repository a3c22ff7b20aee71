//! Planning: one pass over a model's nodes for one set of input shapes. Constants fold,
//! BatchNormalization folds into the Conv (or ConvTranspose) before it, the activation
//! after one fuses into it, HardSwish written out as four nodes runs as one, layouts are
//! fixed, and every run-time tensor gets a buffer that is reused once the tensor is dead.

use super::builder::{Builder, Dynamic, Src, Step, Value, LAYOUT_OP};
use super::layout::Layout;
use super::policy::Selection;
use crate::conv::Activation;
use crate::error::{Error, Result};
use crate::onnx::{node_label, Attrs, Model, Node};
use crate::ops::conv::Draft;
use crate::ops::normalize::BatchNorm;
use crate::ops::{conv, conv_transpose, plan_op, Ctx};
use crate::tensor::Tensor;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Everything a run needs, fixed for one set of input shapes.
pub(crate) struct Plan {
    pub steps: Vec<Step>,
    pub consts: Vec<Arc<Tensor>>,
    /// The buffer each slot lives in.
    pub slot_buffer: Vec<usize>,
    pub buffers: usize,
    /// The slot of each model input, in the model's order.
    pub inputs: Vec<usize>,
    /// The model outputs, in the model's order (plain layout).
    pub outputs: Vec<(String, Value)>,
    /// What fitting the memory budget took out of the plan, a line per convolution.
    pub budget_notes: Vec<String>,
}

/// The graph around the node being planned, for the fusions that look ahead.
struct Graph<'m> {
    nodes: &'m [Node],
    consumers: HashMap<&'m str, Vec<usize>>,
    outputs: HashSet<&'m str>,
}

impl<'m> Graph<'m> {
    /// The one node that reads `name`, when nothing else (not even the graph's outputs) does.
    fn sole_consumer(&self, name: &str) -> Option<usize> {
        match self.consumers.get(name).map(Vec::as_slice) {
            Some(&[j]) if !self.outputs.contains(name) => Some(j),
            _ => None,
        }
    }
    fn is_unused(&self, name: &str) -> bool {
        name.is_empty() || (!self.consumers.contains_key(name) && !self.outputs.contains(name))
    }
}

fn in_node(node: &Node, index: usize) -> impl Fn(Error) -> Error + '_ {
    move |e| match e {
        Error::Node { .. } => e,
        e => Error::Node {
            node: node_label(node, index),
            op: node.op_type().to_string(),
            source: Box::new(e),
        },
    }
}

/// Builds the plan of `model` for inputs of `shapes` (in the model's input order), refusing
/// one whose buffers and folded constants would take more than `budget` bytes (by default
/// [`DEFAULT_MAX_MEMORY`](crate::limits::DEFAULT_MAX_MEMORY)).
pub(crate) fn build(
    model: &Model,
    shapes: &[Vec<usize>],
    selection: Selection,
    budget: Option<usize>,
) -> Result<Plan> {
    let budget = Some(budget.unwrap_or(crate::limits::DEFAULT_MAX_MEMORY));
    let mut b = Builder::new(selection, budget);
    let mut values: HashMap<String, Value> = model
        .initializers
        .iter()
        .map(|(k, t)| (k.clone(), Value::Const(Arc::clone(t))))
        .collect();
    let mut inputs = Vec::new();
    for (input, shape) in model.inputs().iter().zip(shapes) {
        let slot = b.new_slot(shape)?;
        inputs.push(slot);
        let v = Value::Dynamic(Dynamic {
            src: Src::Slot(slot),
            shape: shape.clone(),
            layout: Layout::Plain,
        });
        values.insert(input.name.clone(), v);
    }
    let mut graph = Graph {
        nodes: &model.nodes,
        consumers: HashMap::new(),
        outputs: model.outputs().iter().map(String::as_str).collect(),
    };
    for (j, node) in model.nodes.iter().enumerate() {
        for input in node.input.iter().filter(|i| !i.is_empty()) {
            graph.consumers.entry(input.as_str()).or_default().push(j);
        }
    }

    // Nodes planned already: folded into a Conv, or constant.
    let mut fused = HashSet::new();
    // Two passes: constant subgraphs first, so that folding a Conv's successors sees their
    // values (a Mul's per-channel scale may be unsqueezed after the Conv it follows, in node
    // order); then the rest.
    for constants_pass in [true, false] {
        for (i, node) in model.nodes.iter().enumerate() {
            if fused.contains(&i) {
                continue;
            }
            let constant = |name: &String| values.get(name).is_some_and(|v| v.as_const().is_some());
            let inputs_constant = node.input.iter().filter(|n| !n.is_empty()).all(constant);
            let convolution = matches!(node.op_type(), "Conv" | "ConvTranspose");
            if constants_pass && (convolution || !inputs_constant) {
                continue;
            }
            b.node = node_label(node, i);
            b.op_type = node.op_type().to_string();
            let wrap = in_node(node, i);
            let node_inputs = resolve_inputs(node, &values).map_err(&wrap)?;
            let ctx = Ctx {
                attrs: Attrs(&node.attribute),
                opset: model.opset(),
            };
            if let Some(hard_swish) = hard_swish_written_out(&graph, i, &values, model.opset()) {
                b.op_type = "HardSwish".into();
                let x = resolve_input(&hard_swish.x, &values).map_err(&wrap)?;
                let [value] = plan_op(&mut b, &ctx, "HardSwish", &[x])
                    .map_err(&wrap)?
                    .try_into()
                    .map_err(|_| wrap(Error::InvalidModel("HardSwish has one output".into())))?;
                values.insert(hard_swish.output, value);
                fused.extend(hard_swish.nodes);
                continue;
            }
            if convolution {
                let (name, value) =
                    plan_conv(&mut b, &ctx, &graph, i, &node_inputs, &values, &mut fused)
                        .map_err(&wrap)?;
                values.insert(name, value);
                continue;
            }
            let outputs = plan_op(&mut b, &ctx, node.op_type(), &node_inputs).map_err(&wrap)?;
            for (name, value) in node.output.iter().zip(outputs) {
                if !name.is_empty() {
                    values.insert(name.clone(), value);
                }
            }
            if constants_pass {
                fused.insert(i);
            }
        }
    }
    b.node = "output".into();
    b.op_type = LAYOUT_OP.into();
    let mut outputs = Vec::new();
    for name in model.outputs() {
        let v = values.get(name).ok_or_else(|| {
            Error::Unsupported(format!(
                "output '{name}' is an optional output dconv does not compute"
            ))
        })?;
        outputs.push((name.clone(), b.plain(v)?));
    }
    drop(values);
    let (slot_buffer, buffers) = assign_buffers(&b, &inputs, &outputs);
    if let Some(budget) = budget {
        super::budget::fit(&mut b, &slot_buffer, buffers, budget)?;
    }
    Ok(Plan {
        steps: b.steps,
        consts: b.consts,
        slot_buffer,
        buffers,
        inputs,
        outputs,
        budget_notes: b.budget_notes,
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
    let ctx = Ctx {
        attrs: Attrs(&clip_node.attribute),
        opset,
    };
    let bounds = (clip_node.op_type() == "Clip")
        .then(|| resolve_parameters(clip_node, values).ok())
        .flatten()
        .and_then(|inputs| crate::ops::clip_bounds(&ctx, &inputs).ok())?;
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

/// The inputs of a node that follows the Conv being planned, but its first (the Conv's
/// output, which has no value yet) as None: its parameters (a BatchNormalization's
/// statistics, a Clip's bounds).
fn resolve_parameters(node: &Node, values: &HashMap<String, Value>) -> Result<Vec<Option<Value>>> {
    let mut inputs = vec![None];
    for name in node.input.iter().skip(1) {
        inputs.push(resolve_input(name, values)?);
    }
    Ok(inputs)
}

fn resolve_inputs(node: &Node, values: &HashMap<String, Value>) -> Result<Vec<Option<Value>>> {
    node.input
        .iter()
        .map(|name| resolve_input(name, values))
        .collect()
}

fn resolve_input(name: &str, values: &HashMap<String, Value>) -> Result<Option<Value>> {
    if name.is_empty() {
        return Ok(None);
    }
    values.get(name).cloned().map(Some).ok_or_else(|| {
        Error::Unsupported(format!(
            "input '{name}' is an optional output of an earlier node that dconv does not compute"
        ))
    })
}

/// Plans a Conv or ConvTranspose with the BatchNormalization and activation that follow it
/// folded in; returns the name and value of the last fused node's output.
fn plan_conv(
    b: &mut Builder,
    ctx: &Ctx,
    graph: &Graph,
    i: usize,
    inputs: &[Option<Value>],
    values: &HashMap<String, Value>,
    fused: &mut HashSet<usize>,
) -> Result<(String, Value)> {
    let node = &graph.nodes[i];
    let op = node.op_type();
    let x = inputs
        .first()
        .and_then(Option::as_ref)
        .ok_or_else(|| Error::InvalidModel(format!("{op} needs an input")))?;
    let w = inputs
        .get(1)
        .and_then(Option::as_ref)
        .ok_or_else(|| Error::InvalidModel(format!("{op} needs weights")))?;
    let bias = inputs.get(2).and_then(Option::as_ref);
    let mut draft: Box<dyn Draft> = if op == "ConvTranspose" {
        Box::new(conv_transpose::draft(ctx, x.shape(), w, bias)?)
    } else {
        Box::new(conv::draft(ctx, x.shape(), w, bias)?)
    };
    let mut out = node.output.first().cloned().unwrap_or_default();
    let opset = ctx.opset;
    fn ctx_of(n: &Node, opset: i64) -> Ctx<'_> {
        Ctx {
            attrs: Attrs(&n.attribute),
            opset,
        }
    }

    // Per-channel affine maps after the Conv fold into its weights and bias, one after the
    // other: BatchNormalization, and Mul and Add by constants (BatchNormalization written
    // out, as in Inception v2).
    while let Some(j) = graph.sole_consumer(&out) {
        let next = &graph.nodes[j];
        let only_y = next.output.iter().skip(1).all(|o| graph.is_unused(o));
        let filters = draft.filters();
        let affine = match next.op_type() {
            "BatchNormalization" if only_y => resolve_parameters(next, values)
                .and_then(|inputs| BatchNorm::from_inputs(&ctx_of(next, opset), &inputs))
                .ok(),
            "Mul" | "Add" if opset >= 7 => {
                let rank = x.shape().len();
                channel_constant(next, &out, values, (filters, rank)).map(|c| {
                    match next.op_type() {
                        "Mul" => BatchNorm {
                            scale: c,
                            shift: vec![0.0; filters],
                        },
                        _ => BatchNorm {
                            scale: vec![1.0; filters],
                            shift: c,
                        },
                    }
                })
            }
            _ => None,
        };
        match affine {
            Some(bn) if bn.scale.len() == filters => {
                draft.fold_batch_norm(&bn);
                fused.insert(j);
                out = next.output[0].clone();
            }
            _ => break,
        }
    }
    if let Some((activation, nodes, output)) = fused_activation(graph, &out, values, opset) {
        draft.fuse(activation);
        fused.extend(nodes);
        out = output;
    }
    Ok((out, draft.finish(b, x)?))
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
                let ctx = Ctx { attrs, opset };
                let inputs = resolve_parameters(next, values).ok()?;
                match crate::ops::clip_bounds(&ctx, &inputs).ok()? {
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

/// Gives each slot a buffer, reusing the buffers of slots no later step reads. A step's
/// output never shares a buffer with its inputs; model inputs and outputs keep their own.
fn assign_buffers(
    b: &Builder,
    inputs: &[usize],
    outputs: &[(String, Value)],
) -> (Vec<usize>, usize) {
    let slots = b.slot_lens.len();
    let forever = usize::MAX;
    let mut last_use = vec![None; slots];
    for (i, step) in b.steps.iter().enumerate() {
        for src in &step.inputs {
            if let Src::Slot(s) = src {
                last_use[*s] = Some(i);
            }
        }
    }
    for (_, v) in outputs {
        if let Value::Dynamic(Dynamic {
            src: Src::Slot(s), ..
        }) = v
        {
            last_use[*s] = Some(forever);
        }
    }
    for &s in inputs {
        last_use[s] = Some(forever);
    }
    let mut slot_buffer = vec![usize::MAX; slots];
    let mut free: Vec<usize> = Vec::new();
    let mut count = 0;
    let mut take = |free: &mut Vec<usize>| {
        free.pop().unwrap_or_else(|| {
            count += 1;
            count - 1
        })
    };
    for &s in inputs {
        slot_buffer[s] = take(&mut free);
    }
    for (i, step) in b.steps.iter().enumerate() {
        slot_buffer[step.output] = take(&mut free);
        // Slots read for the last time here, and an output nobody reads, are free again.
        let mut done: Vec<usize> = step
            .inputs
            .iter()
            .filter_map(|src| match src {
                Src::Slot(s) if last_use[*s] == Some(i) => Some(*s),
                _ => None,
            })
            .collect();
        if last_use[step.output].is_none() {
            done.push(step.output);
        }
        done.sort_unstable();
        done.dedup();
        free.extend(done.iter().map(|&s| slot_buffer[s]));
    }
    (slot_buffer, count)
}
