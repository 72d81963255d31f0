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

/// A deploy's steps in the order they run; the journal names the one in
/// progress. The serde names are the journal's on-disk words (kebab-case):
/// journals written before this type existed still parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Started,
    Backup,
    Install,
    Migrate,
    Migrated,
    Switch,
    Switched,
    Restart,
    Health,
    /// The new release failed: switching back to the previous one.
    SwitchBack,
    /// The switch-back itself failed: a rerun finishes it.
    RecoveryFailed,
}

impl Step {
    /// The on-disk word (the same as the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Started => "started",
            Step::Backup => "backup",
            Step::Install => "install",
            Step::Migrate => "migrate",
            Step::Migrated => "migrated",
            Step::Switch => "switch",
            Step::Switched => "switched",
            Step::Restart => "restart",
            Step::Health => "health",
            Step::SwitchBack => "switch-back",
            Step::RecoveryFailed => "recovery-failed",
        }
    }

    /// A deploy stopped here was undoing its failed release: a rerun finishes
    /// that switch-back before anything else.
    pub fn is_switching_back(self) -> bool {
        matches!(self, Step::SwitchBack | Step::RecoveryFailed)
    }
}

/// The in-progress deploy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Journal {
    pub release: String,
    pub tag: String,
    /// The release serving before this deploy (the switch-back target).
    pub from: Option<String>,
    pub step: Step,
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
        gates_core::install::deploy_journal(env)
    }

    /// The journal an interrupted deploy left behind, if any. An unreadable
    /// one is reported as an error (it never is, being written atomically).
    pub fn load(env: &EnvConfig) -> anyhow::Result<Option<Journal>> {
        read_journal(&Self::path(env))
    }

    /// Records `step` (atomically) before it runs.
    pub fn step(&mut self, env: &EnvConfig, step: Step) -> anyhow::Result<()> {
        self.step = step;
        self.updated_at = now();
        write_journal(&Self::path(env), self)
    }

    pub fn remove(env: &EnvConfig) -> anyhow::Result<()> {
        remove_journal(&Self::path(env), &env.install_root)
    }
}

/// A journal file an interrupted change left behind, if any (the deploy's
/// and the fleet's). An unreadable one is an error: it is written atomically.
pub(crate) fn read_journal<T: serde::de::DeserializeOwned>(
    path: &Path,
) -> anyhow::Result<Option<T>> {
    match fs::read_to_string(path) {
        Ok(text) => {
            Ok(Some(serde_json::from_str(&text).with_context(|| {
                format!("{}: invalid JSON", path.display())
            })?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    }
}

/// Writes a journal atomically, before the change it names.
pub(crate) fn write_journal<T: serde::Serialize>(path: &Path, journal: &T) -> anyhow::Result<()> {
    write_atomic(
        path,
        format!("{}\n", serde_json::to_string_pretty(journal)?).as_bytes(),
    )
}

/// Removes a finished journal; its directory is synced so the removal holds.
pub(crate) fn remove_journal(path: &Path, dir: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {
            gates_core::fsutil::fsync_dir(dir).ok();
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(anyhow::anyhow!("removing {}: {e}", path.display())),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_keep_their_on_disk_words_and_order() {
        let all = [
            Step::Started,
            Step::Backup,
            Step::Install,
            Step::Migrate,
            Step::Migrated,
            Step::Switch,
            Step::Switched,
            Step::Restart,
            Step::Health,
            Step::SwitchBack,
            Step::RecoveryFailed,
        ];
        for s in all {
            let json = serde_json::to_string(&s).expect("encode");
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert_eq!(serde_json::from_str::<Step>(&json).expect("decode"), s);
        }
        assert!(all.windows(2).all(|w| w[0] < w[1]), "ordered as they run");
    }

    #[test]
    fn a_journal_written_with_string_steps_still_parses() {
        let old = r#"{"release":"r1","tag":"v1","from":null,"step":"switch-back","pid":1,
            "started_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z"}"#;
        let j: Journal = serde_json::from_str(old).expect("old journal");
        assert_eq!(j.step, Step::SwitchBack);
        assert!(j.step.is_switching_back());
    }
}
