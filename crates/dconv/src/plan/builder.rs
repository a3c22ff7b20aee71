//! [`Builder`]: what operators use while a plan is built — values (constants or tensors
//! computed at run time), slots for the latter, and the steps that fill them. Operators
//! whose inputs are all constants are evaluated on the spot (constant folding).

use super::conv_step::ConvStep;
use super::copy::{CopyKernel, CopyPart, View};
use super::kernel::Kernel;
use super::layout::{plain_strides, Layout};
use super::policy::Selection;
use crate::conv::{Conv, ConvSpec, ConvTranspose, Method};
use crate::error::{Error, Result};
use crate::limits::{checked_elements, MAX_FOLDED_BYTES};
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
/// `output`.
pub(crate) struct Step {
    pub node: String,
    /// The ONNX operator of the node, or [`LAYOUT_OP`] for a layout conversion.
    pub op_type: String,
    pub inputs: Vec<Src>,
    pub output: usize,
    pub out_len: usize,
    pub op: StepOp,
}

pub(crate) struct Builder {
    /// How convolutions prepare and pick their methods.
    pub selection: Selection,
    /// The most bytes the plan's buffers and folded constants may take, when bounded.
    pub budget: Option<usize>,
    /// Bytes of the constants folded so far.
    pub folded_bytes: usize,
    /// Bytes of the weights the convolutions' methods packed so far.
    pub prepared_bytes: usize,
    pub consts: Vec<Arc<Tensor>>,
    /// Element count of each slot.
    pub slot_lens: Vec<usize>,
    pub steps: Vec<Step>,
    /// The node being planned, named in the steps it adds.
    pub node: String,
    /// Its operator, recorded in the steps it adds.
    pub op_type: String,
    /// What fitting the memory budget took out of the plan, a line per convolution.
    pub budget_notes: Vec<String>,
}

/// The operator name of the steps that convert between the plain and channels-last layouts.
pub(crate) const LAYOUT_OP: &str = "Layout";

impl Builder {
    pub fn new(selection: Selection, budget: Option<usize>) -> Self {
        Builder {
            selection,
            budget,
            folded_bytes: 0,
            prepared_bytes: 0,
            consts: Vec::new(),
            slot_lens: Vec::new(),
            steps: Vec::new(),
            node: String::new(),
            op_type: String::new(),
            budget_notes: Vec::new(),
        }
    }

    /// A slot for a run-time tensor of `shape`; one that alone exceeds the budget is refused.
    pub fn new_slot(&mut self, shape: &[usize]) -> Result<usize> {
        let len = checked_elements(shape, "a tensor")?;
        if let Some(budget) = self.budget {
            let needed = len.saturating_mul(size_of::<f32>());
            if needed > budget {
                return Err(Error::OverBudget {
                    what: format!("a tensor of shape {shape:?}"),
                    needed,
                    budget,
                });
            }
        }
        self.slot_lens.push(len);
        Ok(self.slot_lens.len() - 1)
    }

    /// Accounts for a constant of `shape` about to be folded (at most 8 bytes an element)
    /// and returns its element count; refused past the budget, or past
    /// [`MAX_FOLDED_BYTES`] without one, before anything is allocated.
    pub fn fold_elements(&mut self, shape: &[usize]) -> Result<usize> {
        let len = checked_elements(shape, "a folded constant")?;
        let budget = self.budget.unwrap_or(MAX_FOLDED_BYTES);
        let needed = len
            .saturating_mul(size_of::<i64>())
            .saturating_add(self.folded_bytes);
        if needed > budget {
            return Err(Error::OverBudget {
                what: format!("folding constants (the last of shape {shape:?})"),
                needed,
                budget,
            });
        }
        self.folded_bytes = needed;
        Ok(len)
    }

    /// Accounts for `bytes` of weights a convolution method is about to pack: a method can
    /// blow small weights up (a depthwise filter padded to a block of output channels), so
    /// what it packs counts against the budget before it is allocated.
    pub fn account_prepared(&mut self, what: String, bytes: usize) -> Result<()> {
        let budget = self.budget.unwrap_or(MAX_FOLDED_BYTES);
        let needed = self
            .folded_bytes
            .saturating_add(self.prepared_bytes)
            .saturating_add(bytes);
        if needed > budget {
            return Err(Error::OverBudget {
                what,
                needed,
                budget,
            });
        }
        self.prepared_bytes += bytes;
        Ok(())
    }

