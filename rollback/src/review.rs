//! `rollback_dhash --mark-unnecessary INCIDENT --reason "…"`: an operator's
//! verdict that an automatic rollback was a false positive (issue 16). The
//! ledger record is the one `report_dhash mark` writes (`rollback-review`,
//! `{env, rollback_ts, verdict, reason}`), so the reports and
//! `monitor_dhash --sweep` read one thing.

use anyhow::{anyhow, Context};
use chrono::{DateTime, NaiveDateTime, Utc};
use gates_core::config::EnvConfig;
use gates_core::exit::usage_error;
use gates_core::Emitter;
use serde_json::json;

/// The ledger kind of a verdict on a rollback.
pub const REVIEW: &str = "rollback-review";

/// The rollback records (completed or failed) of the environment: their times.
fn rollback_ids(env: &EnvConfig) -> anyhow::Result<Vec<String>> {
    let recs = env.ledger().records("rollback")?;
    Ok(recs
        .iter()
        .filter(|r| matches!(r["result"].as_str(), Some("completed" | "failed")))
        .filter_map(|r| r["ts"].as_str().map(str::to_string))
        .collect())
}

/// The rollback `wanted` names: its time (or a unique prefix of it, as
/// `report_dhash` lists it), or its incident record
/// (`incident_<env>_<stamp>.md`, path or name): the last rollback recorded
/// before the incident's stamp.
pub fn find_rollback(env: &EnvConfig, wanted: &str) -> anyhow::Result<String> {
    let ids = rollback_ids(env)?;
    let list = || {
        if ids.is_empty() {
            "none".to_string()
        } else {
            ids.join(", ")
        }
    };
    if let Some(stamp) = incident_stamp(wanted) {
        return ids
            .iter()
            .rfind(|id| parse(id).is_some_and(|t| t <= stamp + chrono::Duration::seconds(5)))
            .cloned()
            .ok_or_else(|| {
                usage_error(format!(
                    "no rollback of {} is recorded before incident {wanted}; the rollbacks are: {}",
                    env.name,
                    list()
                ))
            });
    }
    if ids.iter().any(|id| id == wanted) {
        return Ok(wanted.to_string());
    }
    let matching: Vec<&String> = ids.iter().filter(|id| id.starts_with(wanted)).collect();
    match matching.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(usage_error(format!(
            "no rollback of {} is recorded at {wanted:?}; the rollbacks are: {}",
            env.name,
            list()
        ))),
        many => Err(usage_error(format!(
            "{wanted:?} names {} rollbacks of {}; give more of the time",
            many.len(),
            env.name
        ))),
    }
}

fn parse(ts: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(ts)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// `…/incident_staging_20261202T080612226Z.md` → its time.
fn incident_stamp(s: &str) -> Option<DateTime<Utc>> {
    let name = std::path::Path::new(s).file_name()?.to_str()?;
    let stem = name
        .strip_prefix("incident_")?
        .strip_suffix(".md")
        .unwrap_or(name);
    let stamp = stem.rsplit('_').next()?.strip_suffix('Z')?;
    let fmt = if stamp.len() > 15 {
        "%Y%m%dT%H%M%S%3f"
    } else {
        "%Y%m%dT%H%M%S"
    };
    NaiveDateTime::parse_from_str(stamp, fmt)
        .ok()
        .map(|t| t.and_utc())
}

/// Records the verdict and says so (`rollback.marked`).
pub fn mark_unnecessary(
    env: &EnvConfig,
    wanted: &str,
    reason: &str,
    em: &Emitter,
) -> anyhow::Result<()> {
    let id = find_rollback(env, wanted)?;
    let fields = json!({"env": env.name, "rollback_ts": id, "verdict": "unnecessary", "reason": reason,
                        "marked_with": wanted});
    env.ledger()
        .append(REVIEW, fields.clone())
        .with_context(|| format!("recording the verdict in {}", env.ledger_path().display()))
        .map_err(|e| anyhow!("{e:#}"))?;
    em.info(
        "rollback.marked",
        format!("rollback {id} of {} marked unnecessary: {reason}", env.name),
        fields,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn incident_names_give_their_time() {
        let t = super::incident_stamp("/x/monitor_logs/incident_staging_20261202T080612226Z.md");
        assert_eq!(
            t.map(|t| t.to_rfc3339()),
            Some("2026-12-02T08:06:12.226+00:00".into())
        );
        assert_eq!(super::incident_stamp("2026-12-02T08:06"), None);
    }
}
