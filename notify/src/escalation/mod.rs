//! Escalation and acknowledgement, on top of notify's delivery (see the
//! policy in `gates_core::config::escalation`).
//!
//! - Every warning or critical notify delivers (not a duplicate, not a dry
//!   run) is counted for its environment; when a rule fires, the
//!   environment moves to the next level: an `escalation.raised` event, a
//!   ledger record (`escalation`) and a critical notification to that
//!   level's channels, naming its contacts.
//! - An auto-rollback incident ([`incident_opened`], called by the monitor
//!   once its record is written, or on an upstream `incident.created`)
//!   starts an acknowledgement clock; unacknowledged, it escalates one level
//!   at each deadline until the top. [`ack`] stops it.
//! - Deadlines are on disk: any notify (and the monitor's notifications)
//!   checks them first, and `notify escalate --env E` does only that, for
//!   cron or the shipped systemd timer.
//! - An auto-rollback notification reaches every configured channel.
//! - Nothing lost: an escalation is saved with its notice unsent (the
//!   state's outbox, [`state::Pending`]) in the same write that raises the
//!   level, and marked sent under the lock once it is delivered or in the
//!   fallback file. A run killed in between (crash point
//!   `notify-escalation-saved`) leaves it to the next notify, `notify
//!   escalate` or `notify ack`, which sends it first, once.
//!
//! The clock is [`crate::clock`] (`DHASH_NOW` for drills and tests).

pub mod cli;
pub mod rules;
pub mod state;

use std::path::Path;

use serde_json::{json, Value};

use gates_core::config::EnvConfig;
use gates_core::{Emitter, Level};

use crate::channels::Channel;
use crate::incident_file::{self, ACKNOWLEDGED, ESCALATION, TRACKER};
use crate::{clock, tracker, Notification, NotifyOptions, SendSettings};
pub use rules::{Raise, Rule};

/// Ledger record kinds.
pub const LEDGER_ESCALATION: &str = "escalation";
pub const LEDGER_ACK: &str = "acknowledgement";
/// An incident acknowledged earlier, resolved by a later `ack --resolve`.
pub const LEDGER_RESOLUTION: &str = "resolution";

/// Whether a notification is about an automatic rollback (the monitor's
/// rollback notifications, an upstream rollback event of the monitor, a
/// gate violation whose action is auto-rollback): it reaches every channel.
pub fn is_auto_rollback(n: &Notification) -> bool {
    let f = |k: &str| n.fields.get(k).and_then(Value::as_str);
    let key = n.dedup_key.as_deref().unwrap_or("");
    n.level.severity() >= Level::Critical.severity()
        && (f("action") == Some("auto-rollback")
            || key.contains(":rollback:")
            || key.ends_with(":rollback-completed")
            || key.ends_with(":rollback-failed")
            || (f("tool") == Some("monitor_dhash")
                && f("event").is_some_and(|e| e.starts_with("rollback."))))
}

/// The incident an alert belongs to, for the criticals rule: every alert of
/// one auto-rollback (the gate violated, the rollback completed, the
/// monitor's or upstream events about it) shares `rollback:<release>`, so
/// one rollback counts as ONE critical (see [`rules::on_alert`] for why). A
/// failed rollback belongs to none: it is a second critical situation, and
/// seed 004 escalates it at once.
pub fn rollback_incident(n: &Notification) -> Option<String> {
    if !is_auto_rollback(n) {
        return None;
    }
    let key = n.dedup_key.as_deref().unwrap_or("");
    let event = n.fields.get("event").and_then(Value::as_str);
    if key.contains("rollback-failed")
        || key.contains("rollback.failed")
        || event == Some("rollback.failed")
    {
        return None;
    }
    // The monitor's own keys are `<env>:<release>:<what>`; upstream events
    // carry the release as a field.
    let from_key = (!key.starts_with("event:"))
        .then(|| key.split(':').nth(1))
        .flatten()
        .filter(|r| !r.is_empty());
    let release = from_key
        .or_else(|| n.fields.get("release").and_then(Value::as_str))
        .unwrap_or("-");
    Some(format!("rollback:{release}"))
}

