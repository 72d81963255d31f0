//! What the monitor reads from the environment's ledger, and the names it
//! writes under: its own window records (to continue an interrupted
//! window), the gate decisions it recorded, and the deploy records (the
//! backup and the start of the deploy being watched). Records are read into
//! small typed views, so each field name is written once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gates_core::config::{Action, EnvConfig};
use gates_core::gates::Status;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::incident::DeployStart;

/// The record kinds the monitor reads or writes.
pub const DEPLOY: &str = "deploy";
pub const MONITOR: &str = "monitor";
pub const GATE: &str = "gate";
/// An operator's verdict on a rollback (`report_dhash mark`, `rollback_dhash --mark-unnecessary`).
pub const REVIEW: &str = "rollback-review";

/// A deploy record's `result` once its release answered its health checks.
const DEPLOY_HEALTHY: &str = "healthy";

/// The `state` of a monitor record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowState {
    Started,
    Completed,
    Interrupted,
}

impl WindowState {
    pub fn as_str(self) -> &'static str {
        match self {
            WindowState::Started => "started",
            WindowState::Completed => "completed",
            WindowState::Interrupted => "interrupted",
        }
    }
}

/// A monitor record as read back. Every field is optional: a record that
/// lacks one (or holds another type) is simply not usable for what needs it.
#[derive(Debug, Default, Deserialize)]
struct MonitorRecord {
    state: Option<String>,
    release: Option<String>,
    window_start_ms: Option<i64>,
    duration_ms: Option<u64>,
    recording: Option<PathBuf>,
    log: Option<PathBuf>,
    events: Option<PathBuf>,
}

impl MonitorRecord {
    fn open(&self) -> bool {
        self.state.as_deref() != Some(WindowState::Completed.as_str())
    }
}

#[derive(Debug, Default, Deserialize)]
struct DeployRecord {
    ts: Option<String>,
    release: Option<String>,
    result: Option<String>,
    backup: Option<PathBuf>,
    started_at: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct GateRecord {
    status: Option<String>,
    action: Option<String>,
    release: Option<String>,
    sample_ts: Option<String>,
}

/// The records of one kind as typed views (None: the ledger cannot be read).
fn records<T: DeserializeOwned + Default>(env: &EnvConfig, kind: &str) -> Option<Vec<T>> {
    let raw = env.ledger().records(kind).ok()?;
    Some(
        raw.into_iter()
            .map(|v| serde_json::from_value(v).unwrap_or_default())
            .collect(),
    )
}

/// `release` None matches any record.
fn of_release(recorded: Option<&str>, release: Option<&str>) -> bool {
    release.is_none() || recorded == release
}

/// An interrupted window of the same release that a restarted monitor continues.
#[derive(Debug)]
pub(crate) struct Continuation {
    pub window_start_ms: i64,
    pub duration: Duration,
    pub recording: PathBuf,
    pub log: PathBuf,
    pub events: Option<PathBuf>,
}

/// The last monitor window, when it was left open, is of `release` and has
/// not ended by `now`.
pub(crate) fn find_continuation(
    env: &EnvConfig,
    release: Option<&str>,
    now: i64,
) -> Option<Continuation> {
    let last = records::<MonitorRecord>(env, MONITOR)?.pop()?;
    if last.state.is_none() || !last.open() || last.release.as_deref() != release {
        return None;
    }
    let start = last.window_start_ms?;
    let duration = Duration::from_millis(last.duration_ms?);
    if start + i64::try_from(duration.as_millis()).ok()? <= now {
        return None;
    }
    Some(Continuation {
        window_start_ms: start,
        duration,
        recording: last.recording?,
        log: last.log?,
        events: last.events,
    })
}

/// The window (start ms, duration ms) of the last monitor record, if it was left open.
pub(crate) fn interrupted_window(env: &EnvConfig) -> Option<(i64, u64)> {
    let last = records::<MonitorRecord>(env, MONITOR)?.pop()?;
    if !last.open() {
        return None;
    }
    Some((last.window_start_ms?, last.duration_ms?))
}

/// When the newest auto-rollback violation of `release` was recorded.
pub(crate) fn last_violation_ts(env: &EnvConfig, release: Option<&str>) -> Option<String> {
    records::<GateRecord>(env, GATE)?
        .into_iter()
        .rev()
        .filter(|g| g.status.as_deref() == Some(Status::Violated.as_str()))
        .filter(|g| g.action.as_deref() == Some(Action::AutoRollback.as_str()))
        .find(|g| of_release(g.release.as_deref(), release))
        .and_then(|g| g.sample_ts)
}

/// The backup of the newest healthy deploy of this release, when it still exists.
pub(crate) fn healthy_backup(env: &EnvConfig, release: Option<&str>) -> Option<PathBuf> {
    records::<DeployRecord>(env, DEPLOY)?
        .into_iter()
        .rev()
        .filter(|r| r.result.as_deref() == Some(DEPLOY_HEALTHY))
        .find(|r| of_release(r.release.as_deref(), release))
        .and_then(|r| r.backup)
        .filter(|p| Path::new(p).exists())
}

/// When the deploy of `release` started, from its healthy deploy record.
pub fn deploy_start(env: &EnvConfig, release: Option<&str>) -> Option<DeployStart> {
    deploy_start_in(&records::<DeployRecord>(env, DEPLOY)?, release)
}

/// The newest healthy record of `release` (the deploy being watched; a
/// later `unchanged` redeploy or `unwatched` note is not it) gives its
/// `started_at`; a record without one tells only when the deploy became
/// healthy (the record's own time), and says so.
fn deploy_start_in(records: &[DeployRecord], release: Option<&str>) -> Option<DeployStart> {
    let healthy = records
        .iter()
        .rev()
        .filter(|r| r.result.as_deref() == Some(DEPLOY_HEALTHY))
        .find(|r| of_release(r.release.as_deref(), release))?;
    match (&healthy.started_at, &healthy.ts) {
        (Some(s), _) => Some(DeployStart::Started(s.clone())),
        (None, Some(ts)) => Some(DeployStart::BecameHealthy(ts.clone())),
        (None, None) => None,
    }
}
