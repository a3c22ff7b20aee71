//! How dconv times candidates against each other (methods on a layer, say): warm-up runs
//! first, so that packing, page faults and cold caches stay out of the figures; then rounds
//! in which every candidate runs once in turn, so that drift in the machine's speed (other
//! work, clock changes) slows all of them alike and the ratios between them stay true; then
//! the median of each candidate's rounds, which one slow round does not move.

use std::time::{Duration, Instant};

/// How many untimed and timed runs each candidate gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocol {
    /// Untimed runs of each candidate before the first round.
    pub warmup: usize,
    /// Rounds, each timing every candidate once.
    pub rounds: usize,
}

/// Where [`Protocol::time_reporting`] has got to, for progress messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// `candidate`'s warm-up runs are next (told even when there are none).
    WarmUp { candidate: usize },
    /// Round `round` (counted from 0) is next.
    Round { round: usize },
}

/// One candidate's timed runs, in the order they ran.
#[derive(Debug, Clone, PartialEq)]
pub struct Samples<T> {
    /// The wall time of each round's run.
    pub times: Vec<Duration>,
    /// What each round's run returned.
    pub values: Vec<T>,
}

impl<T> Samples<T> {
    /// The median of [`times`](Self::times).
    pub fn median(&self) -> Duration {
        median(&self.times)
    }
}

impl Protocol {
    /// Times `candidates` candidates, `run(i)` running candidate `i` once: each candidate's
    /// warm-up runs in turn, then the rounds. Returns the samples of each candidate, in
    /// candidate order; the first error stops the timing.
    pub fn time<T, E>(
        &self,
        candidates: usize,
        run: impl FnMut(usize) -> Result<T, E>,
    ) -> Result<Vec<Samples<T>>, E> {
        self.time_reporting(candidates, run, |_| {})
    }

    /// [`time`](Self::time), calling `on_stage` before each candidate's warm-up runs and
    /// before each round.
    pub fn time_reporting<T, E>(
        &self,
        candidates: usize,
        mut run: impl FnMut(usize) -> Result<T, E>,
        mut on_stage: impl FnMut(Stage),
    ) -> Result<Vec<Samples<T>>, E> {
        for candidate in 0..candidates {
            on_stage(Stage::WarmUp { candidate });
            for _ in 0..self.warmup {
                run(candidate)?;
            }
        }
        let mut samples: Vec<Samples<T>> = (0..candidates)
            .map(|_| Samples {
                times: Vec::with_capacity(self.rounds),
                values: Vec::with_capacity(self.rounds),
            })
            .collect();
        for round in 0..self.rounds {
            on_stage(Stage::Round { round });
            for (candidate, s) in samples.iter_mut().enumerate() {
                let start = Instant::now();
                let value = run(candidate)?;
                s.times.push(start.elapsed());
                s.values.push(value);
            }
        }
        Ok(samples)
    }
}

/// The median: the lower of the middle two for an even count (a time that was measured,
/// not a mean of two); zero for no samples.
pub fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    match sorted.len() {
        0 => Duration::ZERO,
        n => sorted[(n - 1) / 2],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn ms(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|&v| Duration::from_millis(v)).collect()
    }

    #[test]
    fn warm_ups_come_first_then_rounds_interleave_the_candidates() {
        /// What the protocol did, in order.
        #[derive(Debug, PartialEq)]
        enum Event {
            Told(Stage),
            Ran(usize),
        }
        let protocol = Protocol {
            warmup: 2,
            rounds: 3,
        };
        let events = RefCell::new(Vec::new());
        let samples = protocol
            .time_reporting(
                2,
                |i| {
                    let mut events = events.borrow_mut();
                    events.push(Event::Ran(i));
                    Ok::<_, ()>(events.len())
                },
                |stage| events.borrow_mut().push(Event::Told(stage)),
            )
            .unwrap();
        use Event::{Ran, Told};
        assert_eq!(
            events.into_inner(),
            [
                Told(Stage::WarmUp { candidate: 0 }),
                Ran(0),
                Ran(0),
                Told(Stage::WarmUp { candidate: 1 }),
                Ran(1),
                Ran(1),
                Told(Stage::Round { round: 0 }),
                Ran(0),
                Ran(1),
                Told(Stage::Round { round: 1 }),
                Ran(0),
                Ran(1),
                Told(Stage::Round { round: 2 }),
                Ran(0),
                Ran(1),
            ]
        );
        // Warm-up runs are not counted: the samples are those of the rounds alone (each
        // value is the run's place among the events).
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].values, [8, 11, 14]);
        assert_eq!(samples[1].values, [9, 12, 15]);
        assert!(samples.iter().all(|s| s.times.len() == 3));
    }

    #[test]
    fn warm_up_stages_are_told_even_without_warm_up_runs() {
        let protocol = Protocol {
            warmup: 0,
            rounds: 1,
        };
        let mut stages = Vec::new();
        protocol
            .time_reporting(2, |_| Ok::<_, ()>(()), |stage| stages.push(stage))
            .unwrap();
        assert_eq!(
            stages,
            [
                Stage::WarmUp { candidate: 0 },
                Stage::WarmUp { candidate: 1 },
                Stage::Round { round: 0 },
            ]
        );
    }

    #[test]
    fn the_first_error_stops_the_timing() {
        let protocol = Protocol {
            warmup: 1,
            rounds: 2,
        };
        let mut calls = 0;
        let result = protocol.time(2, |i| {
            calls += 1;
            if calls == 4 {
                Err(format!("candidate {i} failed"))
            } else {
                Ok(())
            }
        });
        assert_eq!(result, Err("candidate 1 failed".to_string()));
        assert_eq!(calls, 4);
    }

    #[test]
    fn median_of_odd_even_and_no_samples() {
        assert_eq!(median(&ms(&[30, 10, 20])), Duration::from_millis(20));
        assert_eq!(median(&ms(&[40, 10, 30, 20])), Duration::from_millis(20));
        assert_eq!(median(&ms(&[7])), Duration::from_millis(7));
        assert_eq!(median(&[]), Duration::ZERO);
        let samples = Samples {
            times: ms(&[5, 1, 3]),
            values: vec![(); 3],
        };
        assert_eq!(samples.median(), Duration::from_millis(3));
    }
}