/// After a delivered alert: count it, and escalate when a rule says so.
pub fn after_alert(env: &EnvConfig, n: &Notification, title: &str, em: &Emitter) {
    if !env.escalation.configured || n.level.severity() < Level::Warning.severity() {
        return;
    }
    let policy = &env.escalation;
    let now = clock::now_secs();
    let incident = rollback_incident(n);
    // An upstream event is known by its key and timestamp; a --message
    // alert has no identity beyond its text and counts each time it is sent.
    let id = n
        .fields
        .get("event_ts")
        .and_then(Value::as_str)
        .map(|ts| format!("{}@{ts}", n.dedup_key.as_deref().unwrap_or("")));
    match state::update(env, |s| {
        rules::on_alert(
            policy,
            s,
            now,
            n.level,
            title,
            incident.as_deref(),
            id.as_deref(),
        )
        .map(|raise| s.enqueue(raise))
    }) {
        Ok(Some(pending)) => deliver(env, &pending, false, em),
        Ok(None) => {}
        Err(e) => em.human(&format!("escalation state not updated: {e:#}")),
    }
}

/// Acts on every passed deadline; returns what was raised. An unreadable
/// state is said on stderr and nothing is raised: the alert being sent
/// matters more than the bookkeeping (`notify escalate` fails instead).
pub fn check_deadlines(env: &EnvConfig, em: &Emitter) -> Vec<Raise> {
    try_check_deadlines(env, em).unwrap_or_else(|e| {
        em.human(&format!("escalation deadlines not checked: {e:#}"));
        Vec::new()
    })
}

/// [`check_deadlines`], with an unreadable or unwritable state as an error
/// (for `notify escalate`, whose only job this is: cron and the systemd
/// timer must see it fail, not "0 escalations").
pub fn try_check_deadlines(env: &EnvConfig, em: &Emitter) -> anyhow::Result<Vec<Raise>> {
    if !env.escalation.configured {
        return Ok(Vec::new());
    }
    flush_outbox(env, em)?;
    let now = clock::now_secs();
    let pending = state::update(env, |s| {
        let raises = rules::due(&env.escalation, s, now);
        raises.into_iter().map(|r| s.enqueue(r)).collect::<Vec<_>>()
    })?;
    for p in &pending {
        deliver(env, p, false, em);
    }
    Ok(pending.into_iter().map(|p| p.raise).collect())
}

/// Sends every notice an earlier run saved but never sent (it was killed
/// between the save and the send; see [`state::Pending`]); returns how many.
pub fn flush_outbox(env: &EnvConfig, em: &Emitter) -> anyhow::Result<usize> {
    if !env.escalation.configured {
        return Ok(0);
    }
    let s = state::read(env)?;
    if s.outbox.is_empty() && s.oncall_outbox.is_empty() {
        return Ok(0);
    }
    let (orphans, oncall) = state::update(env, |s| (s.claim_orphans(), s.claim_oncall_orphans()))?;
    for p in &orphans {
        deliver(env, p, true, em);
    }
    for o in &oncall {
        send_oncall(env, o, true, em);
    }
    Ok(orphans.len() + oncall.len())
}

/// An escalation saved with its notice unsent: announce and send it, then
/// mark it sent under the lock. `recovered`: an earlier run saved it and
/// died before sending.
fn deliver(env: &EnvConfig, p: &state::Pending, recovered: bool, em: &Emitter) {
    // A kill here is what the outbox is for: the next run sends it.
    gates_core::crash::crash_point("notify-escalation-saved");
    raised(env, &p.raise, p.id, recovered, em);
    if let Err(e) = state::update(env, |s| s.sent(p.id)) {
        em.human(&format!(
            "escalation notice {} sent but not marked sent (a later run may send it again): {e:#}",
            p.id
        ));
    }
}

