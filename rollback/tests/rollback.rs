//! rollback_dhash against real environments: the real binaries (backup and
//! rollback), the real service started and stopped through gates_core, real
//! SQLite compared row by row, release files compared by hash.
#![allow(clippy::unwrap_used)]

#[path = "../../backup/tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use gates_core::config::EnvConfig;
use testkit::TestProject;

/// Writes a crafted zip at the given path.
type Maker = Box<dyn Fn(&Path)>;

fn rb(tp: &TestProject) -> Command {
    tp.cmd_path(Path::new(env!("CARGO_BIN_EXE_rollback_dhash")))
}

/// staging running v1 with rows, backed up, then moved on to v2 with more rows.
struct Fixture {
    tp: TestProject,
    env: EnvConfig,
    v1: String,
    v2: String,
    backup: PathBuf,
    rows_at_backup: BTreeMap<String, Vec<String>>,
    release_at_backup: BTreeMap<String, String>,
}

fn fixture() -> Fixture {
    let (tp, v1) = project_with_release(true);
    let env = tp.env("staging");
    let b1 = slim_bundle("v1", &[]);
    for i in 0..3 {
        post_image(&tp, "staging", &golden_png(&b1, i));
    }
    let backup = make_backup(&tp, "staging");
    let rows_at_backup = db_rows(&env.database);
    let release_at_backup = tree_hashes(&env.current_link());
    let mut f = Fixture {
        tp,
        env,
        v1,
        v2: String::new(),
        backup,
        rows_at_backup,
        release_at_backup,
    };
    f.v2 = move_on(&f);
    f
}

/// Moves the environment past the backup: more rows, then release v2 with another row.
fn move_on(f: &Fixture) -> String {
    let b1 = slim_bundle("v1", &[]);
    post_image(&f.tp, "staging", &golden_png(&b1, 3));
    post_image(&f.tp, "staging", &golden_png(&b1, 4));
    f.tp.stop("staging").unwrap();
    let v2 = f.tp.install("staging", &slim_bundle("v2", &[]));
    f.tp.start("staging").unwrap();
    post_image(&f.tp, "staging", &golden_png(&b1, 5));
    assert_ne!(db_rows(&f.env.database), f.rows_at_backup);
    assert_eq!(current(&f.env).as_deref(), Some(v2.as_str()));
    v2
}

fn current(env: &EnvConfig) -> Option<String> {
    fs::read_link(env.current_link())
        .ok()
        .map(|t| t.file_name().unwrap().to_string_lossy().to_string())
}

/// The environment holds exactly the backup's state: the release files, and
/// every row of the backup; other rows only from the post-rollback smoke
/// tests (inserted after `since`), none of the rows written after the backup.
fn assert_restored(f: &Fixture, since: &str, after_backup: &BTreeMap<String, Vec<String>>) {
    assert_eq!(current(&f.env).as_deref(), Some(f.v1.as_str()));
    assert_eq!(
        tree_hashes(&f.env.current_link()),
        f.release_at_backup,
        "release files"
    );
    let rows = db_rows(&f.env.database);
    assert_eq!(
        rows.keys().collect::<Vec<_>>(),
        f.rows_at_backup.keys().collect::<Vec<_>>()
    );
    for (t, want) in &f.rows_at_backup {
        let have: BTreeSet<&String> = rows[t].iter().collect();
        for r in want {
            assert!(
                have.contains(r),
                "{t}: backup row {r} missing after the rollback"
            );
        }
        for r in after_backup.get(t).into_iter().flatten() {
            if !want.contains(r) {
                assert!(
                    !have.contains(r),
                    "{t}: row {r} written after the backup survived the rollback"
                );
            }
        }
    }
    assert_eq!(
        rows["schema_migrations"],
        f.rows_at_backup["schema_migrations"]
    );
    let conn = rusqlite::Connection::open(&f.env.database).unwrap();
    let max_id = f.rows_at_backup["hashes"].len() as i64;
    let newer: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM hashes WHERE id > ?1 AND created_at < ?2",
            rusqlite::params![max_id, since],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        newer, 0,
        "rows beyond the backup's come only from the smoke tests"
    );
    assert!(!f.env.install_root.join("rollback.journal").exists());
    assert!(!f.env.install_root.join(".rollback.partial").exists());
    let h = gates_core::probe::probe_health(&f.env.health_url, std::time::Duration::from_secs(2));
    assert!(h.is_ok(), "healthy: {h:?}");
}

