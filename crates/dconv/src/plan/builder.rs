//! [`Builder`]: what operators use while a plan is built — values (constants or tensors
//! computed at run time), slots for the latter, and the steps that fill them. Operators
//! whose inputs are all constants are evaluated on the spot (constant folding).

use super::budget::Memory;
use super::conv_step::ConvStep;
use super::copy::{CopyKernel, CopyPart, View};
use super::kernel::Kernel;
use super::layout::Layout;
use super::policy::Selection;
use crate::conv::ConvTranspose;
use crate::error::{Error, Result};
use crate::limits::checked_elements;
use crate::tensor::{element_count, Tensor, TensorData};
use std::sync::Arc;

/// Where a step reads an input from: a slot written at run time, or a constant of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Src {
    Slot(usize),
    Const(usize),
}

/// A tensor known only at run time: where it is, its logical shape and its storage layout.
#[derive(Debug, Clone)]
pub(crate) struct Dynamic {
    pub src: Src,
    pub shape: Vec<usize>,
    pub layout: Layout,
}

/// The value of a graph tensor while planning.
#[derive(Debug, Clone)]
pub(crate) enum Value {
    Const(Arc<Tensor>),
    Dynamic(Dynamic),
}

impl Value {
    pub fn shape(&self) -> &[usize] {
        match self {
            Value::Const(t) => t.shape(),
            Value::Dynamic(d) => &d.shape,
        }
    }
    pub fn layout(&self) -> Layout {
        match self {
            Value::Const(_) => Layout::Plain,
            Value::Dynamic(d) => d.layout,
        }
    }
    /// The strides of each logical axis in this value's storage.
    pub fn strides(&self) -> Vec<isize> {
        self.layout().strides(self.shape())
    }
    pub fn as_const(&self) -> Option<&Tensor> {
        match self {
            Value::Const(t) => Some(t),
            Value::Dynamic(_) => None,
        }
    }
    pub fn constant(t: Tensor) -> Value {
        Value::Const(Arc::new(t))
    }
}

/// What a step does.
pub(crate) enum StepOp {
    Conv(Box<ConvStep>),
    ConvTranspose(Box<ConvTranspose>),
    Kernel(Box<dyn Kernel>),
}

/// One operator application at run time: reads `inputs`, writes `out_len` elements to slot
/// `output` (or its part of them, when it shares the slot).
pub(crate) struct Step {
    pub node: String,
    /// The ONNX operator of the node, or [`LAYOUT_OP`] for a layout conversion.
    pub op_type: String,
    pub inputs: Vec<Src>,
    pub output: usize,
    pub out_len: usize,
    pub op: StepOp,
    /// Set when several steps write the slot: the parts of a channel Concat.
    pub shared: Option<SharedOutput>,
}

/// A step's part of a slot that several steps write: a convolution's channels of a
/// channels-last Concat, written in place, or the Concat's other parts, copied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct SharedOutput {
    /// For a convolution: where its pixels' channels start in the slot, the floats they
    /// span (the last pixel's end) and the floats between its pixels.
    pub channels: Option<ChannelsInPlace>,
    /// The fraction of the slot's elements the step writes, which weighs its zero count.
    pub share: f64,
    /// Whether it is the slot's first writer, which starts the slot's zero count.
    pub first: bool,
}

/// Where a convolution writes its channels of a channels-last Concat: `len` floats from
/// `start`, pixels `pitch` floats apart (see `Conv::run_into`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChannelsInPlace {
    pub start: usize,
    pub len: usize,
    pub pitch: usize,
}

/// Builds a plan node by node: slots for run-time tensors, plan constants and steps, within
/// the session's memory budget.
pub(crate) struct Builder {
    /// How convolutions prepare and pick their methods.
    pub selection: Selection,
    /// What the plan has taken of its budget.
    pub memory: Memory,
    pub consts: Vec<Arc<Tensor>>,
    /// Element count of each slot.
    pub slot_lens: Vec<usize>,
    pub steps: Vec<Step>,
    /// The node being planned and its operator, recorded in the steps it adds.
    node: String,
    op_type: String,
}

/// The operator name of the steps that convert between the plain and channels-last layouts.
pub(crate) const LAYOUT_OP: &str = "Layout";

impl Builder {
    pub fn new(selection: Selection, budget: usize) -> Self {
        Builder {
            selection,
            memory: Memory::new(budget),
            consts: Vec::new(),
            slot_lens: Vec::new(),
            steps: Vec::new(),
            node: String::new(),
            op_type: String::new(),
        }
    }

    /// Names the node whose steps follow, for profiles and messages: `op_type` is the
    /// operator recorded in them (the fused one's when several nodes plan as one).
    pub fn begin_node(&mut self, node: String, op_type: &str) {
        self.node = node;
        self.op_type = op_type.to_string();
    }

