//! The incident record written after an automatic rollback, following the
//! incident template of the operations guide (seed 004), with the timeline
//! filled from the events the monitor saw. Its `Acknowledged`, `Escalation`
//! and `Tracker` lines are notify's to keep up to date (who acknowledged it
//! and when, the level reached, the tracker link: `dhash_notify::escalation`).

use std::path::{Path, PathBuf};

use gates_core::gates::Decision;

use crate::ts_of;

/// What the ledger or upstream events tell of the deploy's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeployStart {
    /// The deploy's own start time.
    Started(String),
    /// Only when it became healthy is known (a deploy record without
    /// `started_at`): the incident says so rather than call it the start.
    BecameHealthy(String),
}

#[derive(Debug, Clone, Default)]
pub struct Timeline {
    pub deploy: Option<DeployStart>,
    pub monitoring_started: Option<String>,
    pub issue_detected: Option<String>,
    pub rollback_initiated: Option<String>,
    pub rollback_completed: Option<String>,
    pub service_restored: Option<String>,
}

/// How the rollback ended, as the incident tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restore {
    /// The previous release serves again and passed its smoke tests.
    Restored,
    /// The previous release is up and healthy, but its post-rollback smoke
    /// tests failed: a failed rollback (exit 4), someone must look.
    UpSmokeFailed,
    /// The rollback did not finish.
    Failed(String),
}

impl Restore {
    /// The verdict on a rollback that returned a report.
    pub fn of_report(report: &dhash_rollback::RollbackReport) -> Restore {
        match report.smoke_passed {
            Some(false) => Restore::UpSmokeFailed,
            Some(true) | None => Restore::Restored,
        }
    }

    /// The watch's result for this restore.
    pub fn result(&self) -> crate::WatchResult {
        match self {
            Restore::Restored => crate::WatchResult::RolledBack,
            Restore::UpSmokeFailed | Restore::Failed(_) => crate::WatchResult::RollbackFailed,
        }
    }
}

pub struct Incident<'a> {
    pub env: &'a str,
    pub release: Option<&'a str>,
    pub restored_release: Option<&'a str>,
    pub backup: Option<&'a Path>,
    pub operator: String,
    /// The violation that caused the rollback, when this run saw it (a
    /// finished interrupted rollback knows only its recorded reason).
    pub violation: Option<&'a Decision>,
    /// The cause in words.
    pub cause: &'a str,
    pub other_violations: &'a [Decision],
    pub timeline: &'a Timeline,
    pub restore: Restore,
    pub notifications: &'a [String],
    /// The watch page (HTML) written next to this record, or why there is none.
    pub page: Result<&'a Path, &'a str>,
}

fn or_unknown(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("[unknown]")
}

fn outcome_line(restore: &Restore) -> String {
    match restore {
        Restore::Restored => "Rolled back to the previous release; service restored".to_string(),
        Restore::UpSmokeFailed => {
            "ROLLBACK FAILED: the previous release was restored and is up (healthy), \
but its post-rollback smoke tests FAILED — manual intervention required"
                .to_string()
        }
        Restore::Failed(e) => format!("ROLLBACK FAILED: {e} — manual intervention required"),
    }
}

fn deploy_line(deploy: &Option<DeployStart>) -> String {
    match deploy {
        Some(DeployStart::Started(t)) => format!("Deployment started: {t}"),
        Some(DeployStart::BecameHealthy(t)) => {
            format!("Deployment became healthy: {t} (its start time was not recorded)")
        }
        None => "Deployment started: [unknown]".to_string(),
    }
}

fn impact_duration(t: &Timeline, restore: &Restore) -> String {
    if *restore == Restore::UpSmokeFailed {
        return "[service not verified: the post-rollback smoke tests failed]".to_string();
    }
    let (Some(a), Some(b)) = (&t.issue_detected, &t.service_restored) else {
        return "[service not restored]".to_string();
    };
    match (
        chrono::DateTime::parse_from_rfc3339(a),
        chrono::DateTime::parse_from_rfc3339(b),
    ) {
        (Ok(a), Ok(b)) => format!(
            "{:.1} minutes from detection to restored service",
            (b - a).num_milliseconds() as f64 / 60000.0
        ),
        _ => "[unknown]".to_string(),
    }
}

