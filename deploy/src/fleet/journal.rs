//! `<install_root>/fleet.journal.json`: where a fleet rollout stands,
//! written atomically before each change and removed when the rollout ends
//! (completed or rolled back). A rerun after `kill -9` reads it: a rollout
//! that was moving or baking resumes at the wave it was in (instances
//! already moved are not touched again, the wave's bake runs again in full);
//! one that was rolling back finishes the rollback first.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use anyhow::Context;
use gates_core::config::EnvConfig;
use serde::{Deserialize, Serialize};

pub const FLEET_JOURNAL: &str = "fleet.journal.json";

/// What the rollout was doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FleetStep {
    /// Deploying the current wave's instances one by one.
    Moving,
    /// The wave's instances serve; canary and baseline are being compared.
    Baking,
    /// A wave failed: the moved instances go back, newest first.
    RollingBack,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetJournal {
    pub release: String,
    pub tag: String,
    /// Each instance's release before the rollout (its rollback target).
    pub from: BTreeMap<String, Option<String>>,
    /// Instances moved (or being moved) to `release`, in order.
    pub moved: Vec<String>,
    /// The wave in progress (0-based).
    pub wave: usize,
    pub step: FleetStep,
    /// Why the rollout is rolling back.
    #[serde(default)]
    pub reason: Option<String>,
    pub pid: u32,
    pub started_at: String,
    pub updated_at: String,
}

impl FleetJournal {
    pub fn path(env: &EnvConfig) -> PathBuf {
        env.install_root.join(FLEET_JOURNAL)
    }

    pub fn load(env: &EnvConfig) -> anyhow::Result<Option<FleetJournal>> {
        crate::state::read_journal(&Self::path(env))
    }

    /// Writes the journal (atomically) before the change it names.
    pub fn save(&mut self, env: &EnvConfig) -> anyhow::Result<()> {
        self.pid = std::process::id();
        self.updated_at = gates_core::event::now_rfc3339();
        fs::create_dir_all(&env.install_root)
            .with_context(|| format!("creating {}", env.install_root.display()))?;
        crate::state::write_journal(&Self::path(env), self)
    }

    pub fn remove(env: &EnvConfig) -> anyhow::Result<()> {
        crate::state::remove_journal(&Self::path(env), &env.install_root)
    }
}
