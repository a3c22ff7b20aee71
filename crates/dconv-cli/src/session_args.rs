//! The options every subcommand that runs a model shares: the cost profile `auto` picks
//! methods by, and the memory budget of a plan.

use crate::Failure;
use dconv::conv::select::CostProfile;
use dconv::{Policy, SessionOptions};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct SessionArgs {
    /// The cost profile `auto` picks methods by (JSON from `dconv tune`) [default: the one
    /// measured on the development machine, compiled in].
    #[arg(long, value_name = "PROFILE.json")]
    profile: Option<PathBuf>,
    /// Refuse a model whose plan would need more memory than this (bytes, or with a K, M
    /// or G suffix); under auto, the plan first gets leaner: a layer whose methods do not
    /// all fit prepares only the one with the smallest weights, and methods with large
    /// workspaces are dropped [default: 16G].
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
}