fn violations_section(i: &Incident<'_>) -> String {
    let mut gates = match i.violation {
        Some(v) => format!(
            "- **{}** ({}): {} — measured {}, threshold {} {} over {}s\n",
            v.gate,
            v.action.as_str(),
            v.reason,
            v.value
                .map(|x| format!("{x:.2}"))
                .unwrap_or_else(|| "n/a".into()),
            v.threshold,
            v.unit,
            v.window_secs
        ),
        None => format!(
            "- {} (the watcher that saw it was interrupted during the rollback; a rerun finished it)\n",
            i.cause
        ),
    };
    for o in i.other_violations {
        gates.push_str(&format!(
            "- {} ({}): {}\n",
            o.gate,
            o.action.as_str(),
            o.reason
        ));
    }
    gates
}

fn notifications_section(notifications: &[String]) -> String {
    if notifications.is_empty() {
        return "- none".to_string();
    }
    notifications
        .iter()
        .map(|n| format!("- {n}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The incident record, following the template of the operations guide.
pub fn render(i: &Incident<'_>) -> String {
    let t = i.timeline;
    format!(
        "# Incident Report: Rollback {rollback_time}

## Summary
- **Environment:** {env}
- **Release Tag:** {release}
- **Rollback Time:** {rollback_time}
- **Operator:** {operator} (automatic rollback by monitor_dhash)
- **Outcome:** {outcome}
- **Restored release:** {restored}
- **Backup used:** {backup}
- **Watch page:** {page}
- **Acknowledged:** [not yet]
- **Tracker:** [none]

## Timeline
- {deploy}
- Monitoring started: {monitoring_started}
- Issue detected: {detected}
- Rollback initiated: {initiated}
- Rollback completed: {completed}
- Service restored: {restored_at}

## Quality gate violation
{gates}
## Root Cause
[To be filled by engineering team]

## Impact
- Duration: {minutes}
- Users affected: [NUMBER]
- Services impacted: dhash ({env})

## Notifications
{notes}

## Action Items
- [ ] Root cause analysis
- [ ] Fix implementation
- [ ] Additional testing
- [ ] Process improvements
",
        rollback_time = or_unknown(&t.rollback_initiated),
        env = i.env,
        release = i.release.unwrap_or("[unknown]"),
        operator = i.operator,
        outcome = outcome_line(&i.restore),
        restored = i.restored_release.unwrap_or("[unknown]"),
        backup = i
            .backup
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "[none]".into()),
        deploy = deploy_line(&t.deploy),
        monitoring_started = or_unknown(&t.monitoring_started),
        detected = or_unknown(&t.issue_detected),
        initiated = or_unknown(&t.rollback_initiated),
        completed = or_unknown(&t.rollback_completed),
        restored_at = or_unknown(&t.service_restored),
        gates = violations_section(i),
        minutes = impact_duration(t, &i.restore),
        notes = notifications_section(i.notifications),
        page = match i.page {
            Ok(p) => p.display().to_string(),
            Err(why) => format!("[none: {why}]"),
        },
    )
}

fn file_stamp(t_ms: i64) -> String {
    ts_of(t_ms).replace([':', '-', '.'], "")
}

/// `monitor_logs/incident_<env>_<timestamp>.md`
pub fn path_for(log_dir: &Path, env: &str, t_ms: i64) -> PathBuf {
    log_dir.join(format!("incident_{env}_{}.md", file_stamp(t_ms)))
}

/// `monitor_logs/watch_<env>_<timestamp>.html`: the watch page, with the
/// same stamp as the incident record of the same `t_ms`.
pub fn page_path_for(log_dir: &Path, env: &str, t_ms: i64) -> PathBuf {
    log_dir.join(format!("watch_{env}_{}.html", file_stamp(t_ms)))
}
