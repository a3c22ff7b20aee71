//! A progress bar that appears only once work has taken more than a second, and only when
//! stderr is a terminal, so that short runs and logs stay quiet.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How long work runs before its progress bar is drawn.
const SHOW_AFTER: Duration = Duration::from_secs(1);

pub struct Progress {
    bar: ProgressBar,
    started: Instant,
    may_show: bool,
}

impl Progress {
    pub fn new(steps: u64, message: impl Into<String>) -> Progress {
        let bar = ProgressBar::with_draw_target(Some(steps), ProgressDrawTarget::hidden());
        if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed}") {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(message.into());
        Progress {
            bar,
            started: Instant::now(),
            may_show: std::io::stderr().is_terminal(),
        }
    }

    /// One step done; draws the bar from now on if the work has been going a while.
    pub fn step(&self) {
        if self.may_show && self.bar.is_hidden() && self.started.elapsed() > SHOW_AFTER {
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
        }
        self.bar.inc(1);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}
