//! The options every subcommand that runs a model shares: the cost profile `auto` picks
//! methods by, and the memory budget of a plan.

use crate::Failure;
use dconv::conv::select::CostProfile;
use dconv::kernels::Isa;
use dconv::{Policy, Session, SessionOptions};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct SessionArgs {
    /// The cost profile `auto` picks methods by (JSON from `dconv tune`) [default: the one
    /// compiled in for the instruction set this CPU runs, measured on the development
    /// machine].
    #[arg(long, value_name = "PROFILE.json")]
    profile: Option<PathBuf>,
    /// Refuse a model whose plan would need more memory than this (bytes, or with a K, M
    /// or G suffix); under auto, the plan first gets leaner: methods with large workspaces
    /// are dropped, then each layer keeps only its method with the smallest packed weights
    /// (stderr says what was taken out) [default: 16G].
    #[arg(long, value_name = "BYTES", value_parser = parse_max_memory)]
    max_memory: Option<usize>,
}

fn parse_max_memory(text: &str) -> Result<usize, String> {
    dconv::limits::parse_bytes(text).map_err(|e| e.to_string())
}

impl SessionArgs {
    /// Session options with these and `threads`, `policy`; an unreadable or invalid profile
    /// is the caller's error.
    pub fn options(&self, threads: usize, policy: Policy) -> Result<SessionOptions, Failure> {
        let cost_profile = match &self.profile {
            Some(path) => CostProfile::load(path).map_err(|e| Failure::Usage(e.to_string()))?,
            None => CostProfile::default(),
        };
        Ok(SessionOptions {
            threads,
            policy,
            cost_profile,
            max_memory: self.max_memory,
        })
    }

    /// Tells on stderr, as `dconv COMMAND: ...`, which cost profile `auto` picks the
    /// methods of `session` by (nothing under a forced method). Called once the session
    /// has run, so that an error stays the first line of stderr.
    pub fn tell_profile(&self, command: &str, session: &Session) {
        let options = session.options();
        if options.policy == Policy::Auto {
            let profile = describe_profile(self.profile.as_deref(), &options.cost_profile);
            eprintln!("dconv {command}: {profile}");
        }
    }
}

/// Which cost profile `auto` uses, and whether it was measured with the instruction set this
/// CPU runs.
fn describe_profile(path: Option<&Path>, profile: &CostProfile) -> String {
    let isa = Isa::detect();
    let source = match path {
        Some(path) => format!("cost profile {}", path.display()),
        None => "compiled-in cost profile".to_string(),
    };
    match profile.isa {
        Some(measured) if measured == isa => format!("isa {isa}, {source} (measured with {isa})"),
        Some(measured) => format!(
            "isa {isa}, {source} (measured with {measured}; `dconv tune` measures one for this CPU)"
        ),
        None => format!("isa {isa}, {source} (its isa unrecorded)"),
    }
}

/// Tells on stderr, as `dconv COMMAND: ...`, what fitting `--max-memory` took out of the plan
/// for an input of `shape` (nothing when the budget took nothing).
pub fn tell_budget_notes(command: &str, session: &Session, shape: &[usize]) -> Result<(), Failure> {
    for note in session
        .budget_notes(&[shape.to_vec()])
        .map_err(Failure::from)?
    {
        eprintln!("dconv {command}: {note}");
    }
    Ok(())
}
