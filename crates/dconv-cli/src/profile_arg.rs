//! `--profile PROFILE.json`: the cost profile `auto` picks methods by, shared by the
//! subcommands that run models.

use crate::Failure;
use dconv::conv::select::CostProfile;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct ProfileArg {
    /// The cost profile `auto` picks methods by (JSON from `dconv tune`) [default: the one
    /// measured on the development machine, compiled in].
    #[arg(long, value_name = "PROFILE.json")]
    profile: Option<PathBuf>,
}

impl ProfileArg {
    /// The profile given, or the compiled-in one; an unreadable or invalid file is the
    /// caller's error.
    pub fn load(&self) -> Result<CostProfile, Failure> {
        match &self.profile {
            Some(path) => CostProfile::load(path).map_err(|e| Failure::Usage(e.to_string())),
            None => Ok(CostProfile::default()),
        }
    }
}