/// An escalation: the event, the ledger record, the incident record's line
/// and the notification to the new level's channels.
/// `notice` is its outbox id, in the event and the ledger record, so a
/// record repeated by a recovery (a kill after the ledger append, before
/// the send) is known as the same escalation; `recovered` says so.
fn raised(env: &EnvConfig, r: &Raise, notice: u64, recovered: bool, em: &Emitter) {
    let level = env.escalation.level(r.to);
    let why = match r.rule {
        Rule::Warnings => format!(
            "{} warnings within {}",
            r.alerts.len(),
            gates_core::duration::human(env.escalation.warning_window)
        ),
        Rule::Criticals if r.counted < r.alerts.len() => format!(
            "{} critical incidents ({} alerts; one incident's alerts count once)",
            r.counted,
            r.alerts.len()
        ),
        Rule::Criticals => format!("{} critical alerts", r.alerts.len()),
        Rule::AckDeadline => format!(
            "incident {} not acknowledged within {}",
            r.incident.as_deref().unwrap_or("?"),
            gates_core::duration::human(env.escalation.ack_deadline)
        ),
    };
    let msg = format!(
        "{}: escalated from level {} to level {} ({}: {})",
        why,
        r.from,
        r.to,
        level.name,
        level.contacts.join(", ")
    );
    let fields = json!({"level_number": r.to, "from": r.from, "level_name": level.name,
        "contacts": level.contacts, "channels": level.channels, "rule": r.rule.as_str(),
        "alerts": r.alerts, "counted": r.counted, "incident": r.incident, "due_at": clock::rfc3339(r.at),
        "notice": notice, "recovered": recovered});
    em.emit(
        "escalation.raised",
        Level::Critical,
        msg.clone(),
        fields.clone(),
    );
    let mut rec = fields.clone();
    rec["env"] = json!(env.name);
    if let Err(e) = env.ledger().append(LEDGER_ESCALATION, rec) {
        em.human(&format!(
            "cannot append the escalation to the ledger: {e:#}"
        ));
    }
    if let Some(id) = &r.incident {
        note_incident_level(env, id, em);
    }
    let mut n = Notification::new(
        Level::Critical,
        format!(
            "Escalated to level {} ({}): dhash {}",
            r.to, level.name, env.name
        ),
        format!(
            "{msg}. Acknowledge: notify ack --env {}{} --by NAME",
            env.name,
            r.incident
                .as_deref()
                .map(|i| format!(" --incident {i}"))
                .unwrap_or_default()
        ),
    );
    n.fields = fields.as_object().cloned().unwrap_or_default();
    if let Some(key) = r.incident.as_deref().and_then(|i| incident_key(env, i)) {
        n.fields.insert("incident_key".into(), json!(key));
    }
    send_to(env, &n, channels_of(&level.channels), em);
}

fn channels_of(names: &[String]) -> Vec<Channel> {
    names.iter().filter_map(|c| c.parse().ok()).collect()
}

/// Sends an escalation's own notification to `channels` (routes aside,
/// never deduplicated, never counted as an alert).
fn send_to(env: &EnvConfig, n: &Notification, channels: Vec<Channel>, em: &Emitter) {
    let settings = SendSettings {
        only: None,
        no_dedup: true,
        direct: Some(channels),
        internal: true,
    };
    crate::send_with(env, n, &NotifyOptions::default(), em, &settings);
}

fn incident_key(env: &EnvConfig, id: &str) -> Option<String> {
    state::read(env)
        .ok()?
        .incidents
        .get(id)
        .map(|i| i.key.clone())
}

/// An incident record's line, rewritten under the state's lock.
fn set_line(env: &EnvConfig, record: &Path, label: &str, text: &str) -> anyhow::Result<()> {
    state::locked(env, || incident_file::set_line(env, record, label, text))?
}

