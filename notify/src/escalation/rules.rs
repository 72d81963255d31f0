//! The policy's rules, pure: state and time in, escalations out. The
//! runbooks' defaults: 3+ warnings of one environment within 15 minutes, or
//! a 2nd critical, move the environment to the next level; an auto-rollback
//! incident not acknowledged by its deadline moves one level, and again at
//! each further deadline, until the top.

use std::time::Duration;

use gates_core::config::EscalationPolicy;
use gates_core::Level;

use super::state::{AlertSeen, IncidentState, State};

/// Which rule raised the level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    Warnings,
    Criticals,
    AckDeadline,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Warnings => "warnings",
            Rule::Criticals => "criticals",
            Rule::AckDeadline => "ack-deadline",
        }
    }
}

/// One escalation to act on: tell level `to` (kept in the state's outbox
/// until its notice is sent).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Raise {
    pub from: u32,
    pub to: u32,
    pub rule: Rule,
    /// The alerts (titles) that caused it, or the incident's.
    pub alerts: Vec<String>,
    /// How many the rule counted them as (the alerts of one incident are one).
    pub counted: usize,
    pub incident: Option<String>,
    /// When it became due (Unix seconds).
    pub at: f64,
}

/// Records an alert and says whether it escalates the environment. Alerts
/// already counted by an escalation are not counted again, so a 4th warning
/// does not escalate a second time; three new ones do.
///
/// `id` is an upstream event's identity: one already recorded (a rerun
/// over the same events) is not counted again, so a rerun never escalates
/// a second time on the same alerts.
///
/// `incident` groups the alerts of one incident: they count as ONE toward a
/// rule. One auto-rollback sends two criticals (the gate violated, then the
/// rollback completed); counted apart, every rollback would jump to level 2
/// at once and seed 002's own path (the deploy operator verifies within 5
/// minutes, the ack deadline escalates) would never run. Seed 004's
/// "automatic after 2 critical alerts" means two critical situations: a
/// second incident, an unrelated critical, or a failed rollback (which the
/// caller leaves ungrouped: seed 004 says "Rollback failed - ESCALATE
/// IMMEDIATELY").
pub fn on_alert(
    policy: &EscalationPolicy,
    state: &mut State,
    now: f64,
    level: Level,
    title: &str,
    incident: Option<&str>,
    id: Option<&str>,
) -> Option<Raise> {
    let longest = policy.warning_window.max(policy.critical_window);
    state
        .alerts
        .retain(|a| now - a.at <= longest.as_secs_f64() && a.at <= now);
    if id.is_some() && state.alerts.iter().any(|a| a.id.as_deref() == id) {
        return None;
    }
    let (rule, count, window, since) = match level {
        Level::Warning => (
            Rule::Warnings,
            policy.warnings,
            policy.warning_window,
            state.warnings_counted_until,
        ),
        Level::Critical | Level::Error => (
            Rule::Criticals,
            policy.criticals,
            policy.critical_window,
            state.criticals_counted_until,
        ),
        Level::Debug | Level::Info => return None,
    };
    state.alerts.push(AlertSeen {
        at: now,
        level,
        title: title.to_string(),
        incident: incident.map(str::to_string),
        id: id.map(str::to_string),
    });
    let (counted, units) = in_window(&state.alerts, level, now, window, since);
    if units < count as usize {
        return None;
    }
    match rule {
        Rule::Warnings => state.warnings_counted_until = Some(now),
        _ => state.criticals_counted_until = Some(now),
    }
    // A damaged or hand-edited state (a level past the top, after the levels
    // list was shortened, or u32::MAX) never escalates downwards or overflows.
    let top = policy.top().max(1);
    let from = state.level().min(top);
    state.level = from.saturating_add(1).min(top);
    Some(Raise {
        from,
        to: state.level,
        rule,
        alerts: counted,
        counted: units,
        incident: None,
        at: now,
    })
}

/// Titles of the alerts of `level`'s kind within `window` before `now`, not
/// yet counted (after `since`), and how many they count for (the alerts of
/// one incident count once).
fn in_window(
    alerts: &[AlertSeen],
    level: Level,
    now: f64,
    window: Duration,
    since: Option<f64>,
) -> (Vec<String>, usize) {
    let hits: Vec<&AlertSeen> = alerts
        .iter()
        .filter(|a| a.level.severity() == level.severity())
        .filter(|a| since.is_none_or(|s| a.at > s) && now - a.at <= window.as_secs_f64())
        .collect();
    let mut incidents: Vec<&str> = hits.iter().filter_map(|a| a.incident.as_deref()).collect();
    incidents.sort_unstable();
    incidents.dedup();
    let units = hits.iter().filter(|a| a.incident.is_none()).count() + incidents.len();
    (hits.iter().map(|a| a.title.clone()).collect(), units)
}

