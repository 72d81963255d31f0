//! `rollback_dhash --mark-unnecessary INCIDENT --reason "…"`: an operator's
//! verdict that an automatic rollback was a false positive (issue 16). The
//! ledger record is the one `report_dhash mark` writes (`rollback-review`,
//! `{env, rollback_ts, verdict, reason}`), so the reports and
//! `monitor_dhash --sweep` read one thing.

use std::path::Path;

use anyhow::{anyhow, Context};
use chrono::{DateTime, NaiveDateTime, Utc};
use gates_core::config::EnvConfig;
use gates_core::exit::usage_error;
use gates_core::Emitter;
use serde_json::json;

/// The ledger kind of a verdict on a rollback.
pub const REVIEW: &str = "rollback-review";

/// A rollback record (completed or failed) of the environment.
struct Rollback {
    ts: String,
    auto: bool,
}

/// The rollback records (completed or failed) of the environment.
fn rollbacks(env: &EnvConfig) -> anyhow::Result<Vec<Rollback>> {
    let recs = env.ledger().records("rollback")?;
    Ok(recs
        .iter()
        .filter(|r| matches!(r["result"].as_str(), Some("completed" | "failed")))
        .filter_map(|r| {
            Some(Rollback {
                ts: r["ts"].as_str()?.to_string(),
                auto: is_auto(r["reason"].as_str()),
            })
        })
        .collect())
}

/// A rollback that acted on a gate: the monitor's reason ("quality gate X
/// violated/inconclusive…") or `--on-violation`'s ("X violated: …"), as
/// report_dhash tells auto from manual rollbacks.
fn is_auto(reason: Option<&str>) -> bool {
    reason.is_some_and(|r| r.contains(" violated: ") || r.starts_with("quality gate "))
}

/// How long before its record's stamp an incident's rollback may have been
/// recorded, when the record's "Rollback initiated" line cannot be read. The
/// monitor records the rollback, writes the watch page, then the incident
/// record: seconds apart.
const INCIDENT_REACH: chrono::Duration = chrono::Duration::minutes(10);

/// The rollback `wanted` names: its time (or a unique prefix of it, as
/// `report_dhash` lists it), or its incident record
/// (`incident_<env>_<stamp>.md`, path or name): the automatic rollback the
/// incident's watch recorded, between the record's "Rollback initiated" time
/// (else [`INCIDENT_REACH`] before its stamp) and its stamp.
pub fn find_rollback(env: &EnvConfig, wanted: &str) -> anyhow::Result<String> {
    let all = rollbacks(env)?;
    let list = || {
        if all.is_empty() {
            "none".to_string()
        } else {
            all.iter()
                .map(|r| format!("{} ({})", r.ts, if r.auto { "auto" } else { "manual" }))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    if let Some(incident) = incident_name(wanted) {
        if incident.env != env.name {
            return Err(usage_error(format!(
                "incident {wanted} is of environment {:?}, not {}; give --env {}",
                incident.env, env.name, incident.env
            )));
        }
        let from = initiated(env, wanted).unwrap_or(incident.stamp - INCIDENT_REACH);
        let until = incident.stamp + chrono::Duration::seconds(5);
        return all
            .iter()
            .filter(|r| r.auto)
            .rfind(|r| parse(&r.ts).is_some_and(|t| from <= t && t <= until))
            .map(|r| r.ts.clone())
            .ok_or_else(|| {
                usage_error(format!(
                    "no automatic rollback of {} is recorded for incident {wanted} (between {} and {}); \
                     the rollbacks are: {}; give the rollback's time instead",
                    env.name,
                    from.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    until.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    list()
                ))
            });
    }
    if all.iter().any(|r| r.ts == wanted) {
        return Ok(wanted.to_string());
    }
    let matching: Vec<&String> = all
        .iter()
        .map(|r| &r.ts)
        .filter(|id| id.starts_with(wanted))
        .collect();
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

/// The environment and time an incident record's name gives.
struct IncidentName {
    env: String,
    stamp: DateTime<Utc>,
}

/// `…/incident_staging_20261202T080612226Z.md` → staging and its time.
fn incident_name(s: &str) -> Option<IncidentName> {
    let name = Path::new(s).file_name()?.to_str()?;
    let stem = name.strip_prefix("incident_")?;
    let stem = stem.strip_suffix(".md").unwrap_or(stem);
    let (env, stamp) = stem.rsplit_once('_')?;
    let stamp = stamp.strip_suffix('Z')?;
    let fmt = if stamp.len() > 15 {
        "%Y%m%dT%H%M%S%3f"
    } else {
        "%Y%m%dT%H%M%S"
    };
    let stamp = NaiveDateTime::parse_from_str(stamp, fmt).ok()?.and_utc();
    Some(IncidentName {
        env: env.to_string(),
        stamp,
    })
}

/// The "Rollback initiated" time of the incident record, read from `wanted`
/// as given or from the monitor's log folder; None if neither can be read.
fn initiated(env: &EnvConfig, wanted: &str) -> Option<DateTime<Utc>> {
    let given = Path::new(wanted);
    let text = std::fs::read_to_string(given)
        .ok()
        .or_else(|| std::fs::read_to_string(env.log_dir.join(given.file_name()?)).ok())?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("- Rollback initiated: "))
        .and_then(|t| parse(t.trim()))
}

/// Records the verdict and says so (`rollback.marked`).
pub fn mark_unnecessary(
    env: &EnvConfig,
    wanted: &str,
    reason: &str,
    em: &Emitter,
) -> anyhow::Result<()> {
    if reason.trim().is_empty() {
        return Err(usage_error(
            "--reason is empty: say why the rollback was unnecessary (it is recorded)",
        ));
    }
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
    fn incident_names_give_their_env_and_time() {
        let i = super::incident_name("/x/monitor_logs/incident_eu_west_20261202T080612226Z.md");
        assert_eq!(
            i.map(|i| (i.env, i.stamp.to_rfc3339())),
            Some(("eu_west".into(), "2026-12-02T08:06:12.226+00:00".into()))
        );
        assert!(super::incident_name("2026-12-02T08:06").is_none());
    }
}
