//! The frame of every method's run: the loop over the images of a batch (and the groups of
//! each), and the clock that splits its time into converting and multiplying ([`Timing`]),
//! so that each method says only what its phases do.

use super::{ConvSpec, Timing};
use std::time::{Duration, Instant};

/// Runs `phase`; returns its result and how long it took.
#[inline]
pub(crate) fn timed<R>(phase: impl FnOnce() -> R) -> (R, Duration) {
    let start = Instant::now();
    let result = phase();
    (result, start.elapsed())
}

/// A run's [`Timing`], accumulated phase by phase.
#[derive(Default)]
pub(crate) struct Clock(Timing);

impl Clock {
    /// Runs `phase`, counting its time as converting.
    #[inline]
    pub fn convert<R>(&mut self, phase: impl FnOnce() -> R) -> R {
        let (result, spent) = timed(phase);
        self.0.convert += spent;
        result
    }

    /// Runs `phase`, counting its time as multiplying.
    #[inline]
    pub fn multiply<R>(&mut self, phase: impl FnOnce() -> R) -> R {
        let (result, spent) = timed(phase);
        self.0.multiply += spent;
        result
    }

    /// Runs `phase`, which converts as it multiplies and returns how much of its time went
    /// to converting; the rest counts as multiplying.
    #[inline]
    pub fn interleaved<R>(&mut self, phase: impl FnOnce() -> (R, Duration)) -> R {
        let ((result, converting), spent) = timed(phase);
        self.0.convert += converting;
        self.0.multiply += spent.saturating_sub(converting);
        result
    }

    /// Adds `zeros` to the zeros of the output (which are then known).
    pub fn count_zeros(&mut self, zeros: usize) {
        self.0.output_zeros = Some(self.0.output_zeros.unwrap_or(0) + zeros);
    }

    pub fn timing(self) -> Timing {
        self.0
    }
}

/// Runs `image(input, output, clock)` on each image of the NHWC batch `input` with its share
/// of the NHWC `output`, whose pixels are `pitch` floats apart (see
/// [`Conv::run_into`](super::Conv::run_into)), in order; returns the time and zeros they
/// clocked.
pub(crate) fn over_images(
    spec: &ConvSpec,
    (input, (output, pitch)): (&[f32], (&mut [f32], usize)),
    mut image: impl FnMut(&[f32], &mut [f32], &mut Clock),
) -> Timing {
    let mut clock = Clock::default();
    // Each image's share holds whole pitches but the last image's, which ends at its last
    // pixel's filters.
    for (input, output) in input
        .chunks_exact(spec.height * spec.width * spec.channels)
        .zip(output.chunks_mut(spec.out_pixels() * pitch))
    {
        image(input, output, &mut clock);
    }
    clock.timing()
}

/// [`over_images`], calling `group(input, g, output, clock)` for each group `g` of each
/// image, with the whole image and its whole output.
pub(crate) fn over_groups(
    spec: &ConvSpec,
    (input, output): (&[f32], (&mut [f32], usize)),
    mut group: impl FnMut(&[f32], usize, &mut [f32], &mut Clock),
) -> Timing {
    over_images(spec, (input, output), |image, out, clock| {
        for g in 0..spec.groups {
            group(image, g, out, clock);
        }
    })
}
