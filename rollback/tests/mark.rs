//! `rollback_dhash --mark-unnecessary` (issue 16): the verdict lands in the
//! ledger in `report_dhash mark`'s shape, found by incident name or time.

#![allow(clippy::unwrap_used)]

use serde_json::json;
use testkit::{events, TestProject};

#[test]
fn a_rollback_is_marked_unnecessary_by_its_incident_or_its_time() {
    let tp = TestProject::new();
    let env = tp.env(tp.env_name());
    let ledger = env.ledger();
    let rec = ledger
        .append("rollback", json!({"env": env.name, "result": "completed", "reason": "quality gate p95_hash_time violated: x"}))
        .unwrap();
    let id = rec["ts"].as_str().unwrap().to_string();
    // The incident record's stamp, as the monitor names it (a little after the rollback).
    let t = chrono::DateTime::parse_from_rfc3339(&id).unwrap() + chrono::Duration::seconds(1);
    let incident = format!(
        "monitor_logs/incident_{}_{}.md",
        env.name,
        t.format("%Y%m%dT%H%M%S%3fZ")
    );
    let run = |wanted: &str| {
        tp.cmd("rollback_dhash")
            .args([
                "--env",
                &env.name,
                "--mark-unnecessary",
                wanted,
                "--reason",
                "traffic spike, not the release",
            ])
            .output()
            .unwrap()
    };
    let out = run(&incident);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ev = events(&out.stdout)
        .into_iter()
        .find(|e| e["event"] == "rollback.marked")
        .unwrap();
    assert_eq!(ev["rollback_ts"], id.as_str());
    let reviews = ledger.records("rollback-review").unwrap();
    let r = &reviews[0];
    assert_eq!(
        (&r["env"], &r["rollback_ts"], &r["verdict"], &r["reason"]),
        (
            &json!(env.name),
            &json!(id),
            &json!("unnecessary"),
            &json!("traffic spike, not the release")
        )
    );
    // By a prefix of its time, as report_dhash lists it; an unknown one is a usage error.
    assert_eq!(run(&id[..16]).status.code(), Some(0));
    let out = run("1999-01-01");
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ledger.records("rollback-review").unwrap().len(), 2);
}

/// The attacker's ledger (F14): an auto rollback on 11-20, a manual one on
/// 11-25, an auto one on 12-01. An incident names only the automatic
/// rollback its own watch recorded, in its own environment.
#[test]
fn an_incident_marks_only_its_own_automatic_rollback() {
    let tp = TestProject::new();
    let env = tp.env(tp.env_name());
    std::fs::create_dir_all(&env.install_root).unwrap();
    std::fs::create_dir_all(&env.log_dir).unwrap();
    let rollback = |ts: &str, reason: &str| {
        json!({"ts": ts, "kind": "rollback", "env": env.name, "result": "completed", "reason": reason})
            .to_string()
    };
    std::fs::write(
        env.ledger_path(),
        [
            rollback(
                "2026-11-20T10:05:00.000Z",
                "quality gate p95_hash_time violated: x",
            ),
            rollback("2026-11-25T08:00:00.000Z", "operator: bad config"),
            rollback(
                "2026-12-01T09:00:00.000Z",
                "quality gate low_confidence_queue violated: y",
            ),
        ]
        .join("\n")
            + "\n",
    )
    .unwrap();
    let run = |wanted: &str, reason: &str| {
        tp.cmd("rollback_dhash")
            .args([
                "--env",
                &env.name,
                "--mark-unnecessary",
                wanted,
                "--reason",
                reason,
            ])
            .output()
            .unwrap()
    };
    let refused = |wanted: &str, reason: &str, says: &str| {
        let out = run(wanted, reason);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{wanted} {reason:?}: {err}");
        assert!(err.contains(says), "{wanted}: {err}");
    };
    let name = |env: &str, stamp: &str| format!("monitor_logs/incident_{env}_{stamp}.md");
    // Days after the last rollback, and 7 days after the manual one: none is its rollback.
    refused(
        &name(&env.name, "20261202T090000000Z"),
        "x",
        "no automatic rollback",
    );
    // The manual rollback is never an incident's, even seconds before the stamp.
    refused(
        &name(&env.name, "20261125T080003000Z"),
        "x",
        "no automatic rollback",
    );
    // Another environment's incident.
    refused(
        &name("production", "20261120T100600000Z"),
        "x",
        &format!("not {}", env.name),
    );
    // An empty or blank reason.
    for blank in ["", "   "] {
        refused("2026-11-25", blank, "--reason");
    }
    assert!(env.ledger().records("rollback-review").unwrap().is_empty());

    // The incident's own rollback: by the name's stamp alone (no record file)...
    let out = run(&name(&env.name, "20261120T100600000Z"), "traffic spike");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ...and by a record whose "Rollback initiated" line bounds the search.
    let record = env
        .log_dir
        .join(format!("incident_{}_20261201T090002000Z.md", env.name));
    std::fs::write(
        &record,
        "# Incident Report\n\n## Timeline\n- Rollback initiated: 2026-12-01T08:59:30.000Z\n",
    )
    .unwrap();
    let out = run(record.to_str().unwrap(), "batch import");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(
        &record,
        "# Incident Report\n\n## Timeline\n- Rollback initiated: 2026-12-01T09:00:01.000Z\n",
    )
    .unwrap();
    refused(record.to_str().unwrap(), "x", "no automatic rollback");
    let marked: Vec<String> = env
        .ledger()
        .records("rollback-review")
        .unwrap()
        .iter()
        .map(|r| r["rollback_ts"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        marked,
        ["2026-11-20T10:05:00.000Z", "2026-12-01T09:00:00.000Z"]
    );
}
