//! A plan's memory against the session's budget: its buffers, folded constants, prepared
//! weights and the one workspace its convolutions share, and, when that is too much, the
//! leaner plan that `auto` falls back to.

use super::builder::{Builder, Step, StepOp};
use super::policy::Selection;
use crate::conv::Method;
use crate::error::{Error, Result};
use std::mem::size_of;

/// The most bytes the session's workspace fills over runs of every step. Each method's
/// buffers grow to the largest layer that method runs and are never shrunk, so the bound
/// is, per method, its largest layer's workspace, summed over methods (a buffer two methods
/// share counts twice).
pub(crate) fn workspace_bytes(steps: &[Step]) -> usize {
    Method::ALL
        .iter()
        .map(|&method| {
            conv_steps(steps)
                .filter_map(|step| step.prepared(method).ok())
                .map(|conv| conv.scratch_bytes())
                .max()
                .unwrap_or(0)
        })
        .fold(0, usize::saturating_add)
}

/// Refuses a plan whose buffers (each as large as the largest slot it holds), folded
/// constants, prepared weights and workspace exceed `budget` bytes. First, while it is over,
/// drops the prepared method with the largest workspace of any convolution that keeps
/// another: under a tight budget `auto` plans without the methods whose lowered matrices
/// could fill it (they are the ones a sparse enough input would pick), instead of refusing
/// the model. A forced method is never dropped.
pub(crate) fn fit(
    b: &mut Builder,
    slot_buffer: &[usize],
    buffers: usize,
    budget: usize,
) -> Result<()> {
    let mut largest = vec![0usize; buffers];
    for (&buffer, &len) in slot_buffer.iter().zip(&b.slot_lens) {
        largest[buffer] = largest[buffer].max(len);
    }
    let fixed = largest
        .iter()
        .map(|&len| len.saturating_mul(size_of::<f32>()))
        .chain([b.folded_bytes, b.prepared_bytes])
        .fold(0, usize::saturating_add);
    shed(&mut b.steps, &b.selection, budget.saturating_sub(fixed));
    let needed = fixed.saturating_add(workspace_bytes(&b.steps));
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

/// Drops spare prepared methods, the largest workspace first, until the workspace fits
/// `allowance` bytes or no convolution has one to spare.
fn shed(steps: &mut [Step], selection: &Selection, allowance: usize) {
    while workspace_bytes(steps) > allowance {
        if !drop_largest_spare(steps, selection) {
            break;
        }
    }
}

/// Drops the spare prepared method with the largest workspace; false when no convolution
/// has one.
fn drop_largest_spare(steps: &mut [Step], selection: &Selection) -> bool {
    let spare = conv_steps(steps)
        .enumerate()
        .flat_map(|(i, step)| {
            step.spare()
                .map(move |conv| (i, conv.method(), conv.scratch_bytes()))
        })
        .max_by_key(|&(i, _, bytes)| (bytes, i));
    let Some((i, method, _)) = spare else {
        return false;
    };
    let step = steps
        .iter_mut()
        .filter_map(|step| match &mut step.op {
            StepOp::Conv(conv) => Some(conv),
            StepOp::Kernel(_) => None,
        })
        .nth(i)
        .expect("the index of a convolution step");
    step.drop_method(method, selection);
    true
}

/// The convolution steps, in order.
fn conv_steps(steps: &[Step]) -> impl Iterator<Item = &crate::ops::conv::ConvStep> {
    steps.iter().filter_map(|step| match &step.op {
        StepOp::Conv(conv) => Some(&**conv),
        StepOp::Kernel(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::Workspace;
    use crate::onnx::Model;
    use crate::runtime::plan::{build, Plan};
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

    fn only_conv(plan: &Plan) -> &crate::ops::conv::ConvStep {
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
        assert!(ws.bytes() <= workspace_bytes(&plan.steps));
    }

    /// Shedding drops the largest workspaces first and, however tight the budget, leaves
    /// each convolution a method: under `auto` the leanest, under a forced method that one.
    #[test]
    fn shedding_drops_the_largest_workspace_first_and_keeps_a_method() {
        let mut auto = plan(Policy::Auto);
        let full = workspace_bytes(&auto.steps);
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
        shed(&mut auto.steps, &Selection::default(), full - 1);
        assert_eq!(scratch(&auto), before[..before.len() - 1]);
        assert_eq!(workspace_bytes(&auto.steps), full - largest);
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