#[test]
fn invalid_arguments_and_non_terminal_without_force_exit_2() {
    let tp = TestProject::new();
    for args in [
        vec!["--bogus"],
        vec![],
        vec!["--env", "nosuch", "--force"],
        vec!["--env", "staging"],
    ] {
        let out = run(rb(&tp).args(&args));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", show(&out));
    }
    let out = run(rb(&tp).args(["--env", "staging"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--force") && err.contains("not a terminal"),
        "{err}"
    );
    let out = run(rb(&tp).arg("--help"));
    let help = String::from_utf8_lossy(&out.stdout);
    for want in [
        "--backup",
        "--force",
        "--skip-validation",
        "--dry-run",
        "--on-violation",
        "Exit codes",
        "75",
    ] {
        assert!(help.contains(want), "help lacks {want}");
    }
}

#[test]
fn rollback_restores_rows_and_release_exactly() {
    let f = fixture();
    let after = db_rows(&f.env.database);
    // The seeds' manual procedure, as written: find, verify, roll back.
    let (ok, text) = seed_verify_latest(f.tp.root());
    assert!(ok, "{text}");
    let since = gates_core::event::now_rfc3339();
    let out = Command::new("bash")
        .arg("-c")
        .arg(r#"LATEST_BACKUP=$(ls -1 backups/dhash_*.zip | sort -r | head -n1); exec "$0" --backup "$LATEST_BACKUP" --env staging --force"#)
        .arg(env!("CARGO_BIN_EXE_rollback_dhash"))
        .current_dir(f.tp.root())
        .env("DHASH_ROOT", f.tp.root())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let evs = events(&out);
    let mine: Vec<&str> = evs
        .iter()
        .filter(|e| {
            e["tool"] == "rollback_dhash" && e["event"].as_str().unwrap().starts_with("rollback.")
        })
        .filter_map(|e| e["event"].as_str())
        .collect();
    assert_eq!(mine.first(), Some(&"rollback.started"));
    assert_eq!(mine.last(), Some(&"rollback.completed"));
    assert!(
        mine.contains(&"rollback.verified") && !mine.contains(&"rollback.failed"),
        "{mine:?}"
    );
    let done = event(&evs, "rollback.completed").unwrap();
    assert!(done["seconds_to_healthy"].as_f64().unwrap() > 0.0);
    assert_eq!(done["release"], f.v1.as_str());
    assert_eq!(done["smoke_passed"], true);
    assert_eq!(
        event(&evs, "rollback.verified").unwrap()["sha256"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
    assert_restored(&f, &since, &after);

    // The replaced state is kept for root-cause analysis, outside backups/.
    let q = PathBuf::from(done["quarantine"].as_str().unwrap());
    assert!(q.starts_with(&f.env.install_root) && !q.starts_with(f.tp.root().join("backups")));
    assert_eq!(
        db_rows(&q.join("data/dhash.sqlite3")),
        after,
        "the replaced data, intact"
    );
    assert!(q
        .join("releases")
        .join(&f.v2)
        .join("release.json")
        .is_file());
    assert!(!f.env.releases_dir().join(&f.v2).exists());
    let rec = f.env.ledger().records("rollback").unwrap();
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0]["result"], "completed");
    assert_eq!(rec[0]["release"], f.v1.as_str());
    assert_eq!(rec[0]["from"], f.v2.as_str());
    assert_eq!(
        seed_glob(&f.tp.root().join("backups")),
        vec![f.backup.clone()]
    );
}

#[test]
fn without_backup_the_newest_verified_is_used_and_corrupt_ones_are_named() {
    let f = fixture();
    let newer = make_backup(&f.tp, "staging");
    flip_bit(&newer, None);
    let after = db_rows(&f.env.database);
    let since = gates_core::event::now_rfc3339();
    let out = run(rb(&f.tp).args(["--env", "staging", "--force"]));
    assert!(out.status.success(), "{}", show(&out));
    let evs = events(&out);
    let skipped = event(&evs, "backup.skipped").unwrap_or_else(|| panic!("{}", show(&out)));
    assert_eq!(skipped["path"], newer.to_string_lossy().as_ref());
    assert!(skipped["error"]
        .as_str()
        .unwrap()
        .contains("checksum mismatch"));
    assert_eq!(
        event(&evs, "rollback.started").unwrap()["backup"],
        f.backup.to_string_lossy().as_ref()
    );
    assert_restored(&f, &since, &after);
}

fn assert_untouched(f: &Fixture, pid: Option<u32>, rows: &BTreeMap<String, Vec<String>>) {
    assert_eq!(
        gates_core::service::running_pid(&f.env),
        pid,
        "the service was not restarted"
    );
    assert_eq!(current(&f.env).as_deref(), Some(f.v2.as_str()));
    assert_eq!(&db_rows(&f.env.database), rows);
    assert!(!f.env.install_root.join("rollback.journal").exists());
    assert!(!f.env.install_root.join(".rollback.partial").exists());
    assert!(!f.env.quarantine_dir().exists());
}

#[test]
fn corrupt_crafted_and_foreign_backups_are_refused_before_touching_anything() {
    let f = fixture();
    let pid = gates_core::service::running_pid(&f.env);
    assert!(pid.is_some());
    let rows = db_rows(&f.env.database);
    let root = f.tp.root().to_path_buf();

    // A bit flip.
    let bad = root.join("backups/dhash_staging_20000101T000000001Z.zip");
    fs::copy(&f.backup, &bad).unwrap();
    fs::copy(
        format!("{}.sha256", f.backup.display()),
        format!("{}.sha256", bad.display()),
    )
    .unwrap();
    write_sidecar(&root, &bad);
    flip_bit(&bad, None);
    let out = run(rb(&f.tp)
        .args(["--env", "staging", "--force", "--backup"])
        .arg(&bad));
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        event(&events(&out), "rollback.refused").is_some(),
        "{}",
        show(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("checksum mismatch"),
        "{}",
        show(&out)
    );
    assert_untouched(&f, pid, &rows);

    // An edited sidecar.
    fs::copy(&f.backup, &bad).unwrap();
    fs::write(
        format!("{}.sha256", bad.display()),
        format!(
            "{}  backups/dhash_staging_20000101T000000001Z.zip\n",
            "1".repeat(64)
        ),
    )
    .unwrap();
    let out = run(rb(&f.tp)
        .args(["--env", "staging", "--force", "--backup"])
        .arg(&bad));
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert_untouched(&f, pid, &rows);

    // Crafted zips with valid sidecars: traversal, absolute path, escaping link, duplicates.
    let outside = f.env.install_root.parent().unwrap().join("x");
    let crafted: Vec<(&str, Maker)> = vec![
        (
            "dotdot",
            Box::new(|p: &Path| {
                craft_zip(
                    p,
                    "staging",
                    &[
                        ("data/dhash.sqlite3", b"x", false),
                        ("data/../../x", b"evil", false),
                    ],
                )
            }),
        ),
        (
            "abs",
            Box::new(|p: &Path| {
                craft_zip(
                    p,
                    "staging",
                    &[("/tmp/dhash-rollback-test-abs", b"evil", false)],
                )
            }),
        ),
        (
            "link",
            Box::new(|p: &Path| {
                craft_zip(
                    p,
                    "staging",
                    &[
                        ("data/link", b"../../../../x", true),
                        ("data/link/y", b"evil", false),
                    ],
                )
            }),
        ),
        (
            "dup",
            Box::new(|p: &Path| craft_duplicate_zip(p, "staging")),
        ),
    ];
    for (i, (what, make)) in crafted.iter().enumerate() {
        let p = root.join(format!("backups/dhash_staging_20000101T00000001{i}Z.zip"));
        make(&p);
        write_sidecar(&root, &p);
        let out = run(rb(&f.tp)
            .args(["--env", "staging", "--force", "--backup"])
            .arg(&p));
        assert_eq!(out.status.code(), Some(1), "{what}: {}", show(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("unsafe entry")
                || String::from_utf8_lossy(&out.stderr).contains("duplicate"),
            "{what}: {}",
            show(&out)
        );
        assert!(
            !outside.exists() && !Path::new("/tmp/dhash-rollback-test-abs").exists(),
            "{what} wrote outside"
        );
        assert_untouched(&f, pid, &rows);
    }

    // Another environment's backup (the seeds' glob picks staging's when run for production).
    let prod = make_backup(&f.tp, "production");
    let (ok, text) = seed_verify_latest(f.tp.root());
    assert!(
        ok && text.contains("dhash_staging_"),
        "the glob picks staging's: {text}"
    );
    let out = run(rb(&f.tp)
        .args(["--env", "production", "--force", "--backup"])
        .arg(&f.backup));
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not \"production\"") && err.contains(&prod.to_string_lossy().to_string()),
        "names production's newest: {err}"
    );
    assert!(!f
        .tp
        .env("production")
        .install_root
        .join("rollback.journal")
        .exists());
    assert_untouched(&f, pid, &rows);

    // The dry run verifies and plans, and changes nothing either.
    let out = run(rb(&f.tp)
        .args(["--env", "staging", "--dry-run", "--backup"])
        .arg(&f.backup));
    assert!(out.status.success(), "{}", show(&out));
    let evs_plan = events(&out);
    let plan = event(&evs_plan, "rollback.planned").unwrap_or_else(|| panic!("{}", show(&out)));
    assert_eq!(plan["release"], f.v1.as_str());
    assert_eq!(plan["current_release"], f.v2.as_str());
    assert_untouched(&f, pid, &rows);
}

#[test]
fn empty_backups_folder_and_locked_environment() {
    let (tp, _) = project_with_release(false);
    let out = run(rb(&tp).args(["--env", "staging", "--force"]));
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no backups of staging"),
        "{}",
        show(&out)
    );
    fs::create_dir_all(tp.root().join("backups")).unwrap();
    let out = run(rb(&tp).args(["--env", "staging", "--force"]));
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));

    let env = tp.env("staging");
    let _lock =
        gates_core::lock::EnvLock::acquire(&env.lock_path(), "staging", "deploy_dhash").unwrap();
    let out = run(rb(&tp).args(["--env", "staging", "--force"]));
    assert_eq!(out.status.code(), Some(75), "{}", show(&out));
}

