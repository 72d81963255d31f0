//! migrate_dhash end to end: the real binary against a real SQLite database
//! in a scratch project.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use rusqlite::Connection;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_migrate_dhash");

struct Proj {
    dir: tempfile::TempDir,
}

impl Proj {
    fn new() -> Proj {
        let dir = tempfile::tempdir().expect("tempdir");
        let topo = serde_json::json!({
            "dist_dir": "dist",
            "environments": {
                "staging": {
                    "install_root": ".dhash/staging",
                    "data_dir": ".dhash/staging/data",
                    "database": ".dhash/staging/data/dhash.sqlite3",
                    "service": {"kind": "local", "bind": "127.0.0.1:1"},
                    "health_url": "http://127.0.0.1:1/health",
                    "metrics_url": "http://127.0.0.1:1/metrics",
                    "queue_url": "http://127.0.0.1:1/api/dhash/queue/status"
                }
            }
        });
        fs::write(dir.path().join("environments.json"), topo.to_string()).expect("topology");
        Proj { dir }
    }
    fn root(&self) -> &Path {
        self.dir.path()
    }
    fn db(&self) -> PathBuf {
        self.root().join(".dhash/staging/data/dhash.sqlite3")
    }
    fn install_root(&self) -> PathBuf {
        self.root().join(".dhash/staging")
    }
    /// A migrations folder `name` with (file, sql) pairs.
    fn migrations(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let d = self.root().join(name);
        fs::create_dir_all(&d).expect("mkdir");
        for (f, sql) in files {
            fs::write(d.join(f), sql).expect("write migration");
        }
        d
    }
    /// A bundle-like folder dist/dhash-<tag>/ with release.json and migrations.
    fn bundle(&self, tag: &str, created_at: &str, files: &[(&str, &str)]) -> PathBuf {
        let d = self.root().join("dist").join(format!("dhash-{tag}"));
        fs::create_dir_all(d.join("migrations")).expect("mkdir");
        for (f, sql) in files {
            fs::write(d.join("migrations").join(f), sql).expect("write");
        }
        let m = serde_json::json!({"id": format!("{tag}-0000abcd"), "tag": tag, "schema_version": 1,
                                   "created_at": created_at, "files": {}});
        fs::write(d.join("release.json"), m.to_string()).expect("manifest");
        d
    }
    fn run(&self, args: &[&str]) -> Run {
        let out = Command::new(BIN)
            .args(args)
            .env("DHASH_ROOT", self.root())
            .current_dir(self.root())
            .stdin(Stdio::null())
            .output()
            .expect("run migrate_dhash");
        Run::from(out)
    }
    fn versions(&self) -> Vec<(i64, String, String)> {
        let c = Connection::open(self.db()).expect("open db");
        let mut s = c
            .prepare("SELECT version, name, checksum FROM schema_migrations ORDER BY version")
            .expect("prepare");
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("query")
            .map(|r| r.expect("row"))
            .collect()
    }
    fn has_table(&self, t: &str) -> bool {
        let c = Connection::open(self.db()).expect("open db");
        c.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type='table' AND name=?1",
            [t],
            |r| r.get::<_, i64>(0),
        )
        .expect("query")
            == 1
    }
    fn ledger(&self) -> Vec<Value> {
        let p = self.install_root().join("ledger.jsonl");
        fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("ledger json"))
            .collect()
    }
}

struct Run {
    code: i32,
    events: Vec<Value>,
    non_json: usize,
    stdout: String,
    stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        let stdout = String::from_utf8_lossy(&o.stdout).to_string();
        let parsed: Vec<Option<Value>> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).ok())
            .collect();
        let non_json = parsed.iter().filter(|v| v.is_none()).count();
        let events = parsed.into_iter().flatten().collect();
        Run {
            code: o.status.code().unwrap_or(-1),
            events,
            non_json,
            stdout,
            stderr: String::from_utf8_lossy(&o.stderr).to_string(),
        }
    }
}

impl Run {
    fn of(&self, name: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["event"] == name).collect()
    }
    fn ok(&self) -> &Self {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        assert_eq!(
            self.non_json, 0,
            "stdout carries only JSON lines:\n{}",
            self.stdout
        );
        self
    }
}

