//! [`Session`]: runs a [`Model`] with one set of options, planning once per set of input
//! shapes and reusing buffers across runs. A session is `Sync`: several threads may run it
//! at once, each run taking its own scratch buffers from a pool.

use super::analysis::{LayerAnalysis, OnLayer, Probe};
use super::planner::{self, Plan};
use super::profile::{Profile, StepProfile};
use crate::conv::select::CostProfile;
use crate::conv::{Method, Workspace};
use crate::error::{Error, Result};
use crate::kernels::aligned::CacheAligned;
use crate::onnx::{Dim, Model};
use crate::plan::builder::{Src, Step, StepOp, Value};
use crate::plan::conv_step::zero_fraction;
use crate::plan::policy::{Policy, Selection};
use crate::tensor::{AsTensorView, Tensor};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How a session runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionOptions {
    /// Threads of the session's pool; 0 uses rayon's global pool (all cores).
    pub threads: usize,
    /// How each convolution picks its method.
    pub policy: Policy,
    /// The cost model `auto` picks by (default: the compiled-in profile).
    pub cost_profile: CostProfile,
    /// The most bytes a plan's buffers, folded constants, prepared weights and workspace
    /// (per method, the most any layer fills) may take; None:
    /// [`crate::limits::DEFAULT_MAX_MEMORY`]. Under [`Policy::Auto`], a tight budget drops
    /// the methods with the largest workspaces, then plans each convolution with only its
    /// method of smallest packed weights, before it refuses a model.
    pub max_memory: Option<usize>,
}

/// The buffers of one run, kept for the next.
#[derive(Default)]
struct Scratch {
    /// Each buffer keeps the memory of the largest slot it has held, so that a run does not
    /// zero again what the previous run grew, and starts on a cache line, so that whole-vector
    /// loads and stores of channels-last rows do not straddle two lines.
    buffers: Vec<CacheAligned>,
    /// The fraction of zeros of each slot, where its producer counted them.
    sparsity: Vec<Option<f64>>,
    workspace: Workspace,
}

/// The model a session runs: borrowed from the caller, or shared with it (a session that
/// must own what it runs, such as one held by Python).
enum SessionModel<'m> {
    Borrowed(&'m Model),
    Shared(Arc<Model>),
}

impl std::ops::Deref for SessionModel<'_> {
    type Target = Model;
    fn deref(&self) -> &Model {
        match self {
            SessionModel::Borrowed(model) => model,
            SessionModel::Shared(model) => model,
        }
    }
}

/// A model ready to run with fixed options.
pub struct Session<'m> {
    model: SessionModel<'m>,
    options: SessionOptions,
    pool: Option<rayon::ThreadPool>,
    plans: Mutex<HashMap<Vec<Vec<usize>>, Arc<Plan>>>,
    scratch: Mutex<Vec<Scratch>>,
}

impl<'m> Session<'m> {
    /// A session that borrows `model`.
    pub fn new(model: &'m Model, options: SessionOptions) -> Result<Session<'m>> {
        Session::with_model(SessionModel::Borrowed(model), options)
    }

    /// A session that shares ownership of `model`, so that it can outlive the caller's
    /// borrow (a session held by another language's runtime, or moved to another thread).
    pub fn shared(model: Arc<Model>, options: SessionOptions) -> Result<Session<'static>> {
        Session::with_model(SessionModel::Shared(model), options)
    }

