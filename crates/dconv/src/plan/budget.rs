//! A plan's memory against the session's budget, in one place: as the plan is built, each
//! buffer, folded constant, packed weight and workspace is accounted for before it is
//! allocated ([`Memory`]); once it is whole, its buffers, constants, prepared weights and the
//! one workspace its convolutions (transposed ones too) share must fit together ([`fit`]),
//! else `auto` falls back to a leaner plan.

use super::builder::{Builder, Step, StepOp};
use super::conv_step::ConvStep;
use super::policy::Selection;
use crate::conv::{Conv, ConvTranspose, Method};
use crate::error::{Error, Result};
use crate::limits::checked_elements;
use std::mem::size_of;

/// What a plan being built has taken of its budget so far.
#[derive(Debug)]
pub(crate) struct Memory {
    /// The most bytes the plan's buffers, folded constants, packed weights and workspace
    /// may take.
    budget: usize,
    /// Bytes of the constants folded so far.
    folded_bytes: usize,
    /// Bytes of the weights the convolutions' methods packed so far.
    pub prepared_bytes: usize,
    /// What fitting the memory budget took out of the plan, a line per convolution.
    pub notes: Vec<String>,
}

impl Memory {
    pub fn new(budget: usize) -> Self {
        Memory {
            budget,
            folded_bytes: 0,
            prepared_bytes: 0,
            notes: Vec::new(),
        }
    }

    /// The element count of a run-time tensor of `shape`; one that alone exceeds the budget
    /// is refused.
    pub fn slot_elements(&self, shape: &[usize]) -> Result<usize> {
        let len = checked_elements(shape, "a tensor")?;
        let needed = len.saturating_mul(size_of::<f32>());
        if needed > self.budget {
            return Err(Error::OverBudget {
                what: format!("a tensor of shape {shape:?}"),
                needed,
                budget: self.budget,
            });
        }
        Ok(len)
    }

