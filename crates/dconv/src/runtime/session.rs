//! [`Session`]: runs a [`Model`] with one set of options, planning once per set of input
//! shapes and reusing buffers across runs. A session is `Sync`: several threads may run it
//! at once, each run taking its own scratch buffers from a pool.

use super::builder::{Src, StepOp, Value};
use super::plan::{self, Plan};
use super::policy::Policy;
use crate::conv::Workspace;
use crate::error::{Error, Result};
use crate::onnx::{Dim, Model};
use crate::tensor::{Tensor, TensorData};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// How a session runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionOptions {
    /// Threads of the session's pool; 0 uses rayon's global pool (all cores).
    pub threads: usize,
    /// How each convolution picks its method.
    pub policy: Policy,
    /// The most bytes a plan's buffers and folded constants may take; None: no bound.
    pub max_memory: Option<usize>,
}

/// The buffers of one run, kept for the next.
#[derive(Default)]
struct Scratch {
    buffers: Vec<Vec<f32>>,
    /// The fraction of zeros of each slot, where its producer counted them.
    sparsity: Vec<Option<f64>>,
    workspace: Workspace,
}

/// A model ready to run with fixed options.
pub struct Session<'m> {
    model: &'m Model,
    options: SessionOptions,
    pool: Option<rayon::ThreadPool>,
    plans: Mutex<HashMap<Vec<Vec<usize>>, Arc<Plan>>>,
    scratch: Mutex<Vec<Scratch>>,
}

impl<'m> Session<'m> {
    pub fn new(model: &'m Model, options: SessionOptions) -> Result<Session<'m>> {
        let pool = match options.threads {
            0 => None,
            n => Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build()
                    .map_err(|e| Error::Io {
                        path: "thread pool".into(),
                        message: e.to_string(),
                    })?,
            ),
        };
        Ok(Session {
            model,
            options,
            pool,
            plans: Mutex::new(HashMap::new()),
            scratch: Mutex::new(Vec::new()),
        })
    }

    pub fn model(&self) -> &Model {
        self.model
    }
    pub fn options(&self) -> SessionOptions {
        self.options
    }

    /// Runs the model on named float inputs (every model input exactly once) and returns
    /// the model's outputs, by name, in the model's order.
    pub fn run(&self, inputs: &[(&str, Tensor)]) -> Result<Vec<(String, Tensor)>> {
        let ordered = self.order_inputs(inputs)?;
        let plan = self.plan(&ordered)?;
        let mut scratch = self
            .scratch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .unwrap_or_default();
        let result = match &self.pool {
            Some(pool) => pool.install(|| execute(&plan, &ordered, &mut scratch)),
            None => execute(&plan, &ordered, &mut scratch),
        };
        self.scratch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(scratch);
        result
    }

    /// The methods each convolution of the plan for these input shapes may use, by node.
    pub fn conv_methods(
        &self,
        shapes: &[Vec<usize>],
    ) -> Result<Vec<(String, Vec<crate::conv::Method>)>> {
        let key = shapes.to_vec();
        let plan = self.plan_for(key)?;
        Ok(plan
            .steps
            .iter()
            .filter_map(|s| match &s.op {
                StepOp::Conv(c) => Some((s.node.clone(), c.methods().collect())),
                StepOp::Kernel(_) => None,
            })
            .collect())
    }