fn pipe(tp: &TestProject, args: &[&str], input: &str) -> std::process::Output {
    let mut child = rb(tp)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn ev(env: &str, event: &str, fields: serde_json::Value) -> String {
    let mut v = serde_json::json!({"ts": "2026-11-23T09:00:00.000Z", "tool": "monitor_dhash", "env": env,
                                   "event": event, "level": "critical", "msg": "p95_hash_time 2500 > 2000"});
    v.as_object_mut()
        .unwrap()
        .extend(fields.as_object().unwrap().clone());
    v.to_string()
}

#[test]
fn on_violation_acts_only_on_auto_rollback_events_of_its_environment() {
    let f = fixture();
    let pid = gates_core::service::running_pid(&f.env);
    let rows = db_rows(&f.env.database);
    let noise = [
        ev(
            "production",
            "gate.violated",
            serde_json::json!({"gate": "p95_hash_time", "action": "auto-rollback"}),
        ),
        ev(
            "staging",
            "gate.violated",
            serde_json::json!({"gate": "memory_usage", "action": "alert"}),
        ),
        ev(
            "staging",
            "deploy.healthy",
            serde_json::json!({"release": "x"}),
        ),
        "this is not json".to_string(),
    ]
    .join("\n");
    let out = pipe(
        &f.tp,
        &["--env", "staging", "--on-violation"],
        &format!("{noise}\n"),
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let evs = events(&out);
    assert_eq!(
        evs.len(),
        3,
        "upstream events forwarded unchanged: {}",
        show(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 4"),
        "malformed line reported by number"
    );
    assert!(event(&evs, "rollback.started").is_none());
    assert_untouched(&f, pid, &rows);

    // No stdin at all (CI): nothing to do.
    let out = run(rb(&f.tp).args(["--env", "staging", "--on-violation"]));
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));

    let trigger = ev(
        "staging",
        "gate.violated",
        serde_json::json!({"gate": "p95_hash_time", "action": "auto-rollback", "value": 2500}),
    );
    let since = gates_core::event::now_rfc3339();
    let out = pipe(
        &f.tp,
        &["--env", "staging", "--on-violation"],
        &format!("{noise}\n{trigger}\n"),
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "gate violated + rollback succeeded: {}",
        show(&out)
    );
    let evs = events(&out);
    assert!(
        evs.iter()
            .any(|e| e["event"] == "gate.violated" && e["tool"] == "monitor_dhash"),
        "trigger forwarded"
    );
    let done = event(&evs, "rollback.completed").unwrap_or_else(|| panic!("{}", show(&out)));
    assert!(done["reason"].as_str().unwrap().contains("p95_hash_time"));
    assert_restored(&f, &since, &rows);
    let rec = f.env.ledger().records("rollback").unwrap();
    assert!(rec[0]["reason"].as_str().unwrap().contains("p95_hash_time"));
}

#[test]
fn skip_validation_restores_an_unverifiable_backup_loudly() {
    let f = fixture();
    fs::write(
        format!("{}.sha256", f.backup.display()),
        format!("{}  backups/x.zip\n", "2".repeat(64)),
    )
    .unwrap();
    let out = run(rb(&f.tp)
        .args(["--env", "staging", "--force", "--backup"])
        .arg(&f.backup));
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let rows = db_rows(&f.env.database);
    let since = gates_core::event::now_rfc3339();
    let out = run(rb(&f.tp)
        .args([
            "--env",
            "staging",
            "--force",
            "--skip-validation",
            "--backup",
        ])
        .arg(&f.backup));
    assert!(out.status.success(), "{}", show(&out));
    let evs_warn = events(&out);
    let warn =
        event(&evs_warn, "rollback.validation-skipped").unwrap_or_else(|| panic!("{}", show(&out)));
    assert_eq!(warn["level"], "critical");
    assert!(String::from_utf8_lossy(&out.stderr).contains("WITHOUT checksum verification"));
    assert_restored(&f, &since, &rows);
    let rec = f.env.ledger().records("rollback").unwrap();
    assert_eq!(rec.last().unwrap()["skip_validation"], true);
}

#[test]
fn a_restore_that_does_not_come_up_healthy_exits_4() {
    let (tp, _) = project_with_release(false);
    // A backup of a release that crashes at start...
    let bad = tp.install("staging", &slim_bundle("v9", &[("crash_at_start", "true")]));
    let backup = make_backup(&tp, "staging");
    // ...restored over a healthy v1.
    let v1 = tp.install("staging", &slim_bundle("v1", &[]));
    tp.start("staging").unwrap();
    let out = run(rb(&tp)
        .args(["--env", "staging", "--force", "--backup"])
        .arg(&backup));
    assert_eq!(out.status.code(), Some(4), "{}", show(&out));
    let evs_failed = events(&out);
    let failed = event(&evs_failed, "rollback.failed").unwrap_or_else(|| panic!("{}", show(&out)));
    assert_eq!(failed["level"], "critical");
    let env = tp.env("staging");
    assert_eq!(
        current(&env).as_deref(),
        Some(bad.as_str()),
        "the restore itself completed"
    );
    let rec = env.ledger().records("rollback").unwrap();
    assert_eq!(rec.last().unwrap()["result"], "failed");
    assert_ne!(bad, v1);
}

/// Crashes a rollback with SIGKILL at `point`, checks the state on disk is one
/// version or the other (never a dangling link), then reruns without
/// `--backup` and checks the backup's state is fully restored.
fn crash_and_resume(f: &Fixture, point: &str) {
    let after = db_rows(&f.env.database);
    let since = gates_core::event::now_rfc3339();
    let out = run(rb(&f.tp)
        .args(["--env", "staging", "--force", "--backup"])
        .arg(&f.backup)
        .env("DHASH_TEST_CRASH_AT", point));
    assert_eq!(out.status.signal(), Some(9), "{point}: {}", show(&out));
    // Before the swap begins nothing is journaled (nor touched).
    let touched = point != "rollback-extracted";
    assert_eq!(
        f.env.install_root.join("rollback.journal").is_file(),
        touched,
        "{point}: journal"
    );
    let cur = f.env.current_link();
    assert!(
        cur.join("release.json").is_file(),
        "{point}: current is a complete release"
    );
    if point == "rollback-switched" {
        // The service is down and the restore complete on disk: exactly the backup's rows.
        assert_eq!(db_rows(&f.env.database), f.rows_at_backup, "{point}: rows");
    }
    let out = run(rb(&f.tp).args(["--env", "staging", "--force"]));
    assert!(out.status.success(), "{point} rerun: {}", show(&out));
    let evs_started = events(&out);
    let started = event(&evs_started, "rollback.started").unwrap();
    assert_eq!(started["resumed"], touched, "{point}");
    assert_eq!(started["backup"], f.backup.to_string_lossy().as_ref());
    assert_restored(f, &since, &after);
    // One service for the environment, the one the pidfile names: none left
    // behind by the killed run (issue 13: a kill between spawn and pidfile).
    let pid = gates_core::service::running_pid(&f.env);
    assert!(pid.is_some(), "{point}: the service runs after the rerun");
    assert_eq!(
        gates_core::service::service_processes(&f.env),
        pid.into_iter().collect::<Vec<_>>(),
        "{point}: stray services after the rerun"
    );
}

#[test]
fn kill_9_during_rollback_then_rerun_restores_fully_early_steps() {
    let mut f = fixture();
    for (i, point) in [
        "rollback-extracted",
        "rollback-stopped",
        "rollback-data-quarantined",
    ]
    .iter()
    .enumerate()
    {
        if i > 0 {
            f.v2 = move_on(&f);
        }
        crash_and_resume(&f, point);
    }
}

#[test]
fn kill_9_during_rollback_then_rerun_restores_fully_late_steps() {
    let mut f = fixture();
    for (i, point) in [
        "rollback-data-restored",
        "rollback-release-installed",
        "rollback-switched",
        "service-spawned",
        "rollback-started",
    ]
    .iter()
    .enumerate()
    {
        if i > 0 {
            f.v2 = move_on(&f);
        }
        crash_and_resume(&f, point);
    }
}

/// Issue 13 #1: a violation is undone once. `--on-violation` with the
/// release the violation was measured on rolls back only while that release
/// is current; the same violation again (a second watcher, a replayed
/// pipeline) is a `rollback.skipped` no-op: no restart, no quarantine.
#[test]
fn a_violation_of_a_release_no_longer_current_is_skipped_not_rolled_back_twice() {
    let f = fixture();
    let trigger = |release: &str| {
        ev(
            "staging",
            "gate.violated",
            serde_json::json!({"gate": "low_confidence_queue", "action": "auto-rollback", "release": release}),
        )
    };
    // A violation of a release that is not (or no longer) current: nothing happens.
    let pid = gates_core::service::running_pid(&f.env);
    let rows = db_rows(&f.env.database);
    let out = pipe(
        &f.tp,
        &["--env", "staging", "--on-violation"],
        &format!("{}\n", trigger("v0-long-gone")),
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let evs = events(&out);
    let skipped = event(&evs, "rollback.skipped").unwrap_or_else(|| panic!("{}", show(&out)));
    assert_eq!(skipped["release"], "v0-long-gone");
    assert_eq!(skipped["current_release"], f.v2.as_str());
    assert!(event(&evs, "rollback.started").is_none());
    assert_untouched(&f, pid, &rows);

    // What deploy recorded: both went live healthy, v2 last.
    let releases = f.env.install_root.join("releases.json");
    fs::write(
        &releases,
        serde_json::json!({"last_known_good": f.v2, "releases": {
            f.v1.as_str(): {"tag": "v1", "state": "healthy", "schema_version": 1, "updated_at": "2026-01-01T00:00:00Z"},
            f.v2.as_str(): {"tag": "v2", "state": "healthy", "schema_version": 1, "updated_at": "2026-01-02T00:00:00Z"}}})
        .to_string(),
    )
    .unwrap();

    // The real violation of v2 rolls back once...
    let out = pipe(
        &f.tp,
        &["--env", "staging", "--on-violation"],
        &format!("{}\n", trigger(&f.v2)),
    );
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    assert!(event(&events(&out), "rollback.completed").is_some());
    // ...and the release states say so (issue 13 "Release states").
    let st: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&releases).unwrap()).unwrap();
    assert_eq!(st["releases"][&f.v2]["state"], "rolled-back", "{st}");
    assert!(st["releases"][&f.v2]["reason"]
        .as_str()
        .unwrap()
        .contains("low_confidence_queue"));
    assert_eq!(st["releases"][&f.v1]["state"], "healthy", "{st}");
    assert_eq!(st["last_known_good"], f.v1.as_str(), "{st}");
    let pid = gates_core::service::running_pid(&f.env);
    let quarantined = fs::read_dir(f.env.quarantine_dir()).unwrap().count();
    assert_eq!(quarantined, 1);

    // ...and the same violation delivered again is a no-op.
    let out = pipe(
        &f.tp,
        &["--env", "staging", "--on-violation"],
        &format!("{}\n", trigger(&f.v2)),
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let evs = events(&out);
    let skipped = event(&evs, "rollback.skipped").unwrap_or_else(|| panic!("{}", show(&out)));
    assert_eq!(skipped["current_release"], f.v1.as_str());
    assert!(event(&evs, "rollback.started").is_none());
    assert_eq!(
        gates_core::service::running_pid(&f.env),
        pid,
        "not restarted"
    );
    assert_eq!(fs::read_dir(f.env.quarantine_dir()).unwrap().count(), 1);
    let rec = f.env.ledger().records("rollback").unwrap();
    let results: Vec<&str> = rec.iter().map(|r| r["result"].as_str().unwrap()).collect();
    assert_eq!(results, vec!["skipped", "completed", "skipped"]);
}

/// Issue 13 #9: a FIFO or a folder given as the backup is named for what it
/// is, promptly (a FIFO is never opened), and nothing is touched.
#[test]
fn a_fifo_or_a_folder_as_the_backup_is_named_and_refused_promptly() {
    let (tp, _) = project_with_release(false);
    let fifo = tp.root().join("backups/dhash_staging_fifo.zip");
    fs::create_dir_all(fifo.parent().unwrap()).unwrap();
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let folder = tp.root().join("backups/dhash_staging_dir.zip");
    fs::create_dir_all(&folder).unwrap();
    for (path, what) in [(&fifo, "FIFO"), (&folder, "directory")] {
        for extra in [&["--dry-run"][..], &["--force"][..]] {
            let t0 = std::time::Instant::now();
            let mut cmd = rb(&tp);
            cmd.args(["--env", "staging", "--backup"])
                .arg(path)
                .args(extra);
            let out = run(&mut cmd);
            assert!(t0.elapsed() < std::time::Duration::from_secs(15));
            assert_eq!(out.status.code(), Some(1), "{}", show(&out));
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains(what) && !err.contains("does not exist"),
                "{err}"
            );
        }
    }
}