    fn with_model(model: SessionModel<'m>, options: SessionOptions) -> Result<Session<'m>> {
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
        &self.model
    }
    pub fn options(&self) -> SessionOptions {
        self.options
    }

    /// Runs the model on named float inputs (every model input exactly once) and returns
    /// the model's outputs, by name, in the model's order.
    /// Inputs are [`Tensor`]s or borrowed [`TensorView`](crate::tensor::TensorView)s.
    pub fn run(&self, inputs: &[(&str, impl AsTensorView)]) -> Result<Vec<(String, Tensor)>> {
        self.run_recording(inputs, None)
    }

    /// [`run`](Self::run), also timing every step and recording what each convolution saw
    /// and chose. Measuring the input sparsity of every step costs a pass over each input,
    /// outside the timed part.
    pub fn run_profiled(
        &self,
        inputs: &[(&str, impl AsTensorView)],
    ) -> Result<(Vec<(String, Tensor)>, Profile)> {
        let mut profile = Profile::default();
        let outputs = self.run_recording(inputs, Some(&mut profile))?;
        Ok((outputs, profile))
    }

    fn run_recording(
        &self,
        inputs: &[(&str, impl AsTensorView)],
        profile: Option<&mut Profile>,
    ) -> Result<Vec<(String, Tensor)>> {
        let ordered = self.order_inputs(inputs)?;
        let plan = self.plan(&ordered)?;
        let mut scratch = self
            .scratch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .unwrap_or_default();
        let result = self.in_pool(|| execute(&plan, &ordered, &mut scratch, profile, None));
        self.scratch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(scratch);
        result
    }

    /// Runs the model once with every method prepared, timing each method `runs` times on
    /// the input each convolution actually sees; one row per convolution, in run order.
    pub fn analyze(
        &self,
        inputs: &[(&str, impl AsTensorView)],
        runs: usize,
    ) -> Result<Vec<LayerAnalysis>> {
        self.analyze_reporting(inputs, runs, &mut |_, _, _| {})
    }

    /// [`analyze`](Self::analyze), calling `on_layer` as each convolution has been timed (a
    /// large model takes minutes: a caller can show how far it is).
    pub fn analyze_reporting(
        &self,
        inputs: &[(&str, impl AsTensorView)],
        runs: usize,
        on_layer: OnLayer,
    ) -> Result<Vec<LayerAnalysis>> {
        let ordered = self.order_inputs(inputs)?;
        let shapes: Vec<Vec<usize>> = ordered.iter().map(|(_, s)| s.clone()).collect();
        let selection = Selection {
            prepare_every_method: true,
            ..self.selection()
        };
        self.in_pool(|| {
            let plan = planner::build(&self.model, &shapes, selection, self.options.max_memory)?;
            let convs = plan
                .steps
                .iter()
                .filter(|s| matches!(s.op, StepOp::Conv(_)))
                .count();
            let mut probe = Probe::new(runs, selection, convs, on_layer);
            execute(
                &plan,
                &ordered,
                &mut Scratch::default(),
                None,
                Some(&mut probe),
            )?;
            Ok(probe.layers)
        })
    }

    fn selection(&self) -> Selection {
        Selection {
            policy: Policy::Auto,
            profile: self.options.cost_profile,
            prepare_every_method: false,
            lean: false,
        }
    }

    /// Runs `work` in the session's pool.
    fn in_pool<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        match &self.pool {
            Some(pool) => pool.install(work),
            None => work(),
        }
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
                StepOp::ConvTranspose(_) | StepOp::Kernel(_) => None,
            })
            .collect())
    }

    /// What fitting the memory budget took out of the plan for these input shapes: a line
    /// per convolution that prepares or keeps fewer methods than `auto` would pick from
    /// (empty when nothing was taken out).
    pub fn budget_notes(&self, shapes: &[Vec<usize>]) -> Result<Vec<String>> {
        Ok(self.plan_for(shapes.to_vec())?.budget_notes.clone())
    }

    /// The inputs in the model's order, with their shapes checked against the declared ones.
    fn order_inputs<'t>(
        &self,
        inputs: &'t [(&str, impl AsTensorView)],
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
                let Some(tensor) = tensor.tensor_view() else {
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
                Ok((tensor.data(), tensor.shape().to_vec()))
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
        let selection = Selection {
            policy: self.options.policy,
            ..self.selection()
        };
        let budget = self.options.max_memory;
        let build =
            |selection| self.in_pool(|| planner::build(&self.model, &key, selection, budget));
        // Under `auto`, a budget too tight for every method a convolution may pick gets the
        // lean plan, one method per convolution, rather than a refusal. (Thinning layers one
        // by one as they are planned would depend on their order: the first layers would
        // keep all, and a larger budget could refuse a model that a smaller one runs.)
        let plan = match build(selection) {
            Err(e) if over_budget(&e) && selection.policy == Policy::Auto => build(Selection {
                lean: true,
                ..selection
            })?,
            plan => plan?,
        };
        let plan = Arc::new(plan);
        plans.insert(key, plan.clone());
        Ok(plan)
    }
}