const M1: (&str, &str) = (
    "0001_create_items.up.sql",
    "CREATE TABLE items(id INTEGER PRIMARY KEY, v TEXT);",
);
const M1D: (&str, &str) = ("0001_create_items.down.sql", "DROP TABLE items;");
const M2: (&str, &str) = (
    "0002_create_tags.up.sql",
    "CREATE TABLE tags(id INTEGER PRIMARY KEY);",
);
const M2D: (&str, &str) = ("0002_create_tags.down.sql", "DROP TABLE tags;");
const M3: (&str, &str) = (
    "0003_add_source.up.sql",
    "ALTER TABLE items ADD COLUMN source TEXT;",
);
const M3D: (&str, &str) = (
    "0003_add_source.down.sql",
    "ALTER TABLE items DROP COLUMN source;",
);

#[test]
fn forward_to_target_then_all_records_checksums_and_ledger() {
    let p = Proj::new();
    let m = p.migrations("m", &[M1, M1D, M2, M2D, M3, M3D]);
    let ms = m.to_str().expect("utf8");
    let r = p.run(&["--env", "staging", "--release", ms, "--target", "2"]);
    r.ok();
    assert_eq!(r.of("migrate.applied").len(), 2);
    assert_eq!(
        r.of("migrate.planned")[0]["versions"],
        serde_json::json!([1, 2])
    );
    assert_eq!(
        p.versions().iter().map(|v| v.0).collect::<Vec<_>>(),
        vec![1, 2]
    );
    let sha = hex_sha(M1.1);
    assert_eq!(
        p.versions()[0].2,
        sha,
        "checksum is the sha256 of the .up.sql"
    );
    assert_eq!(p.versions()[0].1, "create_items");

    let r = p.run(&["--env", "staging", "--type", "forward", "--release", ms]);
    r.ok();
    assert_eq!(
        r.of("migrate.applied")
            .iter()
            .map(|e| e["version"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        vec![3]
    );
    assert_eq!(r.of("migrate.completed")[0]["schema_version"], 3);
    let led = p.ledger();
    let migs: Vec<&Value> = led.iter().filter(|l| l["kind"] == "migration").collect();
    assert_eq!(migs.len(), 3);
    assert!(migs
        .iter()
        .all(|l| l["result"] == "applied" && l["who"].is_string()));
    assert_eq!(
        dhash_migrate::current_version(&p.db()).expect("version"),
        Some(3)
    );

    // Nothing pending: a no-op that still succeeds.
    let r = p.run(&["--env", "staging", "--release", ms]);
    r.ok();
    assert!(r.of("migrate.applied").is_empty());

    // Status lists all three as applied.
    let r = p.run(&["--env", "staging", "--release", ms, "--status"]);
    r.ok();
    let st = r.of("migrate.status");
    assert_eq!(st.len(), 3);
    assert!(st.iter().all(|e| e["state"] == "applied"));
}

#[test]
fn backward_one_step_then_to_target() {
    let p = Proj::new();
    let m = p.migrations("m", &[M1, M1D, M2, M2D, M3, M3D]);
    let ms = m.to_str().expect("utf8");
    p.run(&["--env", "staging", "--release", ms]).ok();
    let r = p.run(&["--env", "staging", "--type", "backward", "--release", ms]);
    r.ok();
    assert_eq!(r.of("migrate.reverted").len(), 1);
    assert_eq!(r.of("migrate.reverted")[0]["version"], 3);
    assert_eq!(
        p.versions().iter().map(|v| v.0).collect::<Vec<_>>(),
        vec![1, 2]
    );

    let r = p.run(&[
        "--env",
        "staging",
        "--type",
        "backward",
        "--target",
        "0",
        "--release",
        ms,
    ]);
    r.ok();
    let order: Vec<i64> = r
        .of("migrate.reverted")
        .iter()
        .map(|e| e["version"].as_i64().unwrap())
        .collect();
    assert_eq!(order, vec![2, 1], "newest first");
    assert!(p.versions().is_empty());
    assert!(!p.has_table("items") && !p.has_table("tags"));
    let reverted = p
        .ledger()
        .iter()
        .filter(|l| l["result"] == "reverted")
        .count();
    assert_eq!(reverted, 3);

    // A target above the current version is a usage error.
    let r = p.run(&[
        "--env",
        "staging",
        "--type",
        "backward",
        "--target",
        "2",
        "--release",
        ms,
    ]);
    assert_eq!(r.code, 0, "nothing applied: nothing to revert");
    p.run(&["--env", "staging", "--release", ms, "--target", "1"])
        .ok();
    let r = p.run(&[
        "--env",
        "staging",
        "--type",
        "backward",
        "--target",
        "3",
        "--release",
        ms,
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
}

#[test]
fn failing_migration_keeps_earlier_ones_and_rolls_back_its_own() {
    let p = Proj::new();
    let bad = (
        "0002_broken.up.sql",
        "CREATE TABLE half_done(x);\nINSERT INTO no_such_table VALUES (1);",
    );
    let m = p.migrations("m", &[M1, M1D, bad, M3, M3D]);
    let r = p.run(&["--env", "staging", "--release", m.to_str().expect("utf8")]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let failed = r.of("migrate.failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["version"], 2);
    let err = failed[0]["error"].as_str().expect("error");
    assert!(
        err.contains("no such table: no_such_table"),
        "SQLite error in the event: {err}"
    );
    assert!(
        r.stderr.contains("0002_broken") && r.stderr.contains("no such table"),
        "{}",
        r.stderr
    );
    assert_eq!(
        p.versions().iter().map(|v| v.0).collect::<Vec<_>>(),
        vec![1],
        "0001 stays applied and recorded"
    );
    assert!(p.has_table("items"));
    assert!(
        !p.has_table("half_done"),
        "the failing migration's own transaction was rolled back"
    );
    let led = p.ledger();
    assert_eq!(led.iter().filter(|l| l["result"] == "applied").count(), 1);
    let f: Vec<&Value> = led.iter().filter(|l| l["result"] == "failed").collect();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0]["version"], 2);
    assert!(r.of("migrate.completed").is_empty());
}

#[test]
fn edited_applied_migration_is_refused_before_anything() {
    let p = Proj::new();
    let m = p.migrations("m", &[M1, M1D]);
    let ms = m.to_str().expect("utf8");
    p.run(&["--env", "staging", "--release", ms]).ok();
    fs::write(
        m.join(M1.0),
        "CREATE TABLE items(id INTEGER PRIMARY KEY, v TEXT, extra TEXT);",
    )
    .expect("edit");
    fs::write(m.join(M2.0), M2.1).expect("new pending");
    let r = p.run(&["--env", "staging", "--release", ms]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("0001_create_items was edited after it was applied"),
        "{}",
        r.stderr
    );
    assert!(
        r.of("migrate.planned").is_empty(),
        "refused before planning"
    );
    assert_eq!(
        p.versions().iter().map(|v| v.0).collect::<Vec<_>>(),
        vec![1],
        "0002 not applied"
    );
    assert!(!p.has_table("tags"));
    // Status shows it as modified.
    let r = p.run(&["--env", "staging", "--release", ms, "--status"]);
    r.ok();
    assert_eq!(r.of("migrate.status")[0]["state"], "modified");
    assert_eq!(r.of("migrate.status")[1]["state"], "pending");
}

#[test]
fn missing_down_file_refuses_backward_before_anything_runs() {
    let p = Proj::new();
    // 0002 can be reverted, 0001 cannot: reverting to 0 must not revert 0002 first.
    let m = p.migrations("m", &[M1, M2, M2D]);
    let ms = m.to_str().expect("utf8");
    p.run(&["--env", "staging", "--release", ms]).ok();
    let r = p.run(&[
        "--env",
        "staging",
        "--type",
        "backward",
        "--target",
        "0",
        "--release",
        ms,
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("0001_create_items.down.sql is missing"),
        "{}",
        r.stderr
    );
    assert!(r.of("migrate.reverted").is_empty());
    assert_eq!(
        p.versions().iter().map(|v| v.0).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(p.has_table("tags"));
}

#[test]
fn dry_run_without_database_lists_sql_and_creates_nothing() {
    let p = Proj::new();
    p.bundle("v1", "2026-01-01T00:00:00Z", &[M1, M1D]);
    p.bundle("v2", "2026-02-01T00:00:00Z", &[M1, M1D, M2, M2D]);
    let r = p.run(&["--env", "staging", "--dry-run", "--tag", "v2"]);
    r.ok();
    assert!(
        !p.install_root().exists(),
        "dry run created {}",
        p.install_root().display()
    );
    // The source is said on stderr.
    assert!(r.stderr.contains("dhash-v2"), "{}", r.stderr);
    let planned = r.of("migrate.planned");
    assert_eq!(planned[0]["versions"], serde_json::json!([1, 2]));
    assert_eq!(planned[0]["dry_run"], true);
    assert_eq!(planned[0]["steps"][1]["sql"], M2.1);
    assert!(
        r.stderr.contains("would apply 0002_create_tags") && r.stderr.contains("CREATE TABLE tags"),
        "{}",
        r.stderr
    );
    assert!(r.of("migrate.applied").is_empty());

    // With a database at v1, the dry run lists only 0002, and backward lists the down SQL.
    p.run(&["--env", "staging", "--release", "v1"]).ok();
    let before = fs::read(p.db()).expect("db");
    let r = p.run(&["--env", "staging", "--dry-run", "--release", "v2"]);
    r.ok();
    assert_eq!(
        r.of("migrate.planned")[0]["versions"],
        serde_json::json!([2])
    );
    let r = p.run(&[
        "--env",
        "staging",
        "--dry-run",
        "--type",
        "backward",
        "--release",
        "v2",
    ]);
    r.ok();
    assert_eq!(r.of("migrate.planned")[0]["steps"][0]["sql"], M1D.1);
    assert_eq!(
        fs::read(p.db()).expect("db"),
        before,
        "dry runs leave the database unchanged"
    );

    // The PR artifact: both streams redirected into one readable file.
    let log = p.root().join("migrate-dryrun.log");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{BIN} --dry-run --env staging --release v2 > {} 2>&1",
            log.display()
        ))
        .env("DHASH_ROOT", p.root())
        .stdin(Stdio::null())
        .status()
        .expect("sh");
    assert!(status.success());
    let text = fs::read_to_string(&log).expect("log");
    assert!(
        text.contains("would apply 0002_create_tags") && text.contains("migrate.completed"),
        "{text}"
    );
}

#[test]
fn release_tag_errors_and_lock_busy() {
    let p = Proj::new();
    p.bundle("v1", "2026-01-01T00:00:00Z", &[M1, M1D]);
    let r = p.run(&["--env", "staging", "--release", "nope"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("available tags: v1"), "{}", r.stderr);

    let lock =
        gates_core::lock::EnvLock::acquire(&p.install_root().join(".lock"), "staging", "test")
            .expect("hold the lock");
    let r = p.run(&["--env", "staging", "--release", "v1"]);
    assert_eq!(r.code, 75, "{}", r.stderr);
    assert!(r.stderr.contains("locked"), "{}", r.stderr);
    assert!(!p.db().exists(), "nothing done while locked");
    // A dry run does not need the lock.
    p.run(&["--env", "staging", "--release", "v1", "--dry-run"])
        .ok();
    drop(lock);
    p.run(&["--env", "staging", "--release", "v1"]).ok();
    assert_eq!(p.versions().len(), 1);

    // --installed: the current release's migrations, not dist/'s.
    let rel = p.install_root().join("releases/cur-1");
    fs::create_dir_all(rel.join("migrations")).expect("mkdir");
    for (f, sql) in [M1, M1D, M2, M2D] {
        fs::write(rel.join("migrations").join(f), sql).expect("write");
    }
    fs::write(
        rel.join("release.json"),
        r#"{"id":"cur-1","tag":"cur","schema_version":2,"created_at":"2026-03-01T00:00:00Z","files":{}}"#,
    )
    .expect("manifest");
    std::os::unix::fs::symlink("releases/cur-1", p.install_root().join("current")).expect("link");
    let r = p.run(&["--env", "staging", "--installed"]);
    r.ok();
    assert!(
        r.stderr.contains("the current release cur-1"),
        "{}",
        r.stderr
    );
    assert_eq!(r.of("migrate.applied")[0]["version"], 2);
    assert_eq!(r.of("migrate.planned")[0]["release"], "cur-1");
}

#[test]
fn invalid_arguments_exit_2() {
    let p = Proj::new();
    for args in [
        vec!["--env", "staging", "--type", "sideways"],
        vec!["--type", "forward"],
        vec!["--env", "staging", "--target", "-1"],
        vec!["--env", "nowhere", "--dry-run"],
        vec!["--env", "staging", "--bogus"],
    ] {
        let r = p.run(&args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stdout.is_empty(), "{args:?}: no events on a usage error");
    }
    let r = p.run(&["--env", "nowhere", "--dry-run"]);
    assert!(
        r.stderr.contains("staging"),
        "unknown env lists known ones: {}",
        r.stderr
    );
    let help = p.run(&["--help"]);
    assert_eq!(help.code, 0);
    assert!(help.stdout.trim_end().ends_with(
        gates_core::exit::EXIT_CODES_HELP
            .lines()
            .last()
            .unwrap_or("")
    ));
}

fn hex_sha(text: &str) -> String {
    dhash_migrate::migration::sha256_hex(text.as_bytes())
}

// ---------------------------------------------------------------------------
// The release being deployed, refusals that protect a live environment.

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=test", "-c", "user.email=test@example.com"])
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgSign=false",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Every file under `dir` with its bytes.
fn listing(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if e.file_type().expect("type").is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), fs::read(&p).unwrap_or_default()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn without_a_tag_the_checkouts_release_is_planned_then_applied() {
    // The sibling dhash-service bundles this checkout (no Cargo.toml here).
    testkit::bin_path("dhash-service");
    let p = Proj::new();
    fs::write(p.root().join(".gitignore"), "/.dhash/\n/dist/\n*.partial\n").expect("gitignore");
    p.migrations("dhash-service/migrations", &[M1, M1D, M2, M2D]);
    git(p.root(), &["init", "-q"]);
    git(p.root(), &["add", "-A"]);
    git(p.root(), &["commit", "-q", "-m", "first"]);
    let rev = git(p.root(), &["rev-parse", "--short", "HEAD"]);
    let tag = format!("v{}-{rev}", env!("CARGO_PKG_VERSION"));

    // A fresh clone: the dry run shows the real plan and changes no file.
    let before = listing(p.root());
    let r = p.run(&["--env", "staging", "--dry-run"]);
    r.ok();
    assert_eq!(
        r.of("migrate.planned")[0]["versions"],
        serde_json::json!([1, 2])
    );
    assert!(r.stderr.contains(&tag), "{}", r.stderr);
    assert_eq!(listing(p.root()), before, "the dry run changed a file");
    let r = p.run(&["--env", "staging", "--status"]);
    r.ok();
    assert_eq!(r.of("migrate.status").len(), 2);
    assert_eq!(listing(p.root()), before, "--status changed a file");

    // For real: the checkout's bundle is built into dist/ and applied.
    let r = p.run(&["--env", "staging", "--type", "forward"]);
    r.ok();
    assert_eq!(r.of("migrate.applied").len(), 2);
    assert!(p
        .root()
        .join(format!("dist/dhash-{tag}/release.json"))
        .is_file());
    // Again (seed 002 after a deploy): nothing pending is success.
    let r = p.run(&["--env", "staging", "--type", "forward"]);
    r.ok();
    assert!(r.of("migrate.applied").is_empty());
    assert!(r.stderr.contains("reusing"), "{}", r.stderr);
    assert_eq!(r.of("migrate.completed").len(), 1);

    // --tag of a git tag: that tag's migrations, not the checkout's.
    git(p.root(), &["tag", "v1"]);
    p.migrations("dhash-service/migrations", &[M3, M3D]);
    git(p.root(), &["add", "-A"]);
    git(p.root(), &["commit", "-q", "-m", "source column"]);
    let r = p.run(&["--env", "staging", "--tag", "v1", "--dry-run"]);
    r.ok();
    assert!(r.stderr.contains("from git tag v1"), "{}", r.stderr);
    assert_eq!(
        r.of("migrate.planned")[0]["versions"],
        serde_json::json!([]),
        "v1 has 0001 and 0002 only"
    );
    let r = p.run(&["--env", "staging", "--dry-run"]);
    r.ok();
    assert_eq!(
        r.of("migrate.planned")[0]["versions"],
        serde_json::json!([3]),
        "the checkout has 0003"
    );
    assert!(
        !p.root().join("dist/dhash-v1").exists(),
        "dry runs build nothing into dist/"
    );

    // --installed when nothing is deployed: said, exit 2.
    let r = p.run(&["--env", "staging", "--installed", "--dry-run"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("nothing is deployed"), "{}", r.stderr);
    // --tag of an unknown tag: both ways to get a bundle.
    let r = p.run(&["--env", "staging", "--tag", "v9", "--dry-run"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("dhash-service bundle --tag v9") && r.stderr.contains("git tag v9"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_pending_rollback_journal_is_respected() {
    let p = Proj::new();
    p.bundle("v1", "2026-01-01T00:00:00Z", &[M1, M1D]);
    fs::create_dir_all(p.install_root()).expect("mkdir");
    let journal = p.install_root().join("rollback.journal");
    fs::write(&journal, "{}").expect("journal");
    for args in [
        vec!["--env", "staging", "--tag", "v1"],
        vec!["--env", "staging", "--tag", "v1", "--dry-run"],
        vec!["--env", "staging", "--tag", "v1", "--type", "backward"],
    ] {
        let r = p.run(&args);
        assert_eq!(r.code, 1, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains("interrupted rollback")
                && r.stderr.contains(&journal.display().to_string())
                && r.stderr.contains("rollback_dhash --env staging"),
            "{}",
            r.stderr
        );
        assert!(r.of("migrate.applied").is_empty());
        assert!(!p.db().exists(), "{args:?}: nothing was done");
    }
    // A rollback running right now holds the lock beside its journal: busy
    // (75), not "interrupted" (issue 13 fault matrix).
    let lock =
        gates_core::lock::EnvLock::acquire(&p.install_root().join(".lock"), "staging", "rollback")
            .expect("hold the lock");
    for args in [
        vec!["--env", "staging", "--tag", "v1"],
        vec!["--env", "staging", "--tag", "v1", "--dry-run"],
    ] {
        let r = p.run(&args);
        assert_eq!(r.code, 75, "{args:?}: {}", r.stderr);
        assert!(!r.stderr.contains("interrupted rollback"), "{}", r.stderr);
    }
    drop(lock);
    // --status only reads: it warns and reports.
    let r = p.run(&["--env", "staging", "--tag", "v1", "--status"]);
    r.ok();
    assert!(r.stderr.contains("interrupted rollback"), "{}", r.stderr);
    fs::remove_file(&journal).expect("rm");
    p.run(&["--env", "staging", "--tag", "v1"]).ok();
    assert_eq!(p.versions().len(), 1);
}

#[test]
fn backward_below_the_deployed_release_needs_force() {
    let p = Proj::new();
    // A deployed release that needs schema version 2.
    let rel = p.install_root().join("releases/cur-1");
    fs::create_dir_all(rel.join("migrations")).expect("mkdir");
    for (f, sql) in [M1, M1D, M2, M2D, M3, M3D] {
        fs::write(rel.join("migrations").join(f), sql).expect("write");
    }
    fs::write(
        rel.join("release.json"),
        r#"{"id":"cur-1","tag":"cur","schema_version":2,"created_at":"2026-03-01T00:00:00Z","files":{}}"#,
    )
    .expect("manifest");
    std::os::unix::fs::symlink("releases/cur-1", p.install_root().join("current")).expect("link");
    p.run(&["--env", "staging", "--installed"]).ok();
    assert_eq!(p.versions().len(), 3);

    // 3 -> 2 keeps what cur-1 needs: allowed.
    p.run(&["--env", "staging", "--installed", "--type", "backward"])
        .ok();
    assert_eq!(p.versions().len(), 2);
    // 2 -> 1 drops below it: refused, in the dry run too, nothing changed.
    let before = fs::read(p.db()).expect("db");
    for extra in [vec![], vec!["--dry-run"]] {
        let mut args = vec!["--env", "staging", "--installed", "--type", "backward"];
        args.extend(extra);
        let r = p.run(&args);
        assert_eq!(r.code, 1, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains("schema version 1")
                && r.stderr.contains("schema version 2")
                && r.stderr.contains("cur-1")
                && r.stderr.contains("--force"),
            "{}",
            r.stderr
        );
        assert!(r.of("migrate.reverted").is_empty());
    }
    assert_eq!(fs::read(p.db()).expect("db"), before);
    // --force: done knowingly.
    let r = p.run(&[
        "--env",
        "staging",
        "--installed",
        "--type",
        "backward",
        "--force",
    ]);
    r.ok();
    assert_eq!(r.of("migrate.reverted").len(), 1);
    assert_eq!(p.versions().len(), 1);
}