/// Every deadline passed by `now` of an unacknowledged incident below the
/// top: one level each, the next deadline one `ack_deadline` later.
pub fn due(policy: &EscalationPolicy, state: &mut State, now: f64) -> Vec<Raise> {
    let mut out = Vec::new();
    for inc in state.incidents.values_mut().filter(|i| i.open()) {
        while inc.deadline <= now && inc.level < policy.top() {
            out.push(Raise {
                from: inc.level,
                to: inc.level + 1,
                rule: Rule::AckDeadline,
                alerts: vec![inc.id.clone()],
                counted: 1,
                incident: Some(inc.id.clone()),
                at: inc.deadline,
            });
            inc.level += 1;
            inc.deadline += policy.ack_deadline.as_secs_f64();
        }
    }
    out
}

/// Opens an incident's clock at level 1 (an incident already known is kept
/// as it is: the monitor and a `notify` reading its events may both report it).
pub fn open_incident(
    policy: &EscalationPolicy,
    state: &mut State,
    now: f64,
    id: &str,
    path: &std::path::Path,
    key: &str,
) -> bool {
    if state.incidents.contains_key(id) {
        return false;
    }
    state.incidents.insert(
        id.to_string(),
        IncidentState {
            id: id.to_string(),
            path: path.to_path_buf(),
            opened_at: crate::clock::rfc3339(now),
            level: 1,
            deadline: now + policy.ack_deadline.as_secs_f64(),
            key: key.to_string(),
            acked_by: None,
            acked_at: None,
            note: None,
            resolved: false,
            resolved_by: None,
            resolved_at: None,
            tracker_url: None,
            tracker_error: None,
        },
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: f64 = 60.0;

    #[test]
    fn three_warnings_in_15_minutes_escalate_once() {
        let p = EscalationPolicy::default();
        let mut s = State::default();
        assert!(on_alert(&p, &mut s, 0.0, Level::Warning, "a", None, None).is_none());
        assert!(on_alert(&p, &mut s, 5.0 * MIN, Level::Warning, "b", None, None).is_none());
        let r = on_alert(&p, &mut s, 14.0 * MIN, Level::Warning, "c", None, None).expect("raised");
        assert_eq!((r.from, r.to, r.rule), (1, 2, Rule::Warnings));
        assert_eq!(r.alerts, ["a", "b", "c"]);
        assert!(on_alert(&p, &mut s, 15.0 * MIN, Level::Warning, "d", None, None).is_none());
        let mut s = State::default();
        on_alert(&p, &mut s, 0.0, Level::Warning, "a", None, None);
        on_alert(&p, &mut s, 10.0 * MIN, Level::Warning, "b", None, None);
        assert!(on_alert(&p, &mut s, 16.0 * MIN, Level::Warning, "c", None, None).is_none());
    }

    #[test]
    fn alerts_of_one_incident_count_once() {
        let p = EscalationPolicy::default();
        let mut s = State::default();
        let g = Some("rollback:v2");
        assert!(on_alert(&p, &mut s, 0.0, Level::Critical, "violated", g, None).is_none());
        assert!(on_alert(&p, &mut s, 30.0, Level::Critical, "rolled back", g, None).is_none());
        let r = on_alert(&p, &mut s, 60.0, Level::Critical, "failed", None, None).expect("2nd");
        assert_eq!(r.alerts, ["violated", "rolled back", "failed"]);
    }

    #[test]
    fn second_critical_and_deadlines() {
        let p = EscalationPolicy::default();
        let mut s = State::default();
        assert!(on_alert(&p, &mut s, 0.0, Level::Critical, "a", None, None).is_none());
        let r = on_alert(&p, &mut s, 1.0, Level::Error, "b", None, None).expect("2nd critical");
        assert_eq!(r.rule, Rule::Criticals);
        let mut s = State::default();
        assert!(open_incident(
            &p,
            &mut s,
            0.0,
            "i",
            std::path::Path::new("i.md"),
            "k"
        ));
        assert!(due(&p, &mut s, 4.0 * MIN).is_empty());
        let r = due(&p, &mut s, 11.0 * MIN);
        assert_eq!(r.iter().map(|r| r.to).collect::<Vec<_>>(), [2, 3]);
        assert!(due(&p, &mut s, 60.0 * MIN).is_empty(), "top reached");
    }
}