/// The incident record's Escalation line, from the state.
fn note_incident_level(env: &EnvConfig, id: &str, em: &Emitter) {
    // Read and written under the lock: the line says what the state says
    // when it is written, not what it said before a concurrent ack.
    let written = state::locked(env, || -> anyhow::Result<()> {
        let Some(inc) = state::read(env)?.incidents.get(id).cloned() else {
            return Ok(());
        };
        incident_file::set_line(env, &inc.path, ESCALATION, &level_line(env, &inc))
    });
    if let Err(e) = written.and_then(|r| r) {
        em.human(&format!("cannot update the incident record: {e:#}"));
    }
}

fn level_line(env: &EnvConfig, inc: &state::IncidentState) -> String {
    let level = env.escalation.level(inc.level);
    let next = if !inc.open() {
        "acknowledged".to_string()
    } else if inc.level >= env.escalation.top() {
        "top level reached".to_string()
    } else {
        format!("next escalation at {} unless acknowledged (`notify ack --env {} --incident {} --by NAME`)",
            clock::rfc3339(inc.deadline), env.name, inc.id)
    };
    format!(
        "level {} ({}: {}); {next}",
        inc.level,
        level.name,
        level.contacts.join(", ")
    )
}

/// An auto-rollback incident record was written: start its ack clock, open
/// it in the tracker and write the link back. Known already: nothing to do.
pub fn incident_opened(env: &EnvConfig, record: &Path, em: &Emitter) {
    if !env.escalation.configured {
        return;
    }
    // The path comes from an event on stdin: only a real incident record
    // of this environment is put on the clock, rewritten and tracked.
    let record = match incident_file::check_record(env, record) {
        Ok(p) => p,
        Err(why) => {
            em.emit(
                "incident.rejected",
                Level::Warning,
                format!("not an incident record, ignored: {why}"),
                json!({"path": record.display().to_string(), "reason": why}),
            );
            return;
        }
    };
    let record = record.as_path();
    let id = record
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "incident".into());
    let key = format!("dhash/{}/{id}", env.name);
    let now = clock::now_secs();
    let policy = &env.escalation;
    match state::update(env, |s| {
        rules::open_incident(policy, s, now, &id, record, &key)
    }) {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            em.human(&format!(
                "incident {id}: escalation state not updated: {e:#}"
            ));
            return;
        }
    }
    let deadline = clock::rfc3339(now + policy.ack_deadline.as_secs_f64());
    em.emit(
        "escalation.opened",
        Level::Warning,
        format!(
            "incident {id}: acknowledge by {deadline} or it escalates to level 2 ({})",
            policy.level(2).name
        ),
        json!({"incident": id, "path": record.display().to_string(), "deadline": deadline,
               "level_number": 1, "key": key}),
    );
    if let Err(e) = set_line(
        env,
        record,
        ACKNOWLEDGED,
        &format!("[not yet: due by {deadline}]"),
    ) {
        em.human(&format!("cannot update the incident record: {e:#}"));
    }
    note_incident_level(env, &id, em);
    track(env, record, &id, em);
}