    /// Accounts for a constant of `shape` about to be folded (at most 8 bytes an element)
    /// and returns its element count; refused past the budget before anything is allocated.
    pub fn fold_elements(&mut self, shape: &[usize]) -> Result<usize> {
        let len = checked_elements(shape, "a folded constant")?;
        let budget = self.budget;
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
        let budget = self.budget;
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

    /// Whether a workspace of `bytes` fits the budget on its own (a layer can ask for far
    /// more scratch than its tensors take: a lowered matrix is `R x S` times its input).
    /// Whether it fits beside the rest of the plan is [`fit`]'s question, once the plan is
    /// whole.
    pub fn scratch_fits(&self, bytes: usize) -> bool {
        bytes <= self.budget
    }

    /// Refuses a workspace `what` of `bytes` that does not fit the budget on its own.
    pub fn check_scratch(&self, what: String, bytes: usize) -> Result<()> {
        if self.scratch_fits(bytes) {
            return Ok(());
        }
        Err(Error::OverBudget {
            what,
            needed: bytes,
            budget: self.budget,
        })
    }

    /// Keeps the prepared methods of a convolution whose workspace fits the budget on its
    /// own; refuses the layer when none fits, before any of them has run.
    pub fn fit_scratch(&self, methods: Vec<Conv>) -> Result<Vec<Conv>> {
        let (fit, over): (Vec<Conv>, Vec<Conv>) = methods
            .into_iter()
            .partition(|conv| self.scratch_fits(conv.scratch_bytes()));
        match over.iter().min_by_key(|conv| conv.scratch_bytes()) {
            Some(smallest) if fit.is_empty() => self.check_scratch(
                format!("the workspace of method {}", smallest.method()),
                smallest.scratch_bytes(),
            ),
            _ => Ok(()),
        }?;
        Ok(fit)
    }
}

/// The most bytes the session's workspace fills over runs of every step, each convolution
/// keeping only the methods whose workspace is at most `limit` bytes (`usize::MAX`: all;
/// see [`ConvStep::kept_within`]). The workspace's buffers grow to the largest need and are
/// never shrunk: its shared floats to the largest layer's of any method (transposed
/// convolutions too), and each method's own scratch to its largest layer's. So the bound
/// is the largest layer's floats plus, per method, its largest own scratch (a type two
/// methods share counts twice).
pub(crate) fn workspace_bytes(steps: &[Step], limit: usize) -> usize {
    let mut kept = [0usize; Method::ALL.len()];
    let mut floats = transposed_steps(steps)
        .map(|t| t.scratch().floats)
        .max()
        .unwrap_or(0);
    for conv in conv_steps(steps).flat_map(|step| step.kept_within(limit)) {
        let need = conv.scratch();
        let slot = &mut kept[conv.method() as usize];
        *slot = (*slot).max(need.kept);
        floats = floats.max(need.floats);
    }
    kept.into_iter().fold(floats, usize::saturating_add)
}

/// The most bytes the convolutions' packed weights and the session's workspace take when
/// each convolution keeps only its methods of workspace at most `limit` bytes.
fn kept_bytes(steps: &[Step], limit: usize) -> usize {
    conv_steps(steps)
        .map(|step| step.prepared_bytes_within(limit))
        .fold(workspace_bytes(steps, limit), usize::saturating_add)
}

/// Refuses a plan whose buffers (each as large as the largest slot it holds), folded
/// constants, prepared weights and workspace exceed `budget` bytes. First, when it is over,
/// drops the prepared methods of largest workspace, and their packed weights ([`shed`]):
/// under a tight budget `auto` plans without the methods whose lowered matrices could fill
/// it (they are the ones a sparse enough input would pick), instead of refusing the model.
/// A forced method is never dropped.
pub(crate) fn fit(
    b: &mut Builder,
    slot_buffer: &[usize],
    buffers: usize,
    budget: usize,
) -> Result<()> {
    let mut largest = vec![0usize; buffers];
    // A slot without a buffer (usize::MAX) is one no step writes.
    for (&buffer, &len) in slot_buffer.iter().zip(&b.slot_lens) {
        if let Some(largest) = largest.get_mut(buffer) {
            *largest = (*largest).max(len);
        }
    }
    let fixed = largest
        .iter()
        .map(|&len| len.saturating_mul(size_of::<f32>()))
        .chain([b.memory.folded_bytes])
        .chain(transposed_steps(&b.steps).map(|t| ConvTranspose::prepared_bytes(t.spec())))
        .fold(0, usize::saturating_add);
    let notes = shed(&mut b.steps, &b.selection, budget.saturating_sub(fixed));
    b.memory.notes.extend(notes);
    let needed = fixed.saturating_add(kept_bytes(&b.steps, usize::MAX));
    if needed > budget {
        return Err(Error::OverBudget {
            what: format!(
                "the plan's {buffers} buffers, folded constants, prepared weights and workspace"
            ),
            needed,
            budget,
        });
    }
    Ok(())
}

/// Drops the prepared methods of largest workspace until the workspace and the packed
/// weights kept fit `allowance` bytes: every method over the largest limit on a method's
/// workspace that fits (or, when none does, all it can), but a forced one and each layer's
/// leanest. The limits are the methods' own workspaces, searched by halving, so planning
/// stays `O(n log n)` in the number of layers, however many a model has. Returns a line per
/// convolution that lost methods, for the user.
fn shed(steps: &mut [Step], selection: &Selection, allowance: usize) -> Vec<String> {
    let mut limits: Vec<usize> = conv_steps(steps)
        .flat_map(|step| step.convs().iter().map(Conv::scratch_bytes))
        .chain([0])
        .collect();
    limits.sort_unstable();
    limits.dedup();
    // What is kept only grows with the limit: the limits that fit come first.
    let fitting = limits.partition_point(|&limit| kept_bytes(steps, limit) <= allowance);
    let limit = limits[fitting.saturating_sub(1)];
    if limit == *limits.last().expect("0 is a limit") {
        return Vec::new();
    }
    let mut notes = Vec::new();
    for step in steps.iter_mut() {
        if let StepOp::Conv(conv) = &mut step.op {
            let dropped = conv.keep_within(limit, selection);
            if !dropped.is_empty() {
                notes.push(format!(
                    "node '{}': dropped {}, whose workspace does not fit the memory budget",
                    step.node,
                    Method::names(&dropped)
                ));
            }
        }
    }
    notes
}

/// The convolution steps, in order.
fn conv_steps(steps: &[Step]) -> impl Iterator<Item = &ConvStep> {
    steps.iter().filter_map(|step| match &step.op {
        StepOp::Conv(conv) => Some(&**conv),
        StepOp::ConvTranspose(_) | StepOp::Kernel(_) => None,
    })
}

/// The transposed convolution steps, in order.
fn transposed_steps(steps: &[Step]) -> impl Iterator<Item = &ConvTranspose> {
    steps.iter().filter_map(|step| match &step.op {
        StepOp::ConvTranspose(conv) => Some(&**conv),
        StepOp::Conv(_) | StepOp::Kernel(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::Workspace;
    use crate::onnx::Model;
    use crate::runtime::planner::{build, Plan};
    use crate::runtime::Policy;

    /// The example model (Conv 1 -> 2, 3x3, pad 1, + ReLU on 4x4) with every method
    /// prepared, under `policy`.
    fn plan(policy: Policy) -> Plan {
        let model = Model::from_bytes(&crate::runtime::example_model(), None).unwrap();
        let selection = Selection {
            policy,
            prepare_every_method: true,
            ..Default::default()
        };
        build(&model, &[vec![1, 1, 4, 4]], selection, None).unwrap()
    }

    /// The example model with `extra` more Conv + Relu pairs after its own
    /// ([`example_chain`](crate::runtime::example::example_chain)), every method prepared:
    /// layers of two workspace sizes.
    fn chain(extra: usize) -> Plan {
        let bytes = crate::runtime::example::example_chain(extra);
        let model = Model::from_bytes(&bytes, None).unwrap();
        let selection = Selection {
            prepare_every_method: true,
            ..Default::default()
        };
        build(&model, &[vec![1, 1, 4, 4]], selection, None).unwrap()
    }

    /// Over a chain of layers, for every allowance between the leanest plan's workspace and
    /// packed weights and the whole one's: the plan fits, and each layer keeps exactly its
    /// methods under the largest limit that fits (found here by a plain scan of every limit).
    #[test]
    fn shedding_keeps_the_methods_under_the_largest_limit_that_fits() {
        let whole = chain(6);
        let (leanest, full) = (
            kept_bytes(&whole.steps, 0),
            kept_bytes(&whole.steps, usize::MAX),
        );
        let limits: Vec<usize> = conv_steps(&whole.steps)
            .flat_map(|step| step.convs().iter().map(Conv::scratch_bytes))
            .collect();
        assert!(leanest < full);
        for allowance in (leanest..=full).step_by((full - leanest) / 40 + 1) {
            let limit = limits
                .iter()
                .copied()
                .filter(|&l| kept_bytes(&whole.steps, l) <= allowance)
                .max()
                .unwrap_or(0);
            let mut plan = chain(6);
            shed(&mut plan.steps, &Selection::default(), allowance);
            let kept = kept_bytes(&plan.steps, usize::MAX);
            assert!(kept <= allowance, "{kept} bytes kept for {allowance}");
            for (shed, whole) in conv_steps(&plan.steps).zip(conv_steps(&whole.steps)) {
                let want: Vec<Method> = whole.kept_within(limit).map(Conv::method).collect();
                assert_eq!(shed.methods().collect::<Vec<_>>(), want, "{allowance}");
            }
        }
    }

    /// Shedding a method frees its packed weights too: the least budget a chain of layers
    /// plans within, every method prepared, is below what the packed weights of every method
    /// and the leanest workspace take together (packing needs the first, running the second
    /// with what is kept of the first), and the plan it gives holds within it.
    #[test]
    fn shedding_counts_the_packed_weights_it_frees() {
        let bytes = crate::runtime::example::example_chain(6);
        let model = Model::from_bytes(&bytes, None).unwrap();
        let selection = Selection {
            prepare_every_method: true,
            ..Default::default()
        };
        let within = |budget| build(&model, &[vec![1, 1, 4, 4]], selection, Some(budget));
        let whole = chain(6);
        let every: usize = conv_steps(&whole.steps)
            .map(|step| step.prepared_bytes_within(usize::MAX))
            .sum();
        let leanest_workspace = workspace_bytes(&whole.steps, 0);
        let (mut refused, mut fits) = (0, every + leanest_workspace + (1 << 20));
        assert!(within(fits).is_ok());
        while fits - refused > 1 {
            let mid = (refused + fits) / 2;
            match within(mid) {
                Ok(_) => fits = mid,
                Err(_) => refused = mid,
            }
        }
        assert!(fits < every + leanest_workspace, "{fits} of {every}");
        let plan = within(fits).unwrap();
        assert!(kept_bytes(&plan.steps, usize::MAX) <= fits);
    }

    fn only_conv(plan: &Plan) -> &ConvStep {
        let mut convs = conv_steps(&plan.steps);
        let conv = convs.next().expect("the example has a Conv");
        assert!(convs.next().is_none());
        conv
    }

    /// One workspace serves every layer and keeps what each method grew: after every method
    /// has run on a dense input, it holds more than any one method's bound, and within the
    /// plan's.
    #[test]
    fn the_workspace_bound_covers_every_method_run_in_turn() {
        let plan = plan(Policy::Auto);
        let conv = only_conv(&plan);
        assert!(conv.convs().len() >= 5, "every modeled method prepared");
        let (input, mut output) = ([1.0f32; 16], [0.0f32; 32]);
        let mut ws = Workspace::default();
        for c in conv.convs() {
            c.run(&input, &mut output, &mut ws).unwrap();
        }
        let largest_one = conv.convs().iter().map(|c| c.scratch_bytes()).max();
        assert!(
            Some(ws.bytes()) > largest_one,
            "{} bytes filled",
            ws.bytes()
        );
        assert!(ws.bytes() <= workspace_bytes(&plan.steps, usize::MAX));
    }

    /// Shedding drops the largest workspaces first and, however tight the budget, leaves
    /// each convolution a method: under `auto` the leanest, under a forced method that one.
    #[test]
    fn shedding_drops_the_largest_workspace_first_and_keeps_a_method() {
        let mut auto = plan(Policy::Auto);
        let full = workspace_bytes(&auto.steps, usize::MAX);
        let scratch = |plan: &Plan| {
            let mut s: Vec<(usize, Method)> = only_conv(plan)
                .convs()
                .iter()
                .map(|c| (c.scratch_bytes(), c.method()))
                .collect();
            s.sort_by_key(|&(bytes, method)| (bytes, method.name()));
            s
        };
        let before = scratch(&auto);
        let (largest, largest_method) = *before.last().unwrap();
        let allowance = kept_bytes(&auto.steps, usize::MAX) - 1;
        shed(&mut auto.steps, &Selection::default(), allowance);
        assert_eq!(scratch(&auto), before[..before.len() - 1]);
        // One layer: the largest shared floats of the methods left, plus their own scratch.
        let left = only_conv(&auto).convs().iter().map(Conv::scratch);
        let floats = left.clone().map(|s| s.floats).max().unwrap_or(0);
        let bound = floats + left.map(|s| s.kept).sum::<usize>();
        assert_eq!(workspace_bytes(&auto.steps, usize::MAX), bound);
        assert!(bound < full && full - bound <= largest, "{bound} of {full}");
        assert!(only_conv(&auto).prepared(largest_method).is_err());

        shed(&mut auto.steps, &Selection::default(), 0);
        assert_eq!(scratch(&auto), before[..1]);

        let forced = Method::SparseWeight;
        let mut fixed = plan(Policy::Force(forced));
        shed(&mut fixed.steps, &Selection::default(), 0);
        let kept: Vec<Method> = only_conv(&fixed).methods().collect();
        assert_eq!(kept, [forced]);
    }
}
