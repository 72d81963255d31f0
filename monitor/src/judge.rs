//! Judgment when a gate is unsure (issue 16): the baseline source and the
//! environment's inconclusive policy a watch runs with.

use gates_core::baseline::{BaselineSource, InconclusivePolicy};

/// What a watch judges with, beside its gates.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Where baseline-relative gates take their baseline.
    pub source: BaselineSource,
    /// What an inconclusive auto-rollback gate leads to.
    pub policy: InconclusivePolicy,
}

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::ValueEnum;
use gates_core::config::EnvConfig;
use gates_core::lock::{EnvLock, LockBusy};
use gates_core::project::Project;
use gates_core::watch::WatchInfo;
use gates_core::{Emitter, Exit};
use serde::Deserialize;
use serde_json::{json, Value};

/// Ledger kinds: a watch asking for a judgment, and a judgment given.
pub const REQUEST: &str = "judgment-request";
pub const JUDGMENT: &str = "judgment";

/// A person's (or the deadline's) call on an inconclusive gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Call {
    /// Keep the release: the inconclusive gate no longer holds the watch back.
    Promote,
    /// Roll the release back (by the watch, under the environment lock).
    Rollback,
}

impl Call {
    pub fn as_str(self) -> &'static str {
        match self {
            Call::Promote => "promote",
            Call::Rollback => "rollback",
        }
    }
}

/// How the inconclusive gates of a watch were settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// A person promoted the release: the watch can pass.
    Promoted,
    /// Kept (a failed request, or the deadline's default keep): the watch
    /// ends inconclusive.
    Kept,
    /// Rolled back (judged, or the deadline's default).
    RolledBack,
}

/// A pending request as read back from the ledger.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Request {
    pub ts: String,
    pub release: Option<String>,
    pub gate: Option<String>,
    pub deadline_ms: i64,
    pub pid: Option<u32>,
    /// The start of the window of the watch that asked (absent in requests
    /// of older versions: those are never taken up by another watch).
    pub window_start_ms: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Judgment {
    pub request_ts: Option<String>,
    pub call: Option<String>,
    pub reason: Option<String>,
    pub by: Option<String>,
}

fn all<T: serde::de::DeserializeOwned>(env: &EnvConfig, kind: &str) -> Vec<T> {
    env.ledger()
        .records(kind)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect()
}

/// The judgment given for the request made at `request_ts`, if any.
pub fn judgment_for(env: &EnvConfig, request_ts: &str) -> Option<Judgment> {
    all::<Judgment>(env, JUDGMENT)
        .into_iter()
        .find(|j| j.request_ts.as_deref() == Some(request_ts))
}

/// The newest request of the environment still open: no judgment for it
/// yet and its deadline not passed.
pub fn open_request(env: &EnvConfig, now_ms: i64) -> Option<Request> {
    let last = all::<Request>(env, REQUEST).pop()?;
    if last.deadline_ms <= now_ms || judgment_for(env, &last.ts).is_some() {
        return None;
    }
    Some(last)
}

/// The request a restarted watch of `release` takes up for `gate` instead of
/// asking again: the environment's newest request, when it is of that release
/// and gate, asked in the window the watch continues (`window_start_ms`: a
/// new window, `--fresh` or after a redeploy, never acts on a judgment of an
/// earlier one), no window completed and no deploy or rollback came after
/// it, and it is answered or still open. (One nobody could answer before
/// its deadline is asked again.)
pub fn adoptable(
    env: &EnvConfig,
    release: Option<&str>,
    gate: &str,
    window_start_ms: i64,
    now_ms: i64,
) -> Option<Request> {
    let (recs, _) = env.ledger().read().ok()?;
    let mut newest: Option<Request> = None;
    for r in recs {
        match r.get("kind").and_then(Value::as_str) {
            Some(REQUEST) => newest = serde_json::from_value(r).ok(),
            Some(crate::ledger::MONITOR)
                if r.get("state").and_then(Value::as_str)
                    == Some(crate::ledger::WindowState::Completed.as_str()) =>
            {
                newest = None;
            }
            Some("deploy" | "rollback") => newest = None,
            _ => {}
        }
    }
    let req = newest?;
    if req.release.as_deref() != release
        || req.gate.as_deref() != Some(gate)
        || req.window_start_ms != Some(window_start_ms)
    {
        return None;
    }
    (req.deadline_ms > now_ms || judgment_for(env, &req.ts).is_some()).then_some(req)
}

/// The lock file (under the install root) that serializes judgments.
pub const JUDGE_LOCK: &str = "judge.lock";

/// Serializes the judgments of an environment: each `judge` call, and a
/// watch recording its deadline's default, checks for a judgment and records
/// one under it, so exactly one call per request is recorded and believed.
fn judgment_lock(env: &EnvConfig) -> anyhow::Result<EnvLock> {
    let path = env.install_root.join(JUDGE_LOCK);
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        match EnvLock::acquire(&path, &env.name, crate::TOOL) {
            Ok(l) => return Ok(l),
            Err(e) if e.downcast_ref::<LockBusy>().is_some() && Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e).context("taking the judgment lock"),
        }
    }
}

