//! Deploy's records in the install root, both written atomically
//! (`fsutil::write_atomic`) and only while the environment lock is held:
//!
//! - `releases.json`: what deploy knows of each installed release (state
//!   `installed`, `healthy`, `unverified` (deployed with
//!   `--skip-health-check`) or `failed`) and the last known-good release.
//!   A `failed` release is never chosen as a switch-back target.
//! - `deploy.journal.json`: the step an in-progress deploy is at, written
//!   before each step and removed when the deploy ends. A rerun after a crash
//!   (`kill -9`) reads it to report where the previous run stopped and to
//!   switch back to the right release if it fails.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use gates_core::config::EnvConfig;
use gates_core::fsutil::write_atomic;
use serde::{Deserialize, Serialize};

pub const STATE_FILE: &str = "releases.json";
pub const JOURNAL_FILE: &str = "deploy.journal.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    #[serde(default)]
    pub tag: String,
    pub state: String,
    #[serde(default)]
    pub schema_version: Option<i64>,
    #[serde(default)]
    pub installed_at: Option<String>,
    #[serde(default)]
    pub updated_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReleasesState {
    #[serde(default)]
    pub last_known_good: Option<String>,
    #[serde(default)]
    pub releases: BTreeMap<String, ReleaseRecord>,
}

fn now() -> String {
    gates_core::event::now_rfc3339()
}

impl ReleasesState {
    pub fn path(env: &EnvConfig) -> PathBuf {
        env.install_root.join(STATE_FILE)
    }

    /// The state file, or an empty state when there is none yet.
    pub fn load(env: &EnvConfig) -> anyhow::Result<ReleasesState> {
        let path = Self::path(env);
        match fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("{}: invalid JSON", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ReleasesState::default()),
            Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
        }
    }

    pub fn save(&self, env: &EnvConfig) -> anyhow::Result<()> {
        write_atomic(
            &Self::path(env),
            format!("{}\n", serde_json::to_string_pretty(self)?).as_bytes(),
        )
    }

    pub fn is_failed(&self, id: &str) -> bool {
        self.releases.get(id).is_some_and(|r| r.state == "failed")
    }

    pub fn set(
        &mut self,
        id: &str,
        tag: &str,
        schema_version: i64,
        state: &str,
        reason: Option<String>,
    ) {
        let t = now();
        let rec = self
            .releases
            .entry(id.to_string())
            .or_insert_with(|| ReleaseRecord {
                tag: tag.to_string(),
                state: state.to_string(),
                schema_version: Some(schema_version),
                installed_at: Some(t.clone()),
                updated_at: None,
                reason: None,
            });
        rec.state = state.to_string();
        rec.updated_at = Some(t);
        rec.reason = reason;
        if state == "healthy" {
            self.last_known_good = Some(id.to_string());
        } else if state == "failed" && self.last_known_good.as_deref() == Some(id) {
            self.last_known_good = None;
        }
    }
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
    let target = fs::read_link(env.current_link()).ok()?;
    let name = target.file_name()?.to_string_lossy().to_string();
    env.releases_dir().join(&name).is_dir().then_some(name)
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