    /// The node being planned.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// A slot for a run-time tensor of `shape`; one that alone exceeds the budget is refused.
    pub fn new_slot(&mut self, shape: &[usize]) -> Result<usize> {
        let len = self.memory.slot_elements(shape)?;
        self.slot_lens.push(len);
        Ok(self.slot_lens.len() - 1)
    }

    /// Where a step reads `v` from; a constant becomes (a float copy of) a plan constant.
    pub fn src(&mut self, v: &Value) -> Src {
        match v {
            Value::Dynamic(d) => d.src,
            Value::Const(t) => {
                let t = match t.data() {
                    TensorData::F32(_) => t.clone(),
                    TensorData::I64(_) => Arc::new(
                        Tensor::from_f32(t.shape().to_vec(), t.to_f32_vec())
                            .expect("same shape, same count"),
                    ),
                };
                self.consts.push(t);
                Src::Const(self.consts.len() - 1)
            }
        }
    }

    /// Adds a step that runs `kernel` on `inputs` into a new tensor of `shape` stored in
    /// `layout`; when every input is a constant, runs it now and returns a constant (in the
    /// plain layout, which the kernel must then produce).
    pub fn emit(
        &mut self,
        inputs: &[&Value],
        shape: Vec<usize>,
        layout: Layout,
        kernel: Box<dyn Kernel>,
    ) -> Result<Value> {
        if inputs.iter().all(|v| v.as_const().is_some()) {
            let len = self.memory.fold_elements(&shape)?;
            let data: Vec<Vec<f32>> = inputs
                .iter()
                .map(|v| v.as_const().map(Tensor::to_f32_vec).unwrap_or_default())
                .collect();
            let slices: Vec<&[f32]> = data.iter().map(Vec::as_slice).collect();
            let mut out = vec![0.0; len];
            kernel.run(&slices, &mut out);
            return Ok(Value::constant(Tensor::from_f32(shape, out)?));
        }
        let srcs = inputs.iter().map(|v| self.src(v)).collect();
        self.push(srcs, shape, layout, StepOp::Kernel(kernel))
    }

    /// Adds a step and returns the run-time value it produces.
    pub fn push(
        &mut self,
        inputs: Vec<Src>,
        shape: Vec<usize>,
        layout: Layout,
        op: StepOp,
    ) -> Result<Value> {
        let op_type = self.op_type.clone();
        self.push_as(op_type, inputs, shape, layout, op)
    }

    /// [`push`](Self::push), recording the step under operator `op_type`.
    fn push_as(
        &mut self,
        op_type: String,
        inputs: Vec<Src>,
        shape: Vec<usize>,
        layout: Layout,
        op: StepOp,
    ) -> Result<Value> {
        let output = self.new_slot(&shape)?;
        self.steps.push(Step {
            node: self.node.clone(),
            op_type,
            inputs,
            output,
            out_len: self.slot_lens[output],
            op,
            shared: None,
        });
        Ok(Value::Dynamic(Dynamic {
            src: Src::Slot(output),
            shape,
            layout,
        }))
    }

    /// The step that computes `v`, when it is a convolution that could write it in place
    /// into a slot it shares (see [`write_in_place`](Self::write_in_place)): the last writer
    /// of `v`'s slot, a convolution step whose output `v` is as it wrote it (channels-last,
    /// its own shape, not a reshaped view of the slot), that adds no residual (a residual
    /// is added only to an output of its own) and shares no slot yet.
    pub fn conv_computing(&self, v: &Value) -> Option<usize> {
        let Value::Dynamic(Dynamic {
            src: Src::Slot(slot),
            shape,
            layout: Layout::ChannelsLast,
        }) = v
        else {
            return None;
        };
        let i = self.steps.iter().rposition(|s| s.output == *slot)?;
        let step = &self.steps[i];
        let StepOp::Conv(conv) = &step.op else {
            return None;
        };
        let s = conv.convs().first()?.spec();
        let as_written = *shape == [s.batch, s.filters, s.out_height(), s.out_width()];
        let plain = step.inputs.len() == 1 && step.shared.is_none();
        (as_written && plain).then_some(i)
    }

    /// Makes step `step` (a [`conv_computing`](Self::conv_computing) answer) write its
    /// output into slot `slot` as `channels`, instead of into a slot of its own, which
    /// nothing reads then. [`share_slot`](Self::share_slot) completes the slot's writers.
    pub fn write_in_place(&mut self, step: usize, slot: usize, channels: ChannelsInPlace) {
        let out_len = self.slot_lens[slot];
        let step = &mut self.steps[step];
        step.output = slot;
        step.out_len = out_len;
        step.shared = Some(SharedOutput {
            channels: Some(channels),
            share: 0.0,
            first: false,
        });
    }

