//! Deploy's records in the install root, both written atomically
//! (`fsutil::write_atomic`) and only while the environment lock is held:
//!
//! - `releases.json` ([`ReleasesState`], shared with rollback and monitor
//!   through `gates_core::release`): each installed release's state
//!   (`installed`, `healthy`, `unverified` (deployed with
//!   `--skip-health-check`), `failed`, `rolled-back`, `quarantined`) and the
//!   last known-good release. A failed, rolled-back or quarantined release is
//!   never deployed again nor chosen as a switch-back target.
//! - `deploy.journal.json`: the step an in-progress deploy is at, written
//!   before each step and removed when the deploy ends. A rerun after a crash
//!   (`kill -9`) reads it to report where the previous run stopped and to
//!   switch back to the right release if it fails.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use gates_core::config::EnvConfig;
use gates_core::fsutil::write_atomic;
use serde::{Deserialize, Serialize};

pub use gates_core::release::{ReleaseRecord, ReleasesState, STATE_FILE};

pub const JOURNAL_FILE: &str = gates_core::install::DEPLOY_JOURNAL;

fn now() -> String {
    gates_core::event::now_rfc3339()
}

/// The in-progress deploy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Journal {
    pub release: String,
    pub tag: String,
    /// The release serving before this deploy (the switch-back target).
    pub from: Option<String>,
    pub step: String,
    pub pid: u32,
    pub started_at: String,
    pub updated_at: String,
    #[serde(default)]
    pub backup: Option<PathBuf>,
    /// Versions this deploy (and any interrupted deploy it continues) applied.
    #[serde(default)]
    pub migrations_applied: Vec<i64>,
    /// The schema version before the first migration of this deploy (or of
    /// the interrupted deploy it took over): where a switch-back reverts to.
    #[serde(default)]
    pub pre_schema_version: Option<i64>,
}

impl Journal {
    pub fn path(env: &EnvConfig) -> PathBuf {
        env.install_root.join(JOURNAL_FILE)
    }

    /// The journal an interrupted deploy left behind, if any. An unreadable
    /// one is reported as an error (it never is, being written atomically).
    pub fn load(env: &EnvConfig) -> anyhow::Result<Option<Journal>> {
        let path = Self::path(env);
        match fs::read_to_string(&path) {
            Ok(text) => {
                Ok(Some(serde_json::from_str(&text).with_context(|| {
                    format!("{}: invalid JSON", path.display())
                })?))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
        }
    }

    /// Records `step` (atomically) before it runs.
    pub fn step(&mut self, env: &EnvConfig, step: &str) -> anyhow::Result<()> {
        self.step = step.to_string();
        self.updated_at = now();
        write_atomic(
            &Self::path(env),
            format!("{}\n", serde_json::to_string_pretty(self)?).as_bytes(),
        )
    }

    pub fn remove(env: &EnvConfig) -> anyhow::Result<()> {
        let path = Self::path(env);
        match fs::remove_file(&path) {
            Ok(()) => {
                gates_core::fsutil::fsync_dir(&env.install_root).ok();
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(anyhow::anyhow!("removing {}: {e}", path.display())),
        }
    }
}

/// The release id `current` points at (the link's folder name), if any.
pub fn current_id(env: &EnvConfig) -> Option<String> {
    gates_core::install::current_release_id(env)
}

/// Installed release folders (not the dot-named in-progress ones).
pub fn installed(releases_dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(releases_dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| !n.starts_with('.'))
        .collect();
    out.sort();
    out
}