/// At the deadline: records the policy's default for `req`, unless a
/// judgment came first, which is returned instead (it is the one that counts).
pub fn record_default(
    env: &EnvConfig,
    req: &Request,
    call: &str,
    reason: &str,
) -> anyhow::Result<Option<Judgment>> {
    let _lock = judgment_lock(env)?;
    if let Some(j) = judgment_for(env, &req.ts) {
        return Ok(Some(j));
    }
    record(env, req, call, reason, "deadline")?;
    Ok(None)
}

/// Who would act on a judgment of a request.
enum Waiter {
    /// The watch that asked: it acts at its next poll.
    Asker(WatchInfo),
    /// A restart continuing the asker's window: it takes the request up
    /// when the gate is inconclusive again (see [`adoptable`]).
    Restart(WatchInfo),
    /// A watch of another window (or none) runs: nothing would act on it.
    Nobody(Option<WatchInfo>),
}

/// The live watch that acts on a judgment of `req`: the watch holding the
/// environment's watch lock, when it is the one that asked or a restart of
/// it continuing the same window of the same release. A watch of a new
/// window never takes the request up, so it does not count.
fn waiting_watch(env: &EnvConfig, req: &Request) -> anyhow::Result<Waiter> {
    let Some(info) = gates_core::watch::active(env)? else {
        return Ok(Waiter::Nobody(None));
    };
    if Some(info.pid) == req.pid {
        return Ok(Waiter::Asker(info));
    }
    let same_window = req.window_start_ms.map(crate::ts_of) == Some(info.started_at.clone());
    if req.release.is_some() && info.release == req.release && same_window {
        return Ok(Waiter::Restart(info));
    }
    Ok(Waiter::Nobody(Some(info)))
}

/// A `--by` or `--reason` must say something: a judgment by nobody, or for
/// no reason, could not be asked about later.
fn non_blank(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("must not be empty".into());
    }
    Ok(s.to_string())
}

/// Records a judgment (or the deadline's default) for a request.
pub fn record(
    env: &EnvConfig,
    req: &Request,
    call: &str,
    reason: &str,
    by: &str,
) -> anyhow::Result<serde_json::Value> {
    env.ledger().append(
        JUDGMENT,
        json!({"env": env.name, "release": req.release, "gate": req.gate, "request_ts": req.ts,
               "call": call, "reason": reason, "by": by}),
    )
}

/// `monitor_dhash judge`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct JudgeArgs {
    /// The environment whose watch waits for a judgment.
    #[arg(long)]
    pub env: String,
    /// Keep the release.
    #[arg(
        long,
        conflicts_with = "rollback",
        required_unless_present = "rollback"
    )]
    pub promote: bool,
    /// Roll the release back (the watch does it, under the environment lock).
    #[arg(long)]
    pub rollback: bool,
    /// Why (recorded in the ledger with who judged).
    #[arg(long, value_parser = non_blank)]
    pub reason: String,
    /// Who judges (default: $USER).
    #[arg(long, value_parser = non_blank)]
    pub by: Option<String>,
}

/// Records the judgment for the environment's open request; the waiting
/// watch acts on it at its next poll. No open request, or the watch that
/// asked is gone: exit 1, saying so.
pub fn run_judge(a: &JudgeArgs) -> anyhow::Result<Exit> {
    let project = Project::discover()?;
    let env = project.env(&a.env)?;
    let em = Emitter::stdout(crate::TOOL, &env.name, false);
    // Check and record under one lock: of two racing calls, the second sees
    // the first's judgment and is refused instead of told it counts.
    let _lock = judgment_lock(env)?;
    let now = chrono::Utc::now().timestamp_millis();
    let Some(req) = open_request(env, now) else {
        bail!(
            "no watch of {} is waiting for a judgment (none asked, it was already judged, or its deadline passed)",
            env.name
        );
    };
    let gate = req.gate.as_deref().unwrap_or("the inconclusive gate");
    let asker = req.pid.map_or("?".into(), |p| p.to_string());
    let when = match waiting_watch(env, &req)? {
        Waiter::Asker(w) => format!("the watch (pid {}) acts on it at its next poll", w.pid),
        Waiter::Restart(w) => format!(
            "the restarted watch (pid {}) of the same window acts on it once {gate} is inconclusive again (it takes the request up)",
            w.pid
        ),
        Waiter::Nobody(None) => bail!(
            "the watch that asked for a judgment of {gate} on {} (pid {asker}) is no longer running, so nothing would act on it; \
             restart the watch (monitor_dhash --env {}): it takes the request up again, or asks again if its deadline passed",
            env.name,
            env.name
        ),
        Waiter::Nobody(Some(w)) => bail!(
            "the watch that asked for a judgment of {gate} on {} (pid {asker}) is no longer running, and the watch running now \
             (pid {}, of {}, started {}) watches another window and never acts on that request, so nothing would act on it",
            env.name,
            w.pid,
            w.release.as_deref().unwrap_or("no release"),
            w.started_at
        ),
    };
    let call = if a.rollback {
        Call::Rollback
    } else {
        Call::Promote
    };
    let by = a.by.clone().unwrap_or_else(gates_core::lock::username);
    let rec = record(env, &req, call.as_str(), &a.reason, &by)?;
    em.info(
        "judgment.recorded",
        format!(
            "{by} judged {gate} of {}: {} ({}); {when}",
            req.release.as_deref().unwrap_or("the watched release"),
            call.as_str(),
            a.reason,
        ),
        rec,
    );
    Ok(Exit::Ok)
}
