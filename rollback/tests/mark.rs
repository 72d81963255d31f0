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
