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

use super::rules::Raise;

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
    /// Who resolved it, when not the one who acknowledged it first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<String>,
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
    /// Escalations whose notice is not yet sent (see [`Pending`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbox: Vec<Pending>,
    /// The id the next outbox entry gets.
    #[serde(default)]
    pub next_notice: u64,
    /// Acknowledgements and resolutions not yet told to PagerDuty and
    /// Opsgenie (see [`OnCallNotice`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub oncall_outbox: Vec<OnCallNotice>,
}

/// An on-call acknowledge or resolve, saved in the same write that marks
/// the incident acknowledged (or resolved) and removed once sent: a kill
/// -9 during the call to PagerDuty or Opsgenie leaves it to the next
/// notify, `notify escalate` or `notify ack`, which sends it (at least
/// once), so the on-call tool does not go on paging. Claimed as
/// [`Pending`] is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnCallNotice {
    pub id: u64,
    pub incident: String,
    /// The key PagerDuty and Opsgenie know the incident by.
    pub key: String,
    /// `acknowledge` or `resolve`.
    pub action: String,
    /// Who acknowledged the incident.
    pub by: String,
    pub message: String,
    #[serde(flatten)]
    pub claim: Claim,
}

/// The outbox: an escalation is saved together with its notice, unsent, in
/// the same atomic write that raises the level, so a kill -9 between that
/// write and the send cannot lose the notice. After the send (delivered, or
/// in the fallback file) the entry is removed under the lock: that is
/// "marked sent". Every later notify, `notify escalate` and `notify ack`
/// first sends what is left.
///
/// Act once: `claimed_by` is the pid sending it. The raising process claims
/// its notice in the write that saves it, and a later run takes over only a
/// notice whose claimant is gone, so in the normal path the notice is sent
/// exactly once. A crash after the send and before the mark can repeat it
/// (at least once, never lost).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    pub id: u64,
    pub raise: Raise,
    #[serde(flatten)]
    pub claim: Claim,
}

/// Which process took an unsent notice on itself to send it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    #[serde(default)]
    pub claimed_by: Option<u32>,
    /// The claimant's start time (see [`start_time`]): a pid reused by
    /// another process after a crash is not taken for the claimant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_start: Option<u64>,
}

impl Claim {
    fn mine() -> Claim {
        Claim {
            claimed_by: Some(std::process::id()),
            claimed_start: my_start(),
        }
    }

    /// Held by a running process (this one or another).
    fn live(&self) -> bool {
        self.claimed_by
            .is_some_and(|pid| alive(pid, self.claimed_start))
    }

    fn held_elsewhere(&self) -> bool {
        self.claimed_by != Some(std::process::id()) && self.live()
    }
}

/// Claims for this process every item of an outbox whose claimant is gone,
/// and returns those items (to send).
fn claim_orphans_of<T: Clone>(items: &mut [T], claim: impl Fn(&mut T) -> &mut Claim) -> Vec<T> {
    let mut out = Vec::new();
    for item in items.iter_mut() {
        let c = claim(item);
        if c.live() {
            continue;
        }
        *c = Claim::mine();
        out.push(item.clone());
    }
    out
}

impl State {
    /// Saves `raise` in the outbox, claimed by this process.
    pub fn enqueue(&mut self, raise: Raise) -> Pending {
        self.next_notice += 1;
        let p = Pending {
            id: self.next_notice,
            raise,
            claim: Claim::mine(),
        };
        self.outbox.push(p.clone());
        p
    }

    /// Claims for this process every unsent notice whose claimant is gone.
    pub fn claim_orphans(&mut self) -> Vec<Pending> {
        claim_orphans_of(&mut self.outbox, |p| &mut p.claim)
    }

    /// Unsent notices (escalations and on-call acks) claimed by another
    /// process that still runs: being sent by it, or stuck in it.
    pub fn held_elsewhere(&self) -> usize {
        self.outbox
            .iter()
            .filter(|p| p.claim.held_elsewhere())
            .count()
            + self
                .oncall_outbox
                .iter()
                .filter(|n| n.claim.held_elsewhere())
                .count()
    }

