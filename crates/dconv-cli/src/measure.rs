//! Timing a session end to end and layer by layer, shared by `bench` and `demo`.

use crate::progress::Progress;
use dconv::runtime::StepProfile;
use dconv::timing::median;
use dconv::{Session, Tensor};
use std::time::{Duration, Instant};

/// One step's figures over several runs.
#[derive(Debug, Clone)]
pub struct LayerTiming {
    /// The step as recorded in the last run (its method may vary between runs under `auto`).
    pub step: StepProfile,
    pub median: Duration,
}

/// End-to-end and per-layer times of a session on one input.
#[derive(Debug, Clone)]
pub struct Measurement {
    pub median: Duration,
    pub min: Duration,
    /// A run's time outside its steps (copying inputs and outputs, finding the plan, handing
    /// the run to the session's threads, and the profile's own records): the median over the
    /// profiled runs of each one's time less its steps' and its zero counting's, so that both
    /// sides of the difference come from the same run (medians of different runs differed by
    /// more than this on a shared host).
    pub outside_steps: Duration,
    pub layers: Vec<LayerTiming>,
    /// The model's outputs in the last timed run (empty when `runs` is 0).
    pub outputs: Vec<(String, Tensor)>,
}

/// Runs `session` `warmup` times, then `runs` plain runs for the end-to-end times and `runs`
/// profiled ones for the per-layer times (profiling measures sparsity outside its timers,
/// which would inflate the end-to-end figure). Steps `progress` once per run.
pub fn measure(
    session: &Session,
    input: &(String, Tensor),
    warmup: usize,
    runs: usize,
    progress: &Progress,
) -> dconv::Result<Measurement> {
    let inputs = [(input.0.as_str(), input.1.clone())];
    for _ in 0..warmup {
        session.run(&inputs)?;
        progress.step();
    }
    let mut totals = Vec::with_capacity(runs);
    let mut outputs = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        outputs = session.run(&inputs)?;
        totals.push(started.elapsed());
        progress.step();
    }
    let mut profiles = Vec::with_capacity(runs);
    let mut outside = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let profile = session.run_profiled(&inputs)?.1;
        let steps = profile.total() + profile.counting;
        outside.push(started.elapsed().saturating_sub(steps));
        profiles.push(profile);
        progress.step();
    }
    let layers = match profiles.last() {
        Some(last) => last
            .steps
            .iter()
            .enumerate()
            .map(|(i, step)| LayerTiming {
                step: step.clone(),
                median: median(
                    &profiles
                        .iter()
                        .filter_map(|p| p.steps.get(i).map(|s| s.time))
                        .collect::<Vec<_>>(),
                ),
            })
            .collect(),
        None => Vec::new(),
    };
    let median_run = median(&totals);
    Ok(Measurement {
        median: median_run,
        min: totals.iter().min().copied().unwrap_or_default(),
        outside_steps: median(&outside),
        layers,
        outputs,
    })
}

/// Milliseconds as a float, for tables and JSON.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