/// Issue 14 (d): the restore completes and the restored release answers
/// health, but its post-rollback smoke tests fail (every hash request of
/// that release fails, so no golden image hashes). That is recorded as a
/// completed rollback with `smoke_passed: false` (event and ledger), the
/// library returns it (so the monitor's branch for failed smoke tests runs),
/// and `rollback_dhash` exits 4 with a critical message.
#[test]
fn failed_post_rollback_smoke_tests_are_reported_not_hidden_as_a_failed_restore() {
    let (tp, _) = project_with_release(false);
    let broken = tp.install("staging", &slim_bundle("v8", &[("failure_fraction", "1")]));
    let backup = make_backup(&tp, "staging");
    let v1 = tp.install("staging", &slim_bundle("v1", &[]));
    tp.start("staging").unwrap();
    assert_ne!(broken, v1);

    let out = run(rb(&tp)
        .args(["--env", "staging", "--force", "--backup"])
        .arg(&backup));
    assert_eq!(out.status.code(), Some(4), "{}", show(&out));
    let evs = events(&out);
    assert!(event(&evs, "rollback.failed").is_none(), "{}", show(&out));
    assert!(event(&evs, "smoke.failed").is_some(), "{}", show(&out));
    let done = event(&evs, "rollback.completed").unwrap_or_else(|| panic!("{}", show(&out)));
    assert_eq!(done["smoke_passed"], false);
    assert_eq!(done["level"], "critical");
    assert_eq!(done["release"], broken.as_str());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("smoke tests FAILED"), "{err}");

    let env = tp.env("staging");
    assert_eq!(current(&env).as_deref(), Some(broken.as_str()));
    let h = gates_core::probe::probe_health(&env.health_url, std::time::Duration::from_secs(2));
    assert!(h.is_ok(), "the restored release serves: {h:?}");
    assert!(!env.install_root.join("rollback.journal").exists());
    let rec = env.ledger().records("rollback").unwrap();
    let last = rec.last().unwrap();
    assert_eq!(last["result"], "completed", "{last}");
    assert_eq!(last["smoke_passed"], false, "{last}");
    // Not proven good: never the last known-good release this way.
    let st = gates_core::release::ReleasesState::load(&env).unwrap();
    assert!(st
        .releases
        .get(&broken)
        .is_none_or(|r| r.state != "healthy"));

    // The library's answer, which the monitor reads.
    let project = tp.project();
    let lock = gates_core::lock::EnvLock::acquire(&env.lock_path(), "staging", "test").unwrap();
    let opts = dhash_rollback::RollbackOptions {
        backup: Some(backup.clone()),
        ..Default::default()
    };
    let em = gates_core::Emitter::sink(dhash_rollback::TOOL, "staging");
    let report = dhash_rollback::rollback(&project, &env, &lock, &opts, &em)
        .expect("a completed restore with failed smoke tests is Ok");
    assert_eq!(report.smoke_passed, Some(false));
    assert_eq!(report.release.as_deref(), Some(broken.as_str()));
}