    /// The methods to prepare for a convolution with `nonzeros` non-zero weights, their
    /// packed weights accounted for: those the selection may pick, or in a lean plan the
    /// one of them that packs the fewest bytes (a pruned layer's sparse weights, say).
    pub fn account_methods(
        &mut self,
        spec: &ConvSpec,
        weight_sparsity: f64,
        nonzeros: usize,
    ) -> Result<Vec<Method>> {
        let mut methods = self.selection.methods(spec, weight_sparsity);
        if self.selection.lean && methods.len() > 1 {
            let leanest = methods
                .iter()
                .copied()
                .min_by_key(|m| m.prepared_bytes(spec, nonzeros))
                .expect("more than one method");
            self.budget_notes.push(format!(
                "node '{}': prepared {leanest} alone, of {}, to fit the memory budget",
                self.node,
                Method::names(&methods)
            ));
            methods = vec![leanest];
        }
        let bytes = Method::prepared_bytes_of(&methods, spec, nonzeros);
        self.account_prepared(format!("preparing {}", Method::names(&methods)), bytes)?;
        Ok(methods)
    }

    /// Keeps the prepared methods of a convolution whose workspace fits the budget on its
    /// own (a layer can ask for far more scratch than its tensors take: a lowered matrix is
    /// `R x S` times its input); refuses the layer when none fits, before any of them has
    /// run. (Whether the kept ones fit beside the rest of the plan is
    /// [`budget::fit`](super::budget::fit)'s question, once the plan is whole.)
    pub fn fit_scratch(&self, methods: Vec<Conv>) -> Result<Vec<Conv>> {
        let budget = self.budget.unwrap_or(usize::MAX);
        let (fit, over): (Vec<Conv>, Vec<Conv>) = methods
            .into_iter()
            .partition(|conv| conv.scratch_bytes() <= budget);
        if !fit.is_empty() {
            return Ok(fit);
        }
        let smallest = over
            .iter()
            .min_by_key(|conv| conv.scratch_bytes())
            .expect("a convolution prepares at least one method");
        Err(Error::OverBudget {
            what: format!("the workspace of method {}", smallest.method()),
            needed: smallest.scratch_bytes(),
            budget,
        })
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
            let len = self.fold_elements(&shape)?;
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
        });
        Ok(Value::Dynamic(Dynamic {
            src: Src::Slot(output),
            shape,
            layout,
        }))
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
                let mut out = vec![0i64; self.fold_elements(&shape)?];
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
            self.fold_elements(&shape)?;
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

/// Row-major strides, re-exported for operators.
pub(crate) fn strides_of(shape: &[usize]) -> Vec<isize> {
    plain_strides(shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lean plan prepares, of a pruned layer's methods, the one with the smallest packed
    /// weights, and says so; a plain one prepares all of them, or refuses the layer.
    #[test]
    fn a_lean_plan_prepares_the_leanest_method() {
        let spec = ConvSpec::new(512, 30, 30, 512, [3, 3]).with_padding([1; 4]);
        let nonzeros = spec.weight_len().unwrap() / 10;
        let auto = Selection::default();
        let methods = auto.methods(&spec, 0.9);
        assert!(methods.len() > 1, "{methods:?}");
        let bytes = |m: Method| m.prepared_bytes(&spec, nonzeros);
        let leanest = methods.iter().copied().min_by_key(|&m| bytes(m)).unwrap();
        let all = Method::prepared_bytes_of(&methods, &spec, nonzeros);
        assert!(bytes(leanest) < all);

        let mut plain = Builder::new(auto, Some(all));
        assert_eq!(
            plain.account_methods(&spec, 0.9, nonzeros).unwrap(),
            methods
        );
        assert_eq!(plain.prepared_bytes, all);
        assert!(plain.budget_notes.is_empty());
        let mut short = Builder::new(auto, Some(all - 1));
        assert!(short.account_methods(&spec, 0.9, nonzeros).is_err());

        let lean = Selection { lean: true, ..auto };
        let mut thin = Builder::new(lean, Some(bytes(leanest)));
        assert_eq!(
            thin.account_methods(&spec, 0.9, nonzeros).unwrap(),
            [leanest]
        );
        assert_eq!(thin.prepared_bytes, bytes(leanest));
        assert_eq!(thin.budget_notes.len(), 1);
        let mut over = Builder::new(lean, Some(bytes(leanest) - 1));
        assert!(over.account_methods(&spec, 0.9, nonzeros).is_err());
    }
}