/// The tracker copy and its link in the record; a failure is reported and
/// the local record stays complete.
fn track(env: &EnvConfig, record: &Path, id: &str, em: &Emitter) {
    let title = format!("Auto-rollback of dhash {}: {id}", env.name);
    let issue = tracker::Issue {
        title: &title,
        record,
        env: &env.name,
        id,
    };
    let (line, url, error) = match tracker::open(&issue, env.notify.timeout) {
        Ok(tracker::Tracked::Opened { via, url }) => {
            em.emit(
                "incident.tracked",
                Level::Info,
                format!(
                    "incident {id} opened in the tracker ({via}){}",
                    url.as_deref().map(|u| format!(": {u}")).unwrap_or_default()
                ),
                json!({"incident": id, "via": via, "url": url}),
            );
            let line = url
                .clone()
                .unwrap_or_else(|| format!("[opened via {via}; no link returned]"));
            (line, url, None)
        }
        Ok(tracker::Tracked::NotConfigured(why)) => {
            em.emit(
                "incident.tracker-skipped",
                Level::Debug,
                format!("no tracker: {why}"),
                json!({"incident": id}),
            );
            (format!("[none: {why}]"), None, None)
        }
        Err(why) => {
            em.emit("incident.tracker-failed", Level::Warning,
                format!("incident {id} could not be opened in the tracker: {why}; the local record is complete"),
                json!({"incident": id, "reason": why, "path": record.display().to_string()}));
            (format!("[not opened: {why}]"), None, Some(why))
        }
    };
    if let Err(e) = set_line(env, record, TRACKER, &line) {
        em.human(&format!(
            "cannot write the tracker link into the incident record: {e:#}"
        ));
    }
    let _ = state::update(env, |s| {
        if let Some(i) = s.incidents.get_mut(id) {
            i.tracker_url = url;
            i.tracker_error = error;
        }
    });
}

/// What an acknowledgement acknowledged.
#[derive(Debug, Clone, PartialEq)]
pub enum Acked {
    Incident(Box<state::IncidentState>),
    /// Already acknowledged (and resolved, if asked): nothing changed. The
    /// first acknowledgement stands, so the record, the ledger and the
    /// on-call tools keep who saw it first and when.
    Already(Box<state::IncidentState>),
    /// Acknowledged earlier and now resolved (`ack --resolve`): the first
    /// acknowledgement stands, the resolution is recorded on its own.
    Resolved(Box<state::IncidentState>),
    /// No open incident: the environment's alerts (its level back to 1).
    Alerts {
        level_was: u32,
    },
}

/// Why an ack could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum AckError {
    #[error("no incident {0:?} in {1}; known: {2}")]
    Unknown(String, String, String),
    #[error(transparent)]
    State(#[from] anyhow::Error),
}