/// Whether `e` is a memory budget's refusal, in whichever node.
fn over_budget(e: &Error) -> bool {
    match e {
        Error::OverBudget { .. } => true,
        Error::Node { source, .. } => over_budget(source),
        _ => false,
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

fn step_profile(
    step: &Step,
    method: Option<Method>,
    input_sparsity: f64,
    time: Duration,
) -> StepProfile {
    let (weight_sparsity, macs) = match &step.op {
        StepOp::Conv(conv) => (Some(conv.weight_sparsity()), conv.macs()),
        StepOp::ConvTranspose(conv) => (None, conv.spec().macs().unwrap_or(0)),
        StepOp::Kernel(_) => (None, 0),
    };
    StepProfile {
        name: step.node.clone(),
        op: step.op_type.clone(),
        method,
        input_sparsity,
        weight_sparsity,
        macs,
        time,
    }
}

/// Runs `plan`; a `profile` records each step, a `probe` sees each convolution's input
/// before it runs.
fn execute(
    plan: &Plan,
    inputs: &[(&[f32], Vec<usize>)],
    scratch: &mut Scratch,
    mut profile: Option<&mut Profile>,
    mut probe: Option<&mut Probe>,
) -> Result<Vec<(String, Tensor)>> {
    let Scratch {
        buffers,
        sparsity,
        workspace,
    } = scratch;
    buffers.resize_with(plan.buffers, CacheAligned::default);
    sparsity.resize(plan.slot_buffer.len(), None);
    for (&slot, (data, _)) in plan.inputs.iter().zip(inputs) {
        let b = plan.slot_buffer[slot];
        buffers[b].reset(data.len());
        buffers[b].as_mut_slice().copy_from_slice(data);
        sparsity[slot] = None;
    }
    for step in &plan.steps {
        let out_buffer = plan.slot_buffer[step.output];
        let mut whole = std::mem::take(&mut buffers[out_buffer]);
        whole.reset(step.out_len);
        let out = whole.as_mut_slice();
        let read: Vec<&[f32]> = step
            .inputs
            .iter()
            .map(|src| match src {
                Src::Slot(s) => buffers[plan.slot_buffer[*s]].as_slice(),
                Src::Const(c) => plan.consts[*c].as_f32().unwrap_or_default(),
            })
            .collect();
        let known = match step.inputs.first() {
            Some(Src::Slot(s)) => sparsity[*s],
            _ => None,
        };
        let counting = profile.as_ref().map(|_| Instant::now());
        let input_sparsity = profile
            .as_ref()
            .map(|_| known.unwrap_or_else(|| read.first().map_or(0.0, |r| zero_fraction(r))));
        let started = profile.as_ref().map(|_| Instant::now());
        let in_step = |e| Error::Node {
            node: step.node.clone(),
            op: step.op_type.clone(),
            source: Box::new(e),
        };
        let (counted, method) = match &step.op {
            StepOp::Kernel(kernel) => {
                let counted = kernel.run(&read, out);
                let rearranged = || known.filter(|_| kernel.rearranges(&read, out.len()));
                (counted.or_else(rearranged), None)
            }
            StepOp::ConvTranspose(conv) => {
                let zeros = conv.run(read[0], out, workspace).map_err(in_step)?;
                (Some(zeros as f64 / out.len().max(1) as f64), None)
            }
            StepOp::Conv(conv) => {
                // A second input is the residual the layer adds.
                let residual = read.get(1).copied();
                // Its channels of a Concat, in place, or an output of its own.
                let (out, pitch) = match step.shared.and_then(|s| s.channels) {
                    Some(c) => (&mut out[c.start..c.start + c.len], c.pitch),
                    None => (out, conv.filters()),
                };
                let done = probe
                    .as_deref_mut()
                    .map_or(Ok(()), |p| {
                        let input = (read[0], known);
                        let out = (&mut *out, pitch);
                        p.before_conv(&step.node, conv, input, residual, out, workspace)
                    })
                    .and_then(|()| {
                        conv.run((read[0], known), residual, (&mut *out, pitch), workspace)
                    })
                    .map_err(in_step)?;
                (done.output_sparsity, Some(done.method))
            }
        };
        if let (Some(profile), Some(started), Some(input_sparsity), Some(counting)) =
            (profile.as_deref_mut(), started, input_sparsity, counting)
        {
            profile.counting += started.saturating_duration_since(counting);
            profile.steps.push(step_profile(
                step,
                method,
                input_sparsity,
                started.elapsed(),
            ));
        }
        drop(read);
        buffers[out_buffer] = whole;
        // A slot several steps write has the zeros of each, weighed by its share.
        sparsity[step.output] = match step.shared {
            None => counted,
            Some(s) if s.first => counted.map(|f| f * s.share),
            Some(s) => sparsity[step.output]
                .zip(counted)
                .map(|(p, f)| p + f * s.share),
        };
    }
    plan.outputs
        .iter()
        .map(|(name, value)| {
            let tensor = match value {
                Value::Const(t) => Tensor::clone(t),
                Value::Dynamic(d) => {
                    let data = match d.src {
                        Src::Slot(s) => buffers[plan.slot_buffer[s]].as_slice().to_vec(),
                        Src::Const(c) => plan.consts[c].to_f32_vec(),
                    };
                    Tensor::from_f32(d.shape.clone(), data)?
                }
            };
            Ok((name.clone(), tensor))
        })
        .collect()
}
