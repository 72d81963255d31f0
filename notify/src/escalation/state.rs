//! Escalation state on disk: `<install_root>/escalation.json` (beside the
//! environment's ledger), read and rewritten atomically under an exclusive
//! lock on `escalation.json.lock`, so a monitor, a hand-run `notify` and the
//! systemd timer's `notify escalate` never lose each other's updates, and a
//! restarted notify goes on from where the last one stopped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use gates_core::config::EnvConfig;
use gates_core::Level;

pub const STATE_FILE: &str = "escalation.json";

/// One alert notify handled (titles are redacted before they get here).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertSeen {
    pub at: f64,
    pub level: Level,
    pub title: String,
    /// The incident the alert belongs to (one auto-rollback): alerts of one
    /// incident count as one toward the criticals rule (see [`super::rules::on_alert`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident: Option<String>,
    /// An upstream event's identity (its key and timestamp): the same event
    /// piped again (a rerun over the same events file) is not a new alert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// One escalation, as history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Escalated {
    pub at: String,
    pub from: u32,
    pub to: u32,
    pub rule: String,
    pub alerts: Vec<String>,
    #[serde(default)]
    pub incident: Option<String>,
}

/// An auto-rollback incident and its acknowledgement clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentState {
    pub id: String,
    pub path: PathBuf,
    pub opened_at: String,
    /// The level told so far (1-based).
    pub level: u32,
    /// When it escalates next unless acknowledged (Unix seconds).
    pub deadline: f64,
    /// The key PagerDuty and Opsgenie know it by.
    pub key: String,
    #[serde(default)]
    pub acked_by: Option<String>,
    #[serde(default)]
    pub acked_at: Option<String>,
    #[serde(default)]
    pub note: Option<String>,
    #[serde(default)]
    pub resolved: bool,
    #[serde(default)]
    pub tracker_url: Option<String>,
    #[serde(default)]
    pub tracker_error: Option<String>,
}

impl IncidentState {
    /// Still on the clock: not acknowledged, not resolved.
    pub fn open(&self) -> bool {
        self.acked_by.is_none() && !self.resolved
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    #[serde(default)]
    pub version: u32,
    /// The environment's alert level (1-based; 0 reads as 1).
    #[serde(default)]
    pub level: u32,
    /// Recent alerts (pruned to the longest rule window).
    #[serde(default)]
    pub alerts: Vec<AlertSeen>,
    /// Alerts at or before these times were already counted by an escalation.
    #[serde(default)]
    pub warnings_counted_until: Option<f64>,
    #[serde(default)]
    pub criticals_counted_until: Option<f64>,
    #[serde(default)]
    pub history: Vec<Escalated>,
    #[serde(default)]
    pub incidents: BTreeMap<String, IncidentState>,
}

impl State {
    pub fn level(&self) -> u32 {
        self.level.max(1)
    }
}

pub fn path(env: &EnvConfig) -> PathBuf {
    env.install_root.join(STATE_FILE)
}

/// The state as it is now (no lock: for reading only).
pub fn read(env: &EnvConfig) -> anyhow::Result<State> {
    load(&path(env))
}

fn load(p: &Path) -> anyhow::Result<State> {
    match std::fs::read(p) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is not valid escalation state (to recover: move it aside; the ledger keeps \
                 every escalation and acknowledgement, and notify starts again at level 1)",
                p.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(e) => Err(anyhow::anyhow!("reading {}: {e}", p.display())),
    }
}

/// Runs `f` on the state under the lock and writes the result back.
pub fn update<R>(env: &EnvConfig, f: impl FnOnce(&mut State) -> R) -> anyhow::Result<R> {
    let p = path(env);
    let _guard = lock(&p)?;
    let mut state = load(&p)?;
    let out = f(&mut state);
    state.version = 1;
    state.history.truncate(1000);
    let bytes = serde_json::to_vec_pretty(&state)?;
    gates_core::fsutil::write_atomic(&p, &bytes)?;
    Ok(out)
}

/// Runs `f` under the state's lock without touching the state: the
/// incident record's lines are rewritten under it, so an ack and a
/// concurrent escalation never write back each other's stale copy of the
/// record. Not to be called from inside [`update`] (the lock is not
/// re-entrant).
pub fn locked<R>(env: &EnvConfig, f: impl FnOnce() -> R) -> anyhow::Result<R> {
    let _guard = lock(&path(env))?;
    Ok(f())
}

/// An exclusive lock on `<state>.lock`, held until the file is dropped.
fn lock(p: &Path) -> anyhow::Result<std::fs::File> {
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut name = p.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    file.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;
    Ok(file)
}