/// `notify ack`: the incident named, else the newest open one, else the
/// environment's alerts. `resolve` also closes it (PagerDuty resolve,
/// Opsgenie close).
pub fn ack(
    env: &EnvConfig,
    incident: Option<&str>,
    by: &str,
    note: Option<&str>,
    resolve: bool,
    em: &Emitter,
) -> Result<Acked, AckError> {
    // A notice an earlier run left unsent goes out first, ack or not.
    if let Err(e) = flush_outbox(env, em) {
        em.human(&format!("unsent escalation notices not sent: {e:#}"));
    }
    let at = clock::rfc3339(clock::now_secs());
    let decide = |s: &mut state::State| -> Result<Acked, AckError> {
        let newest = |pick: &dyn Fn(&state::IncidentState) -> bool| {
            s.incidents
                .values()
                .filter(|i| pick(i))
                .max_by(|a, b| a.opened_at.cmp(&b.opened_at))
                .map(|i| i.id.clone())
        };
        let id = match incident {
            Some(i) => Some(i.to_string()),
            // The newest open incident; with --resolve, else the newest
            // one still unresolved.
            None => newest(&|i| i.open())
                .or_else(|| resolve.then(|| newest(&|i| !i.resolved)).flatten()),
        };
        let Some(id) = id else {
            // Nothing open and the alerts not escalated: a repeated ack of the
            // newest incident (a second on-call, a retry) says who has it,
            // instead of recording an alerts ack that changes nothing.
            if s.level() <= 1 {
                if let Some(last) = newest(&|_| true) {
                    if let Some(inc) = s.incidents.get(&last) {
                        return Ok(Acked::Already(Box::new(inc.clone())));
                    }
                }
            }
            let level_was = s.level();
            s.level = 1;
            return Ok(Acked::Alerts { level_was });
        };
        let mut known = s.incidents.keys().cloned().collect::<Vec<_>>().join(", ");
        if known.is_empty() {
            known = "(none)".into();
        }
        let path = state::path(env).display().to_string();
        let inc = s
            .incidents
            .get_mut(&id)
            .ok_or(AckError::Unknown(id.clone(), path, known))?;
        if inc.acked_by.is_some() && (inc.resolved || !resolve) {
            return Ok(Acked::Already(Box::new(inc.clone())));
        }
        if inc.acked_by.is_some() {
            // Resolving an acknowledged incident keeps who acknowledged it.
            inc.resolved = true;
            inc.resolved_by = Some(by.to_string());
            inc.resolved_at = Some(at.clone());
            return Ok(Acked::Resolved(Box::new(inc.clone())));
        }
        inc.acked_by = Some(by.to_string());
        inc.acked_at = Some(at.clone());
        inc.note = note.map(str::to_string);
        inc.resolved |= resolve;
        Ok(Acked::Incident(Box::new(inc.clone())))
    };
    let tools = oncall_tools();
    let (acked, notice) = state::update(env, |s| -> Result<_, AckError> {
        let acked = decide(s)?;
        // The on-call tools' acknowledge or resolve is saved in this same
        // write, so a kill during the call cannot lose it (the outbox).
        let notice = match &acked {
            _ if tools.is_empty() => None,
            Acked::Incident(i) => {
                let action = if resolve { "resolve" } else { "acknowledge" };
                Some(s.enqueue_oncall(i, action, by, &ack_message(&i.id, by, &at, resolve)))
            }
            Acked::Resolved(i) => Some(s.enqueue_oncall(
                i,
                "resolve",
                i.acked_by.as_deref().unwrap_or(by),
                &resolution_message(i, by, &at),
            )),
            Acked::Already(_) | Acked::Alerts { .. } => None,
        };
        Ok((acked, notice))
    })??;
    if matches!(acked, Acked::Already(_)) {
        return Ok(acked);
    }
    announce_ack(env, &acked, by, note, &at, resolve, em);
    if let Some(n) = notice {
        send_oncall(env, &n, false, em);
    }
    Ok(acked)
}

fn ack_message(id: &str, by: &str, at: &str, resolve: bool) -> String {
    format!(
        "incident {id} acknowledged by {by} at {at}{}",
        if resolve { " and resolved" } else { "" }
    )
}

fn resolution_message(inc: &state::IncidentState, by: &str, at: &str) -> String {
    format!(
        "incident {} resolved by {by} at {at} (acknowledged by {} at {})",
        inc.id,
        inc.acked_by.as_deref().unwrap_or("?"),
        inc.acked_at.as_deref().unwrap_or("?")
    )
}

/// The on-call tools that are set up (PagerDuty, Opsgenie): elsewhere an
/// ack is not news.
fn oncall_tools() -> Vec<Channel> {
    [Channel::PagerDuty, Channel::Opsgenie]
        .into_iter()
        .filter(|c| {
            matches!(
                crate::channels::configure(*c),
                crate::channels::Config::Ready(_)
            )
        })
        .collect()
}

/// Tells the on-call tools an acknowledge or resolve saved in the outbox,
/// then marks it sent under the lock. `recovered`: an earlier run saved it
/// and died before sending.
fn send_oncall(env: &EnvConfig, o: &state::OnCallNotice, recovered: bool, em: &Emitter) {
    // A kill here is what the on-call outbox is for: the next run sends it.
    gates_core::crash::crash_point("notify-ack-saved");
    if recovered {
        em.emit(
            "escalation.oncall-recovered",
            Level::Info,
            format!(
                "the {} of incident {} (unsent by an earlier run) goes to the on-call tools now",
                o.action, o.incident
            ),
            json!({"incident": o.incident, "action": o.action, "by": o.by, "notice": o.id}),
        );
    }
    let n = Notification::new(
        Level::Info,
        format!("Incident {} {}d: dhash {}", o.incident, o.action, env.name),
        o.message.clone(),
    )
    .field("incident", o.incident.clone())
    .field("incident_key", o.key.clone())
    .field("pagerduty_action", o.action.clone())
    .field("acknowledged_by", o.by.clone());
    let tools = oncall_tools();
    if !tools.is_empty() {
        send_to(env, &n, tools, em);
    }
    if let Err(e) = state::update(env, |s| s.oncall_sent(o.id)) {
        em.human(&format!(
            "on-call {} of {} sent but not marked sent (a later run may send it again): {e:#}",
            o.action, o.incident
        ));
    }
}