/// The dry run and the real run share one preflight: they refuse the same
/// inputs (another environment's backup, a FIFO, a file that is no zip, a
/// corrupted zip) with the same `rollback.refused` message and the same
/// error, and exit 1 having changed nothing.
#[test]
fn the_dry_run_and_the_real_run_refuse_the_same_backups_with_the_same_message() {
    let (tp, _) = project_with_release(false);
    let root = tp.root().to_path_buf();
    let staging = make_backup(&tp, "staging");

    let fifo = root.join("backups/dhash_staging_fifo.zip");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let garbage = root.join("backups/dhash_staging_20000101T000000002Z.zip");
    fs::write(&garbage, b"not a zip at all").unwrap();
    write_sidecar(&root, &garbage);
    let flipped = root.join("backups/dhash_staging_20000101T000000003Z.zip");
    fs::copy(&staging, &flipped).unwrap();
    write_sidecar(&root, &flipped);
    flip_bit(&flipped, None);

    let cases = [
        ("production", &staging, "not \"production\""),
        ("staging", &fifo, "FIFO"),
        ("staging", &garbage, "not a usable backup"),
        ("staging", &flipped, "does not verify"),
    ];
    for (env, backup, want) in cases {
        let refusal = |mode: &str| {
            let out = run(rb(&tp).args(["--env", env, mode, "--backup"]).arg(backup));
            assert_eq!(out.status.code(), Some(1), "{mode} {want}: {}", show(&out));
            let evs = events(&out);
            let refused = event(&evs, "rollback.refused")
                .unwrap_or_else(|| panic!("{mode} {want}: {}", show(&out)))["msg"]
                .as_str()
                .unwrap()
                .to_string();
            let error = String::from_utf8_lossy(&out.stderr)
                .lines()
                .find(|l| l.starts_with("rollback_dhash: error:"))
                .unwrap_or_else(|| panic!("{mode} {want}: {}", show(&out)))
                .to_string();
            assert!(refused.contains(want), "{mode}: {refused}");
            (refused, error)
        };
        assert_eq!(refusal("--dry-run"), refusal("--force"), "{want}");
        let env = tp.env(env);
        assert!(!env.install_root.join("rollback.journal").exists());
        assert!(!env.install_root.join(".rollback.partial").exists());
        assert!(!env.quarantine_dir().exists());
    }
}
