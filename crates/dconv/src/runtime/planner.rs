//! Planning a model for one set of input shapes: constants fold, the fusion pass
//! ([`fuse`](super::fuse)) decides which nodes run as one step, each node asks its operator
//! for its steps, layouts are fixed, and every run-time tensor gets a buffer that is reused
//! once the tensor is dead.

use super::fuse::{fuse, Fusion};
use crate::error::{Error, Result};
use crate::onnx::{node_label, Attrs, Model, Node};
use crate::ops::{channel_shuffle, plan_affine_chain, plan_op, Ctx};
use crate::plan::builder::{Builder, Dynamic, Src, Step, Value, LAYOUT_OP};
use crate::plan::layout::Layout;
use crate::plan::policy::Selection;
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
    let budget = budget.unwrap_or(crate::limits::DEFAULT_MAX_MEMORY);
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
    // Constants first, so that the fusion pass sees the values it decides by (a Mul's
    // per-channel scale may be unsqueezed after the Conv it follows, in node order); then
    // the rest, as the fusion pass decided.
    let mut planned = HashSet::new();
    for (i, node) in model.nodes.iter().enumerate() {
        let constant = |name: &String| values.get(name).is_some_and(|v| v.as_const().is_some());
        let convolution = matches!(node.op_type(), "Conv" | "ConvTranspose");
        if !convolution && node.input.iter().filter(|n| !n.is_empty()).all(constant) {
            plan_node(&mut b, model, i, None, &mut values)?;
            planned.insert(i);
        }
    }
    let fusions = fuse(model, &values, &planned);
    for i in 0..model.nodes.len() {
        if !planned.contains(&i) && !fusions.taken.contains(&i) {
            plan_node(&mut b, model, i, fusions.at.get(&i), &mut values)?;
        }
    }
    b.begin_node("output".into(), LAYOUT_OP);
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
    crate::plan::budget::fit(&mut b, &slot_buffer, buffers, budget)?;
    Ok(Plan {
        steps: b.steps,
        consts: b.consts,
        slot_buffer,
        buffers,
        inputs,
        outputs,
        budget_notes: b.memory.notes,
    })
}

/// Plans node `i` as the fusion pass decided (`fusion`), and records the values it computes.
fn plan_node(
    b: &mut Builder,
    model: &Model,
    i: usize,
    fusion: Option<&Fusion>,
    values: &mut HashMap<String, Value>,
) -> Result<()> {
    let node = &model.nodes[i];
    let wrap = in_node(node, i);
    let mut ctx = Ctx::new(Attrs(&node.attribute), model.opset());
    let residual = match fusion {
        Some(Fusion::Conv { tail, .. }) => tail.residual.as_deref(),
        _ => None,
    };
    let residual = residual
        .map(|x| resolve_input(x, values))
        .transpose()
        .map_err(&wrap)?
        .flatten();
    ctx.residual = residual.as_ref();
    let (op, inputs, names) = match fusion {
        // Fusions of several nodes into one pass, planned apart when the pass does not apply.
        Some(Fusion::ChannelShuffle(shuffle)) => {
            let (first, second) = (&shuffle.first, &shuffle.second);
            return plan_fused_or_apart(
                b,
                model,
                (i, &shuffle.nodes),
                (&shuffle.x, &shuffle.output, "ChannelShuffle"),
                |b, x| channel_shuffle(b, x, first, second),
                values,
            );
        }
        Some(Fusion::Affine(chain)) => {
            return plan_fused_or_apart(
                b,
                model,
                (i, &chain.nodes),
                (&chain.x, &chain.output, "ChannelAffine"),
                |b, x| plan_affine_chain(b, x, &chain.tail),
                values,
            );
        }
        None => (
            node.op_type(),
            resolve_inputs(node, values),
            &node.output[..],
        ),
        Some(Fusion::Conv { tail, output }) => {
            ctx.tail = Some(tail);
            let names = std::slice::from_ref(output);
            (node.op_type(), resolve_inputs(node, values), names)
        }
        Some(Fusion::Concat { alone }) => {
            ctx.alone = Some(alone);
            (
                node.op_type(),
                resolve_inputs(node, values),
                &node.output[..],
            )
        }
        Some(Fusion::ActivatedSum { activation, output }) => {
            ctx.activation = Some(*activation);
            let names = std::slice::from_ref(output);
            (node.op_type(), resolve_inputs(node, values), names)
        }
        Some(Fusion::HardSwish { x, output }) => {
            let x = resolve_input(x, values).map(|x| vec![x]);
            ("HardSwish", x, std::slice::from_ref(output))
        }
    };
    b.begin_node(node_label(node, i), op);
    let outputs = plan_op(b, &ctx, op, &inputs.map_err(&wrap)?).map_err(&wrap)?;
    for (name, value) in names.iter().zip(outputs) {
        if !name.is_empty() {
            values.insert(name.clone(), value);
        }
    }
    Ok(())
}

/// Plans the nodes a fusion took that can run as one step only once the first's input
/// (`x`) has a shape: `fused` plans the one step (`op`) writing `output`, or says None, and
/// node `i` and the `taken` are then planned one by one.
fn plan_fused_or_apart(
    b: &mut Builder,
    model: &Model,
    (i, taken): (usize, &[usize]),
    (x, output, op): (&str, &str, &'static str),
    fused: impl FnOnce(&mut Builder, &Value) -> Result<Option<Value>>,
    values: &mut HashMap<String, Value>,
) -> Result<()> {
    let node = &model.nodes[i];
    let wrap = in_node(node, i);
    let x = resolve_input(x, values)?.ok_or_else(|| {
        wrap(Error::InvalidModel(format!(
            "{} without input",
            node.op_type()
        )))
    })?;
    b.begin_node(node_label(node, i), op);
    match fused(b, &x).map_err(&wrap)? {
        Some(value) => {
            values.insert(output.to_string(), value);
        }
        None => {
            for j in std::iter::once(i).chain(taken.iter().copied()) {
                plan_node(b, model, j, None, values)?;
            }
        }
    }
    Ok(())
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

/// Gives each slot a buffer, reusing the buffers of slots no later step reads or writes. A
/// step's output never shares a buffer with its inputs; model inputs and outputs keep their
/// own. A slot several steps write (a Concat's) has its buffer from its first writer on; a
/// slot no step writes any more (a convolution's own, once it writes into a Concat) has
/// none (`usize::MAX`).
fn assign_buffers(
    b: &Builder,
    inputs: &[usize],
    outputs: &[(String, Value)],
) -> (Vec<usize>, usize) {
    let slots = b.slot_lens.len();
    let forever = usize::MAX;
    let mut last_use = vec![None; slots];
    let mut last_write = vec![0; slots];
    for (i, step) in b.steps.iter().enumerate() {
        for src in &step.inputs {
            if let Src::Slot(s) = src {
                last_use[*s] = Some(i);
            }
        }
        last_write[step.output] = i;
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
        if slot_buffer[step.output] == usize::MAX {
            slot_buffer[step.output] = take(&mut free);
        }
        // Slots read for the last time here, and an output nobody reads, are free again.
        let mut done: Vec<usize> = step
            .inputs
            .iter()
            .filter_map(|src| match src {
                Src::Slot(s) if last_use[*s] == Some(i) => Some(*s),
                _ => None,
            })
            .collect();
        if last_use[step.output].is_none() && last_write[step.output] == i {
            done.push(step.output);
        }
        done.sort_unstable();
        done.dedup();
        free.extend(done.iter().map(|&s| slot_buffer[s]));
    }
    (slot_buffer, count)
}
