//! The incident record's facts, without a service: the deploy's start as
//! the ledger tells it, and a restore whose smoke tests failed.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use dhash_monitor::incident::{self, DeployStart, Incident, Restore, Timeline};
use dhash_monitor::WatchResult;
use gates_core::Exit;
use serde_json::json;
use testkit::TestProject;

fn render(timeline: &Timeline, restore: Restore) -> String {
    render_with_page(timeline, restore, Err("not written"))
}

fn render_with_page(
    timeline: &Timeline,
    restore: Restore,
    page: Result<&std::path::Path, &str>,
) -> String {
    incident::render(&Incident {
        env: "staging",
        release: Some("v2"),
        restored_release: Some("v1"),
        backup: None,
        operator: "tester".into(),
        violation: None,
        cause: "quality gate health_failures violated",
        other_violations: &[],
        timeline,
        restore,
        notifications: &[],
        page,
    })
}

/// Issue 14 (a): a deploy record with `started_at` gives the deploy's start;
/// one without it tells only when the deploy became healthy (its own time),
/// and the incident says so instead of calling that the start.
#[test]
fn the_deploy_start_comes_from_started_at_else_is_labelled_became_healthy() {
    let tp = TestProject::new();
    let env = tp.env(tp.env_name());
    let ledger = env.ledger();
    let old = ledger
        .append("deploy", json!({"release": "r-old", "result": "healthy"}))
        .unwrap();
    ledger
        .append(
            "deploy",
            json!({"release": "r-new", "result": "healthy", "started_at": "2026-01-02T03:04:05.000Z"}),
        )
        .unwrap();
    let healthy_at = old["ts"].as_str().unwrap().to_string();

    let started = dhash_monitor::ledger::deploy_start(&env, Some("r-new"));
    assert_eq!(
        started,
        Some(DeployStart::Started("2026-01-02T03:04:05.000Z".into()))
    );
    let only_healthy = dhash_monitor::ledger::deploy_start(&env, Some("r-old"));
    assert_eq!(
        only_healthy,
        Some(DeployStart::BecameHealthy(healthy_at.clone()))
    );

    let text = render(
        &Timeline {
            deploy: only_healthy,
            ..Timeline::default()
        },
        Restore::Restored,
    );
    assert!(
        text.contains(&format!("- Deployment became healthy: {healthy_at}")),
        "{text}"
    );
    assert!(!text.contains("Deployment started"), "{text}");
}

/// Issue 14 (d): rollback restored the previous release and it is healthy,
/// but its post-rollback smoke tests failed: a failed rollback (exit 4), and
/// the incident says the restore is up but the smoke tests failed.
#[test]
fn a_restore_whose_smoke_tests_failed_is_a_failed_rollback() {
    let report = dhash_rollback::RollbackReport {
        backup: PathBuf::from("/backups/b.tar.gz"),
        release: Some("v1".into()),
        seconds_to_healthy: 3.0,
        smoke_passed: Some(false),
    };
    let restore = Restore::of_report(&report);
    assert_eq!(restore, Restore::UpSmokeFailed);
    assert_eq!(restore.result(), WatchResult::RollbackFailed);
    assert_eq!(restore.result().exit(), Exit::RollbackFailed);
    let text = render(&Timeline::default(), restore);
    assert!(
        text.contains("ROLLBACK FAILED")
            && text.contains("is up")
            && text.contains("smoke tests FAILED"),
        "{text}"
    );
    assert!(!text.contains("service restored"), "{text}");

    let passed = dhash_rollback::RollbackReport {
        smoke_passed: Some(true),
        ..report
    };
    assert_eq!(
        Restore::of_report(&passed).result().exit(),
        Exit::GateRolledBack
    );
}

/// Issue 15: the record links the watch page written next to it (same
/// stamp), or says why there is none.
#[test]
fn the_record_links_the_watch_page_or_says_why_none() {
    let dir = std::path::Path::new("/logs");
    let t_ms = 1_764_650_000_123;
    let page = incident::page_path_for(dir, "staging", t_ms);
    let record = incident::path_for(dir, "staging", t_ms);
    assert_eq!(
        page.file_stem()
            .unwrap()
            .to_string_lossy()
            .replace("watch_", ""),
        record
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .replace("incident_", ""),
        "one stamp for both"
    );
    assert_eq!(page.extension().unwrap(), "html");
    let timeline = Timeline::default();
    let linked = render_with_page(&timeline, Restore::Restored, Ok(&page));
    assert!(
        linked.contains(&format!("**Watch page:** {}", page.display())),
        "{linked}"
    );
    let none = render(&timeline, Restore::Restored);
    assert!(
        none.contains("**Watch page:** [none: not written]"),
        "{none}"
    );
}