/// The ack's event, ledger record, incident line, and the on-call tools told.
fn announce_ack(
    env: &EnvConfig,
    acked: &Acked,
    by: &str,
    note: Option<&str>,
    at: &str,
    resolve: bool,
    em: &Emitter,
) {
    if let Acked::Resolved(inc) = acked {
        return announce_resolution(env, inc, by, note, at, em);
    }
    let (incident, msg) = match acked {
        Acked::Incident(i) | Acked::Already(i) | Acked::Resolved(i) => {
            (Some(i), ack_message(&i.id, by, at, resolve))
        }
        Acked::Alerts { level_was } => (
            None,
            format!(
                "alerts of {} acknowledged by {by} at {at} (level {level_was} back to 1)",
                env.name
            ),
        ),
    };
    let fields = json!({"by": by, "at": at, "note": note, "incident": incident.map(|i| &i.id),
        "resolved": resolve, "level_number": incident.map(|i| i.level)});
    em.emit(
        "escalation.acknowledged",
        Level::Info,
        msg.clone(),
        fields.clone(),
    );
    let mut rec = fields;
    rec["env"] = json!(env.name);
    if let Err(e) = env.ledger().append(LEDGER_ACK, rec) {
        em.human(&format!(
            "cannot append the acknowledgement to the ledger: {e:#}"
        ));
    }
    let Some(inc) = incident else { return };
    let line = format!(
        "by {by} at {at}{}{}",
        note.map(|n| format!(" — {n}")).unwrap_or_default(),
        if resolve { " (resolved)" } else { "" }
    );
    if let Err(e) = set_line(env, &inc.path, ACKNOWLEDGED, &line) {
        em.human(&format!("cannot update the incident record: {e:#}"));
    }
    note_incident_level(env, &inc.id, em);
}

/// An incident acknowledged earlier, resolved now by `by`: the first
/// acknowledgement stays in the record, the event and the ledger; the
/// resolution is its own event (`escalation.resolved`) and ledger record.
fn announce_resolution(
    env: &EnvConfig,
    inc: &state::IncidentState,
    by: &str,
    note: Option<&str>,
    at: &str,
    em: &Emitter,
) {
    let first = inc.acked_by.as_deref().unwrap_or("?");
    let first_at = inc.acked_at.as_deref().unwrap_or("?");
    let msg = resolution_message(inc, by, at);
    let fields = json!({"by": by, "at": at, "note": note, "incident": inc.id,
        "acknowledged_by": first, "acknowledged_at": first_at, "level_number": inc.level});
    em.emit(
        "escalation.resolved",
        Level::Info,
        msg.clone(),
        fields.clone(),
    );
    let mut rec = fields;
    rec["env"] = json!(env.name);
    if let Err(e) = env.ledger().append(LEDGER_RESOLUTION, rec) {
        em.human(&format!(
            "cannot append the resolution to the ledger: {e:#}"
        ));
    }
    let line = format!(
        "by {first} at {first_at}{}; resolved by {by} at {at}{}",
        inc.note
            .as_deref()
            .map(|n| format!(" — {n}"))
            .unwrap_or_default(),
        note.map(|n| format!(" — {n}")).unwrap_or_default(),
    );
    if let Err(e) = set_line(env, &inc.path, ACKNOWLEDGED, &line) {
        em.human(&format!("cannot update the incident record: {e:#}"));
    }
    note_incident_level(env, &inc.id, em);
}
