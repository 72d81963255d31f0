//! The incident record written after an automatic rollback, following the
//! incident template of the operations guide (seed 004), with the timeline
//! filled from the events the monitor saw.

use std::path::{Path, PathBuf};

use gates_core::gates::Decision;

use crate::ts_of;

#[derive(Debug, Clone, Default)]
pub struct Timeline {
    pub deploy_started: Option<String>,
    pub monitoring_started: Option<String>,
    pub issue_detected: Option<String>,
    pub rollback_initiated: Option<String>,
    pub rollback_completed: Option<String>,
    pub service_restored: Option<String>,
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
    pub rollback_error: Option<String>,
    pub notifications: &'a [String],
}

fn or_unknown(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("[unknown]")
}

pub fn render(i: &Incident<'_>) -> String {
    let t = i.timeline;
    let outcome = match &i.rollback_error {
        None => "Rolled back to the previous release; service restored".to_string(),
        Some(e) => format!("ROLLBACK FAILED: {e} — manual intervention required"),
    };
    let minutes = match (&t.issue_detected, &t.service_restored) {
        (Some(a), Some(b)) => match (
            chrono::DateTime::parse_from_rfc3339(a),
            chrono::DateTime::parse_from_rfc3339(b),
        ) {
            (Ok(a), Ok(b)) => format!(
                "{:.1} minutes from detection to restored service",
                (b - a).num_milliseconds() as f64 / 60000.0
            ),
            _ => "[unknown]".to_string(),
        },
        _ => "[service not restored]".to_string(),
    };
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
    let notes = if i.notifications.is_empty() {
        "- none".to_string()
    } else {
        i.notifications
            .iter()
            .map(|n| format!("- {n}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
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

## Timeline
- Deployment started: {deploy_started}
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
        restored = i.restored_release.unwrap_or("[unknown]"),
        backup = i
            .backup
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "[none]".into()),
        deploy_started = or_unknown(&t.deploy_started),
        monitoring_started = or_unknown(&t.monitoring_started),
        detected = or_unknown(&t.issue_detected),
        initiated = or_unknown(&t.rollback_initiated),
        completed = or_unknown(&t.rollback_completed),
        restored_at = or_unknown(&t.service_restored),
    )
}

/// `monitor_logs/incident_<env>_<timestamp>.md`
pub fn path_for(log_dir: &Path, env: &str, t_ms: i64) -> PathBuf {
    let stamp = ts_of(t_ms).replace([':', '-', '.'], "");
    log_dir.join(format!("incident_{env}_{stamp}.md"))
}