    /// Marks the notice `id` sent.
    pub fn sent(&mut self, id: u64) {
        self.outbox.retain(|p| p.id != id);
    }

    /// Saves an on-call acknowledge or resolve, claimed by this process.
    pub fn enqueue_oncall(
        &mut self,
        incident: &IncidentState,
        action: &str,
        by: &str,
        message: &str,
    ) -> OnCallNotice {
        self.next_notice += 1;
        let n = OnCallNotice {
            id: self.next_notice,
            incident: incident.id.clone(),
            key: incident.key.clone(),
            action: action.to_string(),
            by: by.to_string(),
            message: message.to_string(),
            claim: Claim::mine(),
        };
        self.oncall_outbox.push(n.clone());
        n
    }

    /// Claims for this process every unsent on-call notice whose claimant is gone.
    pub fn claim_oncall_orphans(&mut self) -> Vec<OnCallNotice> {
        claim_orphans_of(&mut self.oncall_outbox, |n| &mut n.claim)
    }

    /// Marks the on-call notice `id` sent.
    pub fn oncall_sent(&mut self, id: u64) {
        self.oncall_outbox.retain(|n| n.id != id);
    }
}

/// Whether the process `pid` that started at `start` runs (its `/proc`
/// entry, and the same start time: after a crash the pid may belong to
/// another process, common in containers; without `/proc`, none is taken
/// for alive: a notice may then be sent twice, never lost). A claim saved
/// without a start time (an older notify) goes by the pid alone.
fn alive(pid: u32, start: Option<u64>) -> bool {
    if !(Path::new("/proc/self").exists() && Path::new(&format!("/proc/{pid}")).exists()) {
        return false;
    }
    match start {
        Some(s) => start_time(pid) == Some(s),
        None => true,
    }
}

/// When process `pid` started: field 22 of `/proc/<pid>/stat` (clock ticks
/// since boot). Read after the last `)`, since the command name may hold
/// spaces and parentheses.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn my_start() -> Option<u64> {
    start_time(std::process::id())
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
    let invalid = || {
        format!(
            "{} is not valid escalation state (to recover: move it aside; the ledger keeps \
             every escalation and acknowledgement, and notify starts again at level 1)",
            p.display()
        )
    };
    match std::fs::read(p) {
        Ok(bytes) => {
            // An object only: serde would read the struct from a JSON array
            // (`[]`, `[5]`) and silently forget every incident.
            let v: serde_json::Value = serde_json::from_slice(&bytes).with_context(invalid)?;
            if !v.is_object() {
                return Err(anyhow::anyhow!("the state is not a JSON object"))
                    .with_context(invalid);
            }
            serde_json::from_value(v).with_context(invalid)
        }
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

#[cfg(test)]
mod tests {
    use super::super::rules::Rule;
    use super::*;

    fn raise() -> Raise {
        Raise {
            from: 1,
            to: 2,
            rule: Rule::Warnings,
            alerts: vec!["a".into()],
            counted: 1,
            incident: None,
            at: 0.0,
        }
    }

    #[test]
    fn a_live_claimant_keeps_its_notice_and_a_gone_one_hands_it_over() {
        let mut s = State::default();
        let mine = s.enqueue(raise());
        // Claimed by this (live) process: no other run takes it.
        assert!(s.claim_orphans().is_empty());
        s.outbox[0].claim.claimed_by = Some(u32::MAX);
        let taken = s.claim_orphans();
        assert_eq!(taken.len(), 1);
        // This pid, but another start: a reused pid, not the claimant.
        assert!(s.outbox[0].claim.claimed_start.is_some());
        s.outbox[0].claim.claimed_start = s.outbox[0].claim.claimed_start.map(|t| t + 1);
        assert_eq!(s.claim_orphans().len(), 1);
        assert_eq!(taken[0].claim.claimed_by, Some(std::process::id()));
        // Round trip: the outbox survives the file.
        let back: State = serde_json::from_slice(&serde_json::to_vec(&s).expect("json"))
            .expect("state reads back");
        assert_eq!(back.outbox, s.outbox);
        s.sent(mine.id);
        assert!(s.outbox.is_empty());
        assert_eq!(s.enqueue(raise()).id, mine.id + 1);
    }
}