    /// Adds a step that runs `kernel` on `inputs` into its part of slot `slot`, which other
    /// steps write too; [`share_slot`](Self::share_slot) completes the slot's writers.
    pub fn push_into(&mut self, inputs: Vec<Src>, slot: usize, kernel: Box<dyn Kernel>) {
        self.steps.push(Step {
            node: self.node.clone(),
            op_type: self.op_type.clone(),
            inputs,
            output: slot,
            out_len: self.slot_lens[slot],
            op: StepOp::Kernel(kernel),
            shared: Some(SharedOutput {
                channels: None,
                share: 0.0,
                first: false,
            }),
        });
    }

    /// Sets what each writer of the shared slot `slot` writes of it, `share(step)` of its
    /// elements, and marks the first to run.
    pub fn share_slot(&mut self, slot: usize, share: impl Fn(&Step) -> f64) {
        let mut first = true;
        for step in self.steps.iter_mut().filter(|s| s.output == slot) {
            let fraction = share(step);
            if let Some(shared) = &mut step.shared {
                shared.share = fraction;
                shared.first = first;
                first = false;
            }
        }
    }

    /// A data-movement kernel: folded on constants of either element type, else a step.
    pub fn emit_copy(
        &mut self,
        inputs: &[&Value],
        shape: Vec<usize>,
        layout: Layout,
        kernel: CopyKernel,
    ) -> Result<Value> {
        let consts: Option<Vec<&Tensor>> = inputs.iter().map(|v| v.as_const()).collect();
        if let Some(consts) = consts {
            let all_int = consts
                .iter()
                .all(|t| matches!(t.data(), TensorData::I64(_)));
            if all_int && !consts.is_empty() {
                let data: Vec<Vec<i64>> = consts.iter().map(|t| t.to_i64_vec()).collect();
                let slices: Vec<&[i64]> = data.iter().map(Vec::as_slice).collect();
                let mut out = vec![0i64; self.memory.fold_elements(&shape)?];
                kernel.apply(&slices, &mut out, kernel.fill.map(|f| f as i64));
                return Ok(Value::constant(Tensor::from_i64(shape, out)?));
            }
        }
        self.emit(inputs, shape, layout, Box::new(kernel))
    }

    /// `v` stored in `layout`: the same value when it already is (or is a constant asked to
    /// be plain), else a converting copy.
    pub fn in_layout(&mut self, v: &Value, layout: Layout) -> Result<Value> {
        let rank = v.shape().len();
        if v.layout() == layout || rank < 3 {
            return Ok(match v {
                Value::Dynamic(d) if rank < 3 => Value::Dynamic(Dynamic {
                    layout: Layout::Plain,
                    ..d.clone()
                }),
                _ => v.clone(),
            });
        }
        let shape = v.shape().to_vec();
        let part = CopyPart {
            input: 0,
            src: View::new(0, shape.clone(), v.strides()),
            dst: View::new(0, shape.clone(), layout.strides(&shape)),
        };
        let kernel = CopyKernel {
            parts: vec![part],
            fill: None,
        };
        if let Value::Const(_) = v {
            // Constants stay plain; a channels-last copy of one is a plan constant.
            let src = self.src(v);
            let Src::Const(i) = src else { unreachable!() };
            self.memory.fold_elements(&shape)?;
            let data = self.consts[i].to_f32_vec();
            let mut out = vec![0.0; data.len()];
            kernel.apply(&[&data], &mut out, None);
            self.consts
                .push(Arc::new(Tensor::from_f32(shape.clone(), out)?));
            return Ok(Value::Dynamic(Dynamic {
                src: Src::Const(self.consts.len() - 1),
                shape,
                layout,
            }));
        }
        let src = self.src(v);
        self.push_as(
            LAYOUT_OP.into(),
            vec![src],
            shape,
            layout,
            StepOp::Kernel(Box::new(kernel)),
        )
    }

    /// `v` in the plain (ONNX) layout.
    pub fn plain(&mut self, v: &Value) -> Result<Value> {
        self.in_layout(v, Layout::Plain)
    }
}

/// `v` viewed under another shape with the same element count (reshape of plain storage).
pub(crate) fn reshape_value(v: &Value, shape: Vec<usize>) -> Result<Value> {
    if checked_elements(&shape, "a reshaped tensor")? != element_count(v.shape())? {
        return Err(Error::InvalidModel(format!(
            "cannot reshape {:?} to {shape:?}",
            v.shape()
        )));
    }
    Ok(match v {
        Value::Const(t) => Value::constant(Tensor::clone(t).reshaped(shape)?),
        Value::Dynamic(d) => {
            debug_assert!(d.layout == Layout::Plain || d.shape.len() < 3);
            Value::Dynamic(Dynamic {
                src: d.src,
                shape,
                layout: Layout::Plain,
            })
        }
    })
}