    /// The inputs in the model's order, with their shapes checked against the declared ones.
    fn order_inputs<'t>(
        &self,
        inputs: &'t [(&str, Tensor)],
    ) -> Result<Vec<(&'t [f32], Vec<usize>)>> {
        if let Some((name, _)) = inputs
            .iter()
            .find(|(n, _)| !self.model.inputs().iter().any(|i| i.name == *n))
        {
            return Err(Error::InvalidModel(format!(
                "the model has no input '{name}' (inputs: {})",
                self.model
                    .inputs()
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        self.model
            .inputs()
            .iter()
            .map(|declared| {
                let (_, tensor) = inputs
                    .iter()
                    .find(|(n, _)| *n == declared.name)
                    .ok_or_else(|| {
                        Error::InvalidModel(format!("input '{}' was not given", declared.name))
                    })?;
                let TensorData::F32(data) = tensor.data() else {
                    return Err(Error::Unsupported(format!(
                        "input '{}' must be float",
                        declared.name
                    )));
                };
                if let Some(dims) = &declared.shape {
                    let fits = dims.len() == tensor.shape().len()
                        && dims.iter().zip(tensor.shape()).all(|(d, &a)| match d {
                            Dim::Fixed(f) => *f == a,
                            Dim::Dynamic(_) => true,
                        });
                    if !fits {
                        return Err(Error::ShapeMismatch {
                            tensor: declared.name.clone(),
                            expected: describe(dims),
                            actual: tensor.shape().to_vec(),
                        });
                    }
                }
                Ok((data.as_slice(), tensor.shape().to_vec()))
            })
            .collect()
    }

    fn plan(&self, inputs: &[(&[f32], Vec<usize>)]) -> Result<Arc<Plan>> {
        self.plan_for(inputs.iter().map(|(_, s)| s.clone()).collect())
    }

    fn plan_for(&self, key: Vec<Vec<usize>>) -> Result<Arc<Plan>> {
        let mut plans = self.plans.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(plan) = plans.get(&key) {
            return Ok(plan.clone());
        }
        let build = || {
            plan::build(
                self.model,
                &key,
                self.options.policy,
                self.options.max_memory,
            )
        };
        let plan = Arc::new(match &self.pool {
            Some(pool) => pool.install(build)?,
            None => build()?,
        });
        plans.insert(key, plan.clone());
        Ok(plan)
    }
}

fn describe(dims: &[Dim]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|d| match d {
            Dim::Fixed(v) => v.to_string(),
            Dim::Dynamic(name) if name.is_empty() => "?".into(),
            Dim::Dynamic(name) => name.clone(),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

fn execute(
    plan: &Plan,
    inputs: &[(&[f32], Vec<usize>)],
    scratch: &mut Scratch,
) -> Result<Vec<(String, Tensor)>> {
    let Scratch {
        buffers,
        sparsity,
        workspace,
    } = scratch;
    buffers.resize_with(plan.buffers, Vec::new);
    sparsity.resize(plan.slot_buffer.len(), None);
    for (&slot, (data, _)) in plan.inputs.iter().zip(inputs) {
        let buffer = &mut buffers[plan.slot_buffer[slot]];
        buffer.clear();
        buffer.extend_from_slice(data);
        sparsity[slot] = None;
    }
    for step in &plan.steps {
        let out_buffer = plan.slot_buffer[step.output];
        let mut out = std::mem::take(&mut buffers[out_buffer]);
        out.resize(step.out_len, 0.0);
        let read: Vec<&[f32]> = step
            .inputs
            .iter()
            .map(|src| match src {
                Src::Slot(s) => buffers[plan.slot_buffer[*s]].as_slice(),
                Src::Const(c) => plan.consts[*c].as_f32().unwrap_or_default(),
            })
            .collect();
        let counted = match &step.op {
            StepOp::Kernel(kernel) => kernel.run(&read, &mut out),
            StepOp::Conv(conv) => {
                let known = match step.inputs[0] {
                    Src::Slot(s) => sparsity[s],
                    Src::Const(_) => None,
                };
                conv.run(read[0], known, &mut out, workspace)
                    .map_err(|e| Error::Node {
                        node: step.node.clone(),
                        op: "Conv".into(),
                        source: Box::new(e),
                    })?
            }
        };
        drop(read);
        buffers[out_buffer] = out;
        sparsity[step.output] = counted;
    }
    plan.outputs
        .iter()
        .map(|(name, value)| {
            let tensor = match value {
                Value::Const(t) => Tensor::clone(t),
                Value::Dynamic(d) => {
                    let data = match d.src {
                        Src::Slot(s) => buffers[plan.slot_buffer[s]].clone(),
                        Src::Const(c) => plan.consts[c].to_f32_vec(),
                    };
                    Tensor::from_f32(d.shape.clone(), data)?
                }
            };
            Ok((name.clone(), tensor))
        })
        .collect()
}
