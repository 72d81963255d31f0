//! deploy_dhash end to end: the real binary, real bundles built by
//! `dhash-service bundle`, the real service started on a free loopback port,
//! real SQLite.
//!
//! Bundles are built by a stripped copy of the workspace's `dhash-service`
//! (the same program without debug symbols: `bundle` ships the executable that
//! runs it), so hashing a bundle costs ~15 MB, not ~90 MB, in debug builds.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{json, Value};
use testkit::TestProject;

const BIN: &str = env!("CARGO_BIN_EXE_deploy_dhash");

/// A stripped copy of dhash-service (falls back to the original without `strip`).
fn service_bin() -> PathBuf {
    static BIN_PATH: OnceLock<PathBuf> = OnceLock::new();
    BIN_PATH
        .get_or_init(|| {
            let original = testkit::bin_path("dhash-service");
            let dir = testkit::target_dir().join("deploy-tests");
            fs::create_dir_all(&dir).expect("mkdir");
            let out = dir.join("dhash-service");
            let mtime = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
            if out.is_file() && mtime(&out) >= mtime(&original) {
                return out;
            }
            let tmp = dir.join(format!(".dhash-service.{}.partial", std::process::id()));
            let ok = Command::new("strip")
                .arg("-o")
                .arg(&tmp)
                .arg(&original)
                .status()
                .is_ok_and(|s| s.success())
                && fs::rename(&tmp, &out).is_ok();
            if ok {
                out
            } else {
                original
            }
        })
        .clone()
}

/// A test project whose services fail fast (short start and health timeouts).
fn project() -> TestProject {
    let tp = TestProject::new();
    tp.edit_topology(|t| {
        for env in ["staging", "production"] {
            t["environments"][env]["service"]["start_timeout"] = json!("10s");
            t["environments"][env]["service"]["stop_timeout"] = json!("3s");
            t["environments"][env]["health"] =
                json!({"checks_required": 3, "interval": 0.2, "timeout": "10s"});
        }
    });
    tp
}

/// A migration (name, up, down) beyond the built-in ones.
type Extra<'a> = (&'a str, &'a str, Option<&'a str>);

const NOTE: Extra = (
    "0003_add_note",
    "ALTER TABLE hashes ADD COLUMN note TEXT;",
    Some("ALTER TABLE hashes DROP COLUMN note;"),
);
const LABELS: Extra = (
    "0004_create_labels",
    "CREATE TABLE labels (id INTEGER PRIMARY KEY, hash_id INTEGER, label TEXT);",
    Some("DROP TABLE labels;"),
);

/// Builds dist/dhash-<tag>/ with the built-in migrations plus `extra`.
fn bundle(tp: &TestProject, tag: &str, faults: &[(&str, &str)], extra: &[Extra]) -> PathBuf {
    let mdir = tp.root().join(format!("migrations-{tag}"));
    fs::create_dir_all(&mdir).expect("mkdir");
    let builtin = testkit::workspace_root().join("dhash-service/migrations");
    for e in fs::read_dir(&builtin).expect("built-in migrations") {
        let e = e.expect("entry");
        fs::copy(e.path(), mdir.join(e.file_name())).expect("copy migration");
    }
    for (name, up, down) in extra {
        fs::write(mdir.join(format!("{name}.up.sql")), up).expect("up");
        if let Some(d) = down {
            fs::write(mdir.join(format!("{name}.down.sql")), d).expect("down");
        }
    }
    let mut cmd = tp.cmd_path(&service_bin());
    cmd.args(["bundle", "--tag", tag, "--out"])
        .arg(tp.root().join("dist"))
        .arg("--migrations")
        .arg(&mdir);
    for (k, v) in faults {
        cmd.arg("--fault").arg(format!("{k}={v}"));
    }
    let out = cmd.output().expect("dhash-service bundle");
    assert!(
        out.status.success(),
        "bundle {tag}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    tp.root().join("dist").join(format!("dhash-{tag}"))
}

fn release_id(bundle: &Path) -> String {
    let v: Value = serde_json::from_str(
        &fs::read_to_string(bundle.join("release.json")).expect("release.json"),
    )
    .expect("json");
    v["id"].as_str().expect("id").to_string()
}

struct Run {
    status: std::process::ExitStatus,
    code: i32,
    events: Vec<Value>,
    stdout: String,
    stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        let stdout = String::from_utf8_lossy(&o.stdout).to_string();
        for l in stdout.lines() {
            assert!(
                serde_json::from_str::<Value>(l).is_ok_and(|v| v.is_object()),
                "stdout line is not a JSON event: {l}"
            );
        }
        Run {
            status: o.status,
            code: o.status.code().unwrap_or(-1),
            events: testkit::events(&o.stdout),
            stdout,
            stderr: String::from_utf8_lossy(&o.stderr).to_string(),
        }
    }
}

impl Run {
    fn of(&self, name: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["event"] == name).collect()
    }
    fn one(&self, name: &str) -> &Value {
        let v = self.of(name);
        assert_eq!(
            v.len(),
            1,
            "expected one {name} event:\n{}\n{}",
            self.stdout,
            self.stderr
        );
        v[0]
    }
    fn expect(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// deploy_dhash on staging without the background watch (the tests of the
/// watch start it themselves).
fn deploy_cmd(tp: &TestProject, args: &[&str]) -> Command {
    let mut c = tp.cmd_path(Path::new(BIN));
    c.args(["--env", "staging", "--no-monitor"]).args(args);
    c
}

fn deploy_cmd_env(tp: &TestProject, env: &str, args: &[&str]) -> Run {
    tp.cmd_path(Path::new(BIN))
        .args(["--env", env, "--no-monitor"])
        .args(args)
        .output()
        .expect("run deploy_dhash")
        .into()
}

fn deploy(tp: &TestProject, args: &[&str]) -> Run {
    deploy_cmd(tp, args)
        .output()
        .expect("run deploy_dhash")
        .into()
}

fn health(tp: &TestProject) -> Value {
    let url = format!("{}/health", tp.base_url("staging"));
    match gates_core::probe::get(&url, Duration::from_secs(2)) {
        Ok(a) => a.json().unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

fn db_version(tp: &TestProject) -> Option<i64> {
    dhash_migrate::current_version(&tp.env("staging").database).expect("schema version")
}

fn columns(tp: &TestProject, table: &str) -> Vec<String> {
    let c = rusqlite::Connection::open(tp.env("staging").database).expect("db");
    let mut s = c
        .prepare(&format!("PRAGMA table_info({table})"))
        .expect("pragma");
    s.query_map([], |r| r.get::<_, String>(1))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect()
}

fn current_target(tp: &TestProject) -> Option<String> {
    fs::read_link(tp.env("staging").current_link())
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().to_string()))
}

fn state(tp: &TestProject) -> Value {
    let p = tp.env("staging").install_root.join("releases.json");
    serde_json::from_str(&fs::read_to_string(p).expect("releases.json")).expect("json")
}

fn ledger(tp: &TestProject, kind: &str) -> Vec<Value> {
    tp.env("staging").ledger().records(kind).expect("ledger")
}

/// Every file, folder and link under `dir` with its content hash / target.
fn tree(dir: &Path) -> BTreeMap<String, String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries {
            let e = e.expect("entry");
            let p = e.path();
            let rel = p.strip_prefix(base).expect("prefix").display().to_string();
            let ft = e.file_type().expect("type");
            if ft.is_symlink() {
                out.insert(
                    rel,
                    format!("-> {}", fs::read_link(&p).expect("link").display()),
                );
            } else if ft.is_dir() {
                out.insert(rel.clone(), "dir".into());
                walk(base, &p, out);
            } else {
                let bytes = fs::read(&p).expect("read");
                out.insert(rel, dhash_migrate::migration::sha256_hex(&bytes));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

#[test]
fn deploy_v1_then_v2_with_a_schema_change() {
    let tp = project();
    let b1 = bundle(&tp, "v1", &[], &[]);
    let v1 = release_id(&b1);

    // First deploy on an empty environment.
    let r = deploy(&tp, &["--tag", "v1"]);
    r.expect(0);
    let started = r.one("deploy.started");
    assert_eq!(started["release"], v1.as_str());
    assert!(started["from"].is_null());
    r.one("deploy.installed");
    r.one("deploy.switched");
    let healthy = r.one("deploy.healthy");
    assert_eq!(healthy["release"], v1.as_str());
    assert!(healthy.get("backup").is_some() && healthy.get("from").is_some());
    let order: Vec<&str> = r
        .events
        .iter()
        .filter_map(|e| e["event"].as_str())
        .filter(|e| e.starts_with("deploy."))
        .collect();
    assert_eq!(
        order,
        [
            "deploy.started",
            "deploy.installed",
            "deploy.switched",
            "deploy.healthy"
        ]
    );
    assert_eq!(health(&tp)["release"], v1.as_str());
    assert_eq!(db_version(&tp), Some(2));
    assert_eq!(current_target(&tp).as_deref(), Some(v1.as_str()));
    assert!(!tp
        .env("staging")
        .install_root
        .join("deploy.journal.json")
        .exists());

    // v2 adds a migration; --no-migrate refuses it before anything changes.
    let b2 = bundle(&tp, "v2", &[], &[NOTE]);
    let v2 = release_id(&b2);
    let r = deploy(&tp, &["--tag", "v2", "--no-migrate"]);
    r.expect(1);
    assert!(
        r.stderr.contains("--no-migrate") && r.stderr.contains("0003_add_note"),
        "{}",
        r.stderr
    );
    assert!(
        !tp.env("staging").releases_dir().join(&v2).exists(),
        "refused before installing"
    );
    assert_eq!(db_version(&tp), Some(2));
    assert_eq!(health(&tp)["release"], v1.as_str());

    let r = deploy(&tp, &["--tag", "v2", "--verbose"]);
    r.expect(0);
    let h = r.one("deploy.healthy");
    assert_eq!(h["release"], v2.as_str());
    assert_eq!(h["from"], v1.as_str());
    assert_eq!(r.of("migrate.applied").len(), 1);
    let hj = health(&tp);
    assert_eq!(hj["release"], v2.as_str());
    assert_eq!(hj["schema_version"], 3);
    assert!(columns(&tp, "hashes").contains(&"note".to_string()));

    let deploys = ledger(&tp, "deploy");
    let last = deploys.last().expect("a deploy record");
    assert_eq!(last["result"], "healthy");
    assert_eq!(last["release"], v2.as_str());
    assert_eq!(last["from"], v1.as_str());
    assert!(last["who"].is_string() && last["ts"].is_string() && last.get("backup").is_some());
    assert_eq!(
        ledger(&tp, "migration").len(),
        3,
        "0001, 0002, 0003 recorded"
    );
    let st = state(&tp);
    assert_eq!(st["last_known_good"], v2.as_str());
    assert_eq!(st["releases"][&v1]["state"], "healthy");

    // Redeploying the current, healthy release changes nothing (act once).
    let r = deploy(&tp, &["--tag", "v2"]);
    r.expect(0);
    r.one("deploy.unchanged");
    assert!(r.of("deploy.switched").is_empty());

    // Back to the installed v1 without the health wait: installed copy
    // verified and kept, restarted, recorded as unverified.
    let r = deploy(&tp, &["--tag", "v1", "--skip-health-check"]);
    r.expect(0);
    assert_eq!(r.one("deploy.installed")["copied"], false);
    assert_eq!(r.one("deploy.healthy")["health_checked"], false);
    assert!(r.of("health.checked").is_empty());
    assert_eq!(r.one("deploy.started")["switch_back_to"], v2.as_str());
    assert_eq!(state(&tp)["releases"][&v1]["state"], "unverified");
    assert_eq!(health(&tp)["release"], v1.as_str());
}

#[test]
fn unhealthy_releases_switch_back_and_are_never_targets() {
    let tp = project();
    let v1 = release_id(&bundle(&tp, "v1", &[], &[]));
    deploy(&tp, &["--tag", "v1"]).expect(0);
    let bad = release_id(&bundle(&tp, "bad", &[("health_fail", "true")], &[NOTE]));

    let r = deploy(&tp, &["--tag", "bad"]);
    r.expect(1);
    let failed = r.one("deploy.failed");
    assert_eq!(failed["release"], bad.as_str());
    assert_eq!(failed["switched_back_to"], v1.as_str());
    assert_eq!(
        r.of("migrate.reverted").len(),
        1,
        "the deploy's migration was reverted"
    );
    assert_eq!(health(&tp)["release"], v1.as_str(), "v1 keeps serving");
    assert_eq!(db_version(&tp), Some(2), "schema back to v1's version");
    assert!(!columns(&tp, "hashes").contains(&"note".to_string()));
    assert_eq!(current_target(&tp).as_deref(), Some(v1.as_str()));
    assert_eq!(state(&tp)["releases"][&bad]["state"], "failed");
    assert_eq!(
        ledger(&tp, "deploy").last().expect("record")["result"],
        "failed"
    );

    // Someone points current at the failed release; the next failing deploy
    // must still go back to the last known-good one, never to `bad`.
    gates_core::fsutil::switch_symlink(
        &Path::new("releases").join(&bad),
        &tp.env("staging").current_link(),
    )
    .expect("switch");
    let crash = release_id(&bundle(&tp, "crash", &[("crash_at_start", "true")], &[]));
    let r = deploy(&tp, &["--tag", "crash"]);
    r.expect(1);
    assert!(r.stderr.contains("marked failed"), "{}", r.stderr);
    assert_eq!(r.one("deploy.failed")["switched_back_to"], v1.as_str());
    assert_eq!(health(&tp)["release"], v1.as_str());
    assert_eq!(current_target(&tp).as_deref(), Some(v1.as_str()));
    let st = state(&tp);
    assert_eq!(st["releases"][&crash]["state"], "failed");
    assert_eq!(st["last_known_good"], v1.as_str());
}

#[test]
fn dry_run_changes_nothing_and_makes_a_readable_log() {
    let tp = project();
    let b1 = bundle(&tp, "v1", &[], &[]);
    let root = tp.env("staging").install_root;

    // Empty environment: nothing is created.
    let r = deploy(&tp, &["--dry-run", "--tag", "v1"]);
    r.expect(0);
    assert!(!root.exists(), "dry run created {}", root.display());
    let planned = r.one("deploy.planned");
    assert_eq!(planned["dry_run"], true);
    assert!(planned["steps"].as_array().expect("steps").len() >= 7);
    let checks: Vec<&str> = planned["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    for c in ["bundle", "config", "lock", "disk", "health", "migrations"] {
        assert!(checks.contains(&c), "check {c} in {checks:?}");
    }
    assert!(
        r.stderr.contains("unreachable"),
        "health reported, not failed: {}",
        r.stderr
    );

    // Deployed and serving: the tree stays byte-for-byte the same.
    deploy(&tp, &["--tag", "v1"]).expect(0);
    bundle(&tp, "v2", &[("hash_latency_ms", "5")], &[NOTE]);
    let before = tree(&root);
    let r = deploy(&tp, &["--dry-run", "--tag", "v2", "--verbose"]);
    r.expect(0);
    assert_eq!(tree(&root), before, "the install root changed");
    let planned = r.one("deploy.planned");
    assert_eq!(planned["pending_migrations"][0]["version"], 3);
    assert_eq!(planned["switch_back_to"], release_id(&b1).as_str());
    assert!(r.stderr.contains("faults enabled"), "{}", r.stderr);
    assert!(r.of("deploy.started").is_empty() && r.of("deploy.switched").is_empty());

    // The seeds' PR artifact, both streams into one file.
    let log = tp.root().join("deploy-dryrun.log");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{BIN}' --dry-run --env staging > '{}' 2>&1",
            log.display()
        ))
        .current_dir(tp.root())
        .env("DHASH_ROOT", tp.root())
        .stdin(Stdio::null())
        .status()
        .expect("sh");
    assert!(status.success());
    let text = fs::read_to_string(&log).expect("log");
    assert!(
        text.contains("step 1:")
            && text.contains("check bundle")
            && text.contains("\"deploy.planned\""),
        "{text}"
    );
    assert_eq!(tree(&root), before);
}

#[test]
fn tampered_bundle_is_refused_and_nothing_changes() {
    let tp = project();
    bundle(&tp, "v1", &[], &[]);
    deploy(&tp, &["--tag", "v1"]).expect(0);
    let root = tp.env("staging").install_root;

    // A file edited after bundling.
    let b2 = bundle(&tp, "v2", &[], &[]);
    let before = tree(&root);
    let cfg = b2.join("config.json");
    let text = fs::read_to_string(&cfg)
        .expect("config")
        .replace("\"health_fail\": false", "\"health_fail\": true");
    fs::write(&cfg, format!("{text}\n")).expect("tamper");
    let r = deploy(&tp, &["--tag", "v2"]);
    r.expect(1);
    assert!(
        r.stderr.contains("config.json") && r.stderr.contains("nothing was changed"),
        "{}",
        r.stderr
    );
    assert!(r.of("deploy.started").is_empty());
    assert_eq!(tree(&root), before, "nothing changed");
    // The dry run says the same.
    deploy(&tp, &["--tag", "v2", "--dry-run"]).expect(1);

    // release.json edited to match the edit: the id no longer matches.
    let mut m: Value =
        serde_json::from_str(&fs::read_to_string(b2.join("release.json")).expect("m"))
            .expect("json");
    m["files"]["config.json"] = json!(dhash_migrate::migration::sha256_hex(
        &fs::read(&cfg).expect("cfg")
    ));
    fs::write(
        b2.join("release.json"),
        serde_json::to_string_pretty(&m).expect("enc"),
    )
    .expect("write");
    let r = deploy(&tp, &["--tag", "v2"]);
    r.expect(1);
    assert!(
        r.stderr.contains("does not match its files"),
        "{}",
        r.stderr
    );

    // An extra file slipped in.
    let b3 = bundle(&tp, "v3", &[], &[]);
    fs::write(b3.join("bin/helper.sh"), "#!/bin/sh\n").expect("extra");
    let r = deploy(&tp, &["--tag", "v3"]);
    r.expect(1);
    assert!(
        r.stderr.contains("bin/helper.sh: not listed"),
        "{}",
        r.stderr
    );
    assert_eq!(tree(&root), before, "nothing changed");
}

#[test]
fn lock_busy_unknown_tag_and_invalid_arguments() {
    let tp = project();
    let r = deploy(&tp, &["--tag", "v1"]);
    r.expect(2);
    assert!(r.stderr.contains("available tags: none"), "{}", r.stderr);
    bundle(&tp, "v1", &[], &[]);
    bundle(&tp, "v2", &[], &[]);
    let r = deploy(&tp, &["--tag", "v9"]);
    r.expect(2);
    assert!(r.stderr.contains("available tags: v1, v2"), "{}", r.stderr);

    // Another run holds the lock: exit 75, nothing installed.
    let env = tp.env("staging");
    let lock = gates_core::lock::EnvLock::acquire(&env.lock_path(), "staging", "deploy_dhash")
        .expect("lock");
    let r = deploy(&tp, &["--tag", "v1"]);
    r.expect(75);
    assert!(r.stderr.contains("locked by another run"), "{}", r.stderr);
    assert!(!env.releases_dir().exists());
    let r = deploy(&tp, &["--tag", "v1", "--dry-run"]);
    r.expect(75);
    drop(lock);

    // Unresolved placeholders: production refuses (exit 2, naming the field),
    // staging warns.
    tp.edit_topology(|t| t["description"] = json!("Replace with the owner's team name"));
    let r = deploy_cmd_env(&tp, "production", &["--tag", "v1", "--dry-run"]);
    r.expect(2);
    assert!(
        r.stderr.contains("description") && r.stderr.contains("Replace with"),
        "{}",
        r.stderr
    );
    let r = deploy_cmd_env(&tp, "production", &["--tag", "v1"]);
    r.expect(2);
    assert!(!tp.env("production").install_root.exists());
    let r = deploy(&tp, &["--tag", "v1", "--dry-run"]);
    r.expect(0);
    assert!(r.stderr.contains("unresolved placeholder"), "{}", r.stderr);

    for args in [vec!["--tag"], vec!["--bogus"], vec!["--env", "nowhere"]] {
        let r = deploy(&tp, &args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
    }
    let out = tp
        .cmd_path(Path::new(BIN))
        .arg("--dry-run")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "--env is required");
    let out = tp
        .cmd_path(Path::new(BIN))
        .arg("--help")
        .output()
        .expect("help");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.trim_end()
            .ends_with("75  another run holds the environment's lock"),
        "{help}"
    );
}

/// Crashes (SIGKILL) at a named step, then checks `current` is complete.
fn crash(tp: &TestProject, tag: &str, point: &str) -> Run {
    let r: Run = deploy_cmd(tp, &["--tag", tag])
        .env("DHASH_TEST_CRASH_AT", point)
        .output()
        .expect("run")
        .into();
    assert_eq!(
        r.status.signal(),
        Some(9),
        "killed at {point}:\n{}\n{}",
        r.stdout,
        r.stderr
    );
    let env = tp.env("staging");
    let cur = fs::canonicalize(env.current_link()).expect("current resolves");
    assert_complete(&cur);
    assert!(
        env.install_root.join("deploy.journal.json").exists(),
        "journal left by the crash at {point}"
    );
    r
}

/// `current` is a complete release: every file of its release.json checks
/// out with the system's `sha256sum -c`.
fn assert_complete(dir: &Path) {
    let m: Value =
        serde_json::from_str(&fs::read_to_string(dir.join("release.json")).expect("release.json"))
            .expect("json");
    let list: String = m["files"]
        .as_object()
        .expect("files")
        .iter()
        .map(|(p, h)| format!("{}  {p}\n", h.as_str().expect("hash")))
        .collect();
    let mut child = Command::new("sha256sum")
        .args(["-c", "--quiet", "-"])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(list.as_bytes())
        .expect("write");
    let st = child.wait().expect("wait");
    assert!(st.success(), "{} is not a complete release", dir.display());
}

fn rerun(tp: &TestProject, tag: &str, id: &str) {
    let r = deploy(tp, &["--tag", tag]);
    r.expect(0);
    assert_eq!(r.one("deploy.interrupted")["release"], id);
    assert_eq!(r.one("deploy.healthy")["release"], id);
    assert_eq!(health(tp)["release"], id);
    let env = tp.env("staging");
    assert!(!env.install_root.join("deploy.journal.json").exists());
    let partials: Vec<String> = fs::read_dir(env.releases_dir())
        .expect("releases")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(partials.is_empty(), "leftovers: {partials:?}");
}

#[test]
fn killed_while_installing_or_after_migrating_then_rerun_finishes() {
    let tp = project();
    let v1 = release_id(&bundle(&tp, "v1", &[], &[]));
    deploy(&tp, &["--tag", "v1"]).expect(0);

    let v2 = release_id(&bundle(&tp, "v2", &[], &[NOTE]));
    crash(&tp, "v2", "deploy-installing");
    assert_eq!(current_target(&tp).as_deref(), Some(v1.as_str()));
    assert!(tp
        .env("staging")
        .releases_dir()
        .join(format!(".{v2}.partial"))
        .is_dir());
    assert_eq!(health(&tp)["release"], v1.as_str(), "v1 still serving");
    rerun(&tp, "v2", &v2);
    assert_eq!(db_version(&tp), Some(3));

    let v3 = release_id(&bundle(&tp, "v3", &[], &[NOTE, LABELS]));
    crash(&tp, "v3", "deploy-migrated");
    assert_eq!(current_target(&tp).as_deref(), Some(v2.as_str()));
    assert_eq!(db_version(&tp), Some(4));
    rerun(&tp, "v3", &v3);

    // Killed between spawning the new service and writing its pidfile: the
    // rerun stops the service nothing names (it holds the port) and ends
    // with exactly one, the pidfile's.
    let v4 = release_id(&bundle(&tp, "v4", &[], &[NOTE, LABELS]));
    crash(&tp, "v4", "service-spawned");
    rerun(&tp, "v4", &v4);
    let env = tp.env("staging");
    let pid = gates_core::service::running_pid(&env);
    assert!(pid.is_some());
    assert_eq!(
        gates_core::service::service_processes(&env),
        pid.into_iter().collect::<Vec<_>>(),
        "stray services after the rerun"
    );
    let deploys = ledger(&tp, "deploy");
    assert!(deploys
        .iter()
        .any(|d| d["result"] == "interrupted" && d["release"] == v3.as_str()));
}

#[test]
fn killed_after_switching_or_stopping_then_rerun_finishes() {
    let tp = project();
    tp.edit_topology(|t| t["environments"]["staging"]["retention"]["releases"] = json!(2));
    let v1 = release_id(&bundle(&tp, "v1", &[], &[]));
    deploy(&tp, &["--tag", "v1"]).expect(0);

    let v2 = release_id(&bundle(&tp, "v2", &[], &[NOTE]));
    crash(&tp, "v2", "deploy-switched");
    assert_eq!(current_target(&tp).as_deref(), Some(v2.as_str()));
    rerun(&tp, "v2", &v2);

    let v3 = release_id(&bundle(&tp, "v3", &[], &[NOTE]));
    crash(&tp, "v3", "deploy-stopped");
    assert_eq!(current_target(&tp).as_deref(), Some(v3.as_str()));
    assert!(
        health(&tp).is_null(),
        "the service is down after a crash between stop and start"
    );
    rerun(&tp, "v3", &v3);

    // A rerun whose new release then fails switches back to the release that
    // served before the interrupted deploy.
    let bad = release_id(&bundle(&tp, "bad", &[("crash_at_start", "true")], &[]));
    crash(&tp, "bad", "deploy-switched");
    let r = deploy(&tp, &["--tag", "bad"]);
    r.expect(1);
    assert_eq!(r.one("deploy.failed")["switched_back_to"], v3.as_str());
    assert_eq!(health(&tp)["release"], v3.as_str());
    assert_eq!(r.one("deploy.failed")["release"], bad.as_str());
    assert_eq!(state(&tp)["releases"][&bad]["state"], "failed");

    // Retention 2: v1 is gone, current and the previous one stay.
    let left: Vec<String> = testkit_installed(&tp);
    assert!(!left.contains(&v1), "{left:?}");
    assert!(left.contains(&v3) && left.contains(&v2), "{left:?}");
}

fn testkit_installed(tp: &TestProject) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(tp.env("staging").releases_dir())
        .expect("releases")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| !n.starts_with('.'))
        .collect();
    v.sort();
    v
}

#[test]
fn stdin_events_are_forwarded_and_bad_lines_reported() {
    let tp = project();
    bundle(&tp, "v1", &[], &[]);
    let mut child = deploy_cmd(&tp, &["--dry-run", "--tag", "v1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        let ev = json!({"ts": "2026-01-01T00:00:00Z", "tool": "x", "env": "staging", "event": "custom.seen", "level": "info", "msg": "hi"});
        writeln!(stdin, "{ev}\nnot json").expect("write");
    }
    let r: Run = child.wait_with_output().expect("wait").into();
    r.expect(0);
    assert_eq!(
        r.events[0]["event"], "custom.seen",
        "forwarded first, unchanged"
    );
    assert!(r.stderr.contains("stdin line 2"), "{}", r.stderr);
}

#[test]
fn backups_are_rollback_points() {
    let tp = project();
    let v1 = release_id(&bundle(&tp, "v1", &[], &[]));
    deploy(&tp, &["--tag", "v1"]).expect(0);

    // backup_dhash | deploy_dhash: the backup.verified event is the rollback point.
    let v2 = release_id(&bundle(&tp, "v2", &[], &[NOTE]));
    let backup_bin = testkit::bin_path("backup_dhash");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{}' --env staging | '{BIN}' --env staging --tag v2",
            backup_bin.display()
        ))
        .current_dir(tp.root())
        .env("DHASH_ROOT", tp.root())
        .stdin(Stdio::null())
        .output()
        .expect("pipeline");
    let r: Run = out.into();
    r.expect(0);
    let verified = r.one("backup.verified");
    assert_eq!(verified["tool"], "backup_dhash", "forwarded unchanged");
    let path = verified["path"].as_str().expect("path");
    let healthy = r.one("deploy.healthy");
    assert_eq!(healthy["release"], v2.as_str());
    assert_eq!(healthy["backup"], path);
    assert_eq!(
        ledger(&tp, "deploy").last().expect("record")["backup"],
        path
    );

    // A migration without a down file: refused without a backup, before anything changes.
    const NODOWN: Extra = (
        "0004_create_labels",
        "CREATE TABLE labels (id INTEGER PRIMARY KEY);",
        None,
    );
    let nodown = release_id(&bundle(
        &tp,
        "nodown",
        &[("health_fail", "true")],
        &[NOTE, NODOWN],
    ));
    let r = deploy(&tp, &["--tag", "nodown", "--no-backup"]);
    r.expect(1);
    assert!(
        r.stderr.contains("0004_create_labels") && r.stderr.contains("--no-backup"),
        "{}",
        r.stderr
    );
    assert!(!tp.env("staging").releases_dir().join(&nodown).exists());

    // With a backup (--backup-first, the default) it goes ahead; the release does not start, the
    // down migration is missing, so the pre-deploy backup is restored.
    let r = deploy(&tp, &["--tag", "nodown", "--backup-first"]);
    r.expect(1);
    let backup = r.one("backup.verified")["path"]
        .as_str()
        .expect("path")
        .to_string();
    assert!(Path::new(&backup).is_file());
    let failed = r.one("deploy.failed");
    assert_eq!(failed["backup"], backup.as_str());
    assert_eq!(failed["schema"]["how"], "restored-backup", "{failed}");
    assert_eq!(failed["schema"]["backup"], backup.as_str(), "{failed}");
    assert_eq!(health(&tp)["release"], v2.as_str());
    assert_eq!(db_version(&tp), Some(3), "schema back to v2's");
    assert_eq!(state(&tp)["releases"][&nodown]["state"], "failed");
    assert_eq!(state(&tp)["releases"][&v1]["state"], "healthy");
}

// ---------------------------------------------------------------------------
// Deploying without a prebuilt bundle: the checkout's release, or a git tag's.

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=test", "-c", "user.email=test@example.com"])
        .args(["-c", "init.defaultBranch=main", "-c", "tag.gpgSign=false"])
        .args(["-c", "commit.gpgSign=false"])
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

/// A project that is a git checkout with the service's migrations (as the
/// repository has them) and the runtime folders ignored; nothing built.
fn git_project() -> TestProject {
    let tp = project();
    let root = tp.root();
    fs::write(
        root.join(".gitignore"),
        "/.dhash/\n/dist/\n/backups/\n/monitor_logs/\n/logs/\n/notifications_out/\n*.partial\n",
    )
    .expect("gitignore");
    let mdir = root.join("dhash-service/migrations");
    fs::create_dir_all(&mdir).expect("mkdir");
    let builtin = testkit::workspace_root().join("dhash-service/migrations");
    for e in fs::read_dir(&builtin).expect("built-in migrations") {
        let e = e.expect("entry");
        fs::copy(e.path(), mdir.join(e.file_name())).expect("copy migration");
    }
    git(root, &["init", "-q"]);
    git(root, &["add", "-A"]);
    git(root, &["commit", "-q", "-m", "first"]);
    tp
}

fn add_migration(tp: &TestProject, (name, up, down): Extra) {
    let mdir = tp.root().join("dhash-service/migrations");
    fs::write(mdir.join(format!("{name}.up.sql")), up).expect("up");
    if let Some(d) = down {
        fs::write(mdir.join(format!("{name}.down.sql")), d).expect("down");
    }
}

/// Every path under `dir` with its content hash (links by target).
fn listing(dir: &Path) -> BTreeMap<String, String> {
    tree(dir)
}

#[test]
fn no_tag_deploys_the_checkout_building_its_bundle_once_per_commit() {
    let tp = git_project();
    assert!(!tp.root().join("dist").exists(), "nothing prebuilt");
    let rev = git(tp.root(), &["rev-parse", "--short", "HEAD"]);
    let tag = format!("v{}-{rev}", env!("CARGO_PKG_VERSION"));

    let r = deploy(&tp, &[]);
    r.expect(0);
    let healthy = r.one("deploy.healthy");
    assert_eq!(healthy["tag"], tag.as_str());
    assert_eq!(
        r.one("bundle.created")["tag"],
        tag.as_str(),
        "built by this run"
    );
    let first = release_id(&tp.root().join("dist").join(format!("dhash-{tag}")));
    assert_eq!(health(&tp)["release"], first.as_str());
    assert_eq!(db_version(&tp), Some(2));

    // The same commit again: the bundle is reused, not rebuilt, and the
    // release already serving is not deployed twice.
    let r = deploy(&tp, &[]);
    r.expect(0);
    assert!(r.of("bundle.created").is_empty(), "{}", r.stderr);
    assert!(r.stderr.contains("reusing"), "{}", r.stderr);
    assert_eq!(r.one("deploy.unchanged")["release"], first.as_str());

    // A change to the release's inputs, not committed: never the clean
    // commit's bundle; a -dirty one, built from the work tree.
    add_migration(&tp, NOTE);
    let r = deploy(&tp, &[]);
    r.expect(0);
    let dirty = format!("{tag}-dirty");
    assert_eq!(r.one("bundle.created")["tag"], dirty.as_str());
    assert_eq!(r.one("deploy.healthy")["tag"], dirty.as_str());
    assert_eq!(
        db_version(&tp),
        Some(3),
        "the work tree's migration applied"
    );
    assert!(columns(&tp, "hashes").contains(&"note".to_string()));
}

#[test]
fn tag_of_a_git_tag_builds_from_that_tags_tree() {
    let tp = git_project();
    git(tp.root(), &["tag", "v1.0.0"]);
    add_migration(&tp, NOTE);
    git(tp.root(), &["add", "-A"]);
    git(tp.root(), &["commit", "-q", "-m", "note column"]);

    // v1.0.0 is the first commit: schema 2, not the checkout's 3.
    let r = deploy(&tp, &["--tag", "v1.0.0"]);
    r.expect(0);
    assert_eq!(r.one("bundle.created")["tag"], "v1.0.0");
    assert!(r.stderr.contains("from git tag v1.0.0"), "{}", r.stderr);
    let b = tp.root().join("dist/dhash-v1.0.0");
    let m: Value =
        serde_json::from_str(&fs::read_to_string(b.join("release.json")).expect("manifest"))
            .expect("json");
    assert_eq!(m["schema_version"], 2);
    assert!(m["files"].get("migrations/0003_add_note.up.sql").is_none());
    assert_eq!(db_version(&tp), Some(2));
    assert_eq!(health(&tp)["release"], release_id(&b).as_str());
    // The temporary tree is gone (nothing named after the tag is left in the temp dir).
    let leftovers: Vec<_> = fs::read_dir(std::env::temp_dir())
        .expect("tmp")
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("dhash-v1.0.0-src-")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Now dist/dhash-v1.0.0 exists: taken as it is.
    let r = deploy(&tp, &["--tag", "v1.0.0"]);
    r.expect(0);
    assert!(r.of("bundle.created").is_empty());
}

#[test]
fn unknown_tag_exits_2_naming_both_ways_and_changes_nothing() {
    let tp = git_project();
    let before = listing(tp.root());
    for args in [
        vec!["--tag", "v9.9.9"],
        vec!["--tag", "v9.9.9", "--dry-run"],
    ] {
        let r = deploy(&tp, &args);
        r.expect(2);
        assert!(
            r.stderr.contains("dhash-service bundle --tag v9.9.9")
                && r.stderr.contains("git tag v9.9.9")
                && r.stderr.contains("dist_dir of")
                && r.stderr.contains("environments.json"),
            "{}",
            r.stderr
        );
        assert!(r.of("deploy.started").is_empty());
        assert_eq!(listing(tp.root()), before, "{args:?} changed a file");
    }
    // Not a git checkout at all: the same two ways.
    let plain = project();
    let r = deploy(&plain, &["--tag", "v9.9.9"]);
    r.expect(2);
    assert!(
        r.stderr.contains("is not a git checkout") && r.stderr.contains("dhash-service bundle"),
        "{}",
        r.stderr
    );
    // A tag that would read as an option never reaches git.
    let r = deploy(&tp, &["--tag=-x"]);
    r.expect(2);
    assert!(r.stderr.contains("invalid tag"), "{}", r.stderr);
}

#[test]
fn dry_run_on_a_fresh_checkout_plans_everything_and_changes_nothing() {
    let tp = git_project();
    let before = listing(tp.root());
    let r = deploy(&tp, &["--dry-run"]);
    r.expect(0);
    assert_eq!(listing(tp.root()), before, "the dry run changed a file");
    assert!(!tp.root().join("dist").exists());
    let planned = r.one("deploy.planned");
    let versions: Vec<i64> = planned["pending_migrations"]
        .as_array()
        .expect("pending")
        .iter()
        .filter_map(|m| m["version"].as_i64())
        .collect();
    assert_eq!(versions, [1, 2], "the checkout's real migration plan");
    let rev = git(tp.root(), &["rev-parse", "--short", "HEAD"]);
    assert_eq!(
        planned["tag"],
        format!("v{}-{rev}", env!("CARGO_PKG_VERSION")).as_str()
    );
    assert!(planned["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .all(|c| c["ok"] == true || c["name"] == "health"));
}

// ---------------------------------------------------------------------------
// Backup and the T+60 watch by default; the run log.

/// A stand-in monitor_dhash (DHASH_MONITOR_BIN) running `body` in sh.
fn fake_monitor(tp: &TestProject, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = tp.root().join("fake-monitor.sh");
    fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("script");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// Kills a process on drop (a test never leaves one behind).
struct KillOnDrop(u32);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.to_string()).status();
    }
}

#[test]
fn plain_deploy_backs_up_then_starts_the_watch_in_the_background() {
    let tp = project();
    let v1 = release_id(&bundle(&tp, "v1", &[], &[]));
    deploy(&tp, &["--tag", "v1"]).expect(0);
    let v2 = release_id(&bundle(&tp, "v2", &[], &[NOTE]));
    let watch = tp.env("staging").install_root.join("watch.json");
    let monitor = fake_monitor(
        &tp,
        &format!(
            r#"echo "$@" > '{root}/monitor-args'
printf '{{"pid": %s, "release": "x", "started_at": "2026-01-01T00:00:00Z", "window_end": "2026-01-01T01:00:00Z", "log": "{root}/monitor_logs/w.log", "events": "{root}/monitor_logs/w.jsonl"}}' $$ > '{watch}'
exec sleep 30"#,
            root = tp.root().display(),
            watch = watch.display()
        ),
    );
    let r: Run = tp
        .cmd_path(Path::new(BIN))
        .args(["--env", "staging", "--tag", "v2"])
        .env("DHASH_MONITOR_BIN", &monitor)
        .output()
        .expect("run")
        .into();
    let detached = r.of("monitor.detached");
    let pid = detached
        .first()
        .and_then(|d| d["pid"].as_u64())
        .map(|p| p as u32);
    let _guard = pid.map(KillOnDrop);
    r.expect(0);
    let pid = pid.expect("monitor.detached has the pid");
    assert!(testkit::pid_alive(pid), "the watch outlives the deploy");

    // A verified backup was taken by default and handed to the watch.
    let backup = r.one("backup.verified")["path"]
        .as_str()
        .expect("path")
        .to_string();
    assert_eq!(r.one("deploy.healthy")["backup"], backup.as_str());
    let args = fs::read_to_string(tp.root().join("monitor-args")).expect("args");
    assert_eq!(
        args.trim(),
        format!("--env staging --release {v2} --backup {backup} --detach")
    );
    let d = detached[0];
    assert_eq!(d["release"], v2.as_str());
    assert!(d["log"].as_str().expect("log").ends_with("w.log"));
    assert!(
        r.stderr.contains("monitor_dhash --env staging")
            && r.stderr.contains(&format!("kill {pid}")),
        "{}",
        r.stderr
    );

    // The run's human log, under every name the runbooks tail.
    let logs: Vec<PathBuf> = fs::read_dir(tp.root().join("logs"))
        .expect("logs/")
        .flatten()
        .map(|e| e.path())
        .collect();
    for prefix in ["deploy_staging_", "deploy-staging-"] {
        let l = logs
            .iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
            })
            .max()
            .unwrap_or_else(|| panic!("no logs/{prefix}*: {logs:?}"));
        let text = fs::read_to_string(l).expect("log");
        assert!(
            text.contains("deploy.healthy") && text.contains("monitor.detached"),
            "{text}"
        );
    }
    assert!(
        r.stderr.contains("monitor_logs/deploy_staging_"),
        "{}",
        r.stderr
    );
    assert_eq!(r.one("deploy.healthy")["from"], v1.as_str());
}

#[test]
fn a_watch_that_does_not_start_is_loud_and_exits_5() {
    let tp = project();
    // A new release each time: redeploying the serving one would change nothing.
    for (tag, monitor) in [
        ("v1", fake_monitor(&tp, "echo cannot >&2; exit 2")),
        ("v2", tp.root().join("no-such-monitor")),
    ] {
        let v1 = release_id(&bundle(&tp, tag, &[], &[]));
        let r: Run = tp
            .cmd_path(Path::new(BIN))
            .args(["--env", "staging", "--tag", tag])
            .env("DHASH_MONITOR_BIN", &monitor)
            .output()
            .expect("run")
            .into();
        r.expect(5);
        let failed = r.one("monitor.failed");
        assert_eq!(failed["level"], "critical");
        assert!(
            failed["msg"]
                .as_str()
                .expect("msg")
                .contains("LIVE BUT UNWATCHED")
                && failed["msg"]
                    .as_str()
                    .expect("msg")
                    .contains("monitor_dhash --env staging"),
            "{failed}"
        );
        assert_eq!(r.one("deploy.healthy")["release"], v1.as_str());
        assert_eq!(health(&tp)["release"], v1.as_str(), "live");
        assert_eq!(
            ledger(&tp, "deploy").last().expect("record")["result"],
            "unwatched"
        );
    }
}

// ---------------------------------------------------------------------------
// Issue 13 #3: killed while switching back, then rerun.

#[test]
fn killed_while_switching_back_then_rerun_finishes_it_and_never_deploys_the_failed_release() {
    let tp = project();
    let v1 = release_id(&bundle(&tp, "v1", &[], &[]));
    deploy(&tp, &["--tag", "v1"]).expect(0);

    for (tag, point) in [
        ("bad", "deploy-unhealthy"),
        ("bad2", "deploy-switched-back"),
    ] {
        let bad = release_id(&bundle(&tp, tag, &[("health_fail", "true")], &[NOTE]));
        crash(&tp, tag, point);
        assert_eq!(state(&tp)["releases"][&bad]["state"], "failed");

        // The same command again: finishes the switch-back, never goes to `bad`.
        let r = deploy(&tp, &["--tag", tag]);
        r.expect(1);
        let interrupted = r.one("deploy.interrupted");
        assert_eq!(interrupted["release"], bad.as_str());
        assert_eq!(interrupted["switch_back_to"], v1.as_str());
        let failed = r.one("deploy.failed");
        assert_eq!(failed["finished_interrupted"], true, "{point}");
        assert_eq!(failed["switched_back_to"], v1.as_str());
        assert!(r.of("migrate.applied").is_empty(), "{point}: {}", r.stdout);
        assert!(
            r.of("deploy.switched")
                .iter()
                .all(|e| e["release"] == v1.as_str()),
            "{point}: never switched to {bad}"
        );
        assert!(r.of("deploy.started").is_empty());
        assert!(
            r.stderr.contains("never deployed again") && r.stderr.contains("--retry-failed"),
            "{}",
            r.stderr
        );
        assert_eq!(current_target(&tp).as_deref(), Some(v1.as_str()));
        assert_eq!(health(&tp)["release"], v1.as_str(), "{point}: v1 serves");
        assert_eq!(db_version(&tp), Some(2), "{point}: schema back to v1's");
        assert!(!tp
            .env("staging")
            .install_root
            .join("deploy.journal.json")
            .exists());
        let st = state(&tp);
        assert_eq!(st["releases"][&bad]["state"], "failed");
        assert_eq!(st["last_known_good"], v1.as_str());

        // Once more: refused before anything changes.
        let before = tree(&tp.env("staging").install_root);
        let r = deploy(&tp, &["--tag", tag]);
        r.expect(1);
        assert!(r.stderr.contains("never deployed again"), "{}", r.stderr);
        assert!(r.of("deploy.started").is_empty());
        let after = tree(&tp.env("staging").install_root);
        let changed: Vec<_> = after
            .iter()
            .filter(|(k, v)| {
                before.get(*k) != Some(v) && !k.starts_with("ledger") && !k.starts_with("data")
            })
            .collect();
        assert!(changed.is_empty(), "{changed:?}");
        deploy(&tp, &["--tag", tag, "--dry-run"]).expect(1);
    }
}

// ---------------------------------------------------------------------------
// Issue 13 #5: a deploy whose watch cannot start is refused before anything.

#[test]
fn a_deploy_whose_watch_cannot_start_is_refused_by_dry_run_and_real_run_alike() {
    let tp = project();
    bundle(&tp, "v1", &[], &[]);
    let gates = tp.root().join("quality-gates-config.json");
    let original = fs::read_to_string(&gates).expect("gates");
    let mut without: Value = serde_json::from_str(&original).expect("json");
    without["environments"]
        .as_object_mut()
        .expect("environments")
        .remove("staging");
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        (
            "no section",
            Some(serde_json::to_string_pretty(&without).expect("enc")),
            "environments.staging",
        ),
        (
            "unparsable",
            Some("{ not json".to_string()),
            "quality-gates-config.json",
        ),
        ("missing", None, "quality-gates-config.json"),
    ];
    for (what, content, needle) in cases {
        match &content {
            Some(c) => fs::write(&gates, c).expect("write"),
            None => fs::remove_file(&gates).expect("rm"),
        }
        let before = tree(tp.root());
        let dry = deploy(&tp, &["--tag", "v1", "--dry-run"]);
        dry.expect(2);
        let real = deploy(&tp, &["--tag", "v1"]);
        real.expect(2);
        for r in [&dry, &real] {
            assert!(
                r.stderr.contains(&gates.display().to_string())
                    || r.stderr.contains("quality-gates-config.json"),
                "{what}: {}",
                r.stderr
            );
            assert!(r.stderr.contains(needle), "{what}: {}", r.stderr);
            assert!(
                r.stderr.contains("watch could not start"),
                "{what}: {}",
                r.stderr
            );
        }
        let line = |r: &Run| {
            r.stderr
                .lines()
                .find(|l| l.contains("watch could not start"))
                .map(|l| l[l.find("refusing").unwrap_or(0)..].to_string())
        };
        assert_eq!(line(&dry), line(&real), "{what}: the same message");
        assert!(real.of("deploy.started").is_empty());
        assert_eq!(tree(tp.root()), before, "{what}: nothing changed");
        assert!(!tp.env("staging").install_root.exists());
    }
    fs::write(&gates, original).expect("restore");
    deploy(&tp, &["--tag", "v1"]).expect(0);
}

#[test]
fn the_real_monitor_is_started_detached_and_stops_on_kill() {
    let tp = project();
    let v1 = release_id(&bundle(&tp, "v1", &[], &[]));
    let r: Run = tp
        .cmd_path(Path::new(BIN))
        .args(["--env", "staging", "--tag", "v1"])
        .output()
        .expect("run")
        .into();
    let pid = r
        .of("monitor.detached")
        .first()
        .and_then(|d| d["pid"].as_u64())
        .map(|p| p as u32);
    let guard = pid.map(KillOnDrop);
    r.expect(0);
    let pid = pid.expect("pid");
    let d = r.one("monitor.detached");
    assert_eq!(d["release"], v1.as_str());
    assert!(testkit::pid_alive(pid));
    let watch: Value = serde_json::from_str(
        &fs::read_to_string(tp.env("staging").install_root.join("watch.json")).expect("watch.json"),
    )
    .expect("json");
    assert_eq!(watch["pid"].as_u64(), Some(u64::from(pid)));
    assert_eq!(watch["release"], v1.as_str());
    assert_eq!(d["log"], watch["log"]);

    // A redeploy of the same release changes nothing and keeps that watch
    // (no second watcher).
    let r = deploy_cmd_env_monitor(&tp, &["--tag", "v1"]);
    r.expect(0);
    r.one("deploy.unchanged");
    assert!(r.of("monitor.detached").is_empty(), "{}", r.stdout);
    assert!(testkit::pid_alive(pid), "the first watch goes on");

    // `kill <pid>` stops it cleanly (seed 004).
    drop(guard);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while testkit::pid_alive(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!testkit::pid_alive(pid), "the watch ended on SIGTERM");
}

fn deploy_cmd_env_monitor(tp: &TestProject, args: &[&str]) -> Run {
    tp.cmd_path(Path::new(BIN))
        .args(["--env", "staging"])
        .args(args)
        .output()
        .expect("run deploy_dhash")
        .into()
}

#[test]
fn a_fifo_in_a_bundle_is_refused_without_blocking() {
    let tp = project();
    let b = bundle(&tp, "v1", &[], &[]);
    let cfg = b.join("config.json");
    fs::remove_file(&cfg).expect("rm");
    assert!(Command::new("mkfifo")
        .arg(&cfg)
        .status()
        .expect("mkfifo")
        .success());
    let started = std::time::Instant::now();
    for args in [vec!["--tag", "v1"], vec!["--tag", "v1", "--dry-run"]] {
        let r = deploy(&tp, &args);
        r.expect(1);
        assert!(
            r.stderr.contains("config.json") && r.stderr.contains("FIFO"),
            "{args:?}: {}",
            r.stderr
        );
        assert!(r.of("deploy.started").is_empty());
    }
    assert!(started.elapsed() < Duration::from_secs(60), "never blocked");
    assert!(!tp.env("staging").releases_dir().exists());
}

/// Act once (fault matrix: two deploys of one release both switched and
/// restarted): deploying the release that already serves, healthy, is a
/// no-op that says so: no backup, no switch, no restart, no new watch.
#[test]
fn deploying_the_release_already_serving_changes_nothing() {
    let tp = project();
    bundle(&tp, "v1", &[], &[]);
    deploy(&tp, &["--tag", "v1"]).expect(0);
    let env = tp.env("staging");
    let pid = gates_core::service::running_pid(&env).expect("running");
    let backups = |tp: &TestProject| {
        fs::read_dir(tp.root().join("backups"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let before = backups(&tp);
    // Without --no-monitor: an unchanged release starts no new watch either.
    let r = deploy_cmd_env_monitor(&tp, &["--tag", "v1"]);
    r.expect(0);
    r.one("deploy.unchanged");
    assert!(r.of("deploy.switched").is_empty(), "{}", r.stdout);
    assert!(r.of("backup.verified").is_empty(), "{}", r.stdout);
    assert!(r.of("monitor.detached").is_empty(), "{}", r.stdout);
    assert_eq!(
        gates_core::service::running_pid(&env),
        Some(pid),
        "no restart"
    );
    assert_eq!(backups(&tp), before, "no backup taken");
    // A serving release that does not answer health is deployed again (a repair).
    gates_core::service::stop(&env, &gates_core::Emitter::sink("test", "staging")).expect("stop");
    let r = deploy(&tp, &["--tag", "v1"]);
    r.expect(0);
    assert!(r.of("deploy.unchanged").is_empty(), "{}", r.stdout);
    r.one("deploy.healthy");
}

// ---------------------------------------------------------------------------
// Issue 14: defects found while reading, and one preflight for both runs.

fn rfc3339(v: &Value) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("not RFC 3339 ({e}): {v}"))
}

/// (a) the monitor reads `started_at` from the latest deploy record; (f) the
/// final event carries the DeployReport.
#[test]
fn the_ledger_and_the_final_event_say_when_the_deploy_began() {
    let tp = project();
    let v1 = release_id(&bundle(&tp, "v1", &[], &[]));
    let r = deploy(&tp, &["--tag", "v1", "--no-backup"]);
    r.expect(0);
    let deploys = ledger(&tp, "deploy");
    let healthy = deploys
        .iter()
        .find(|d| d["result"] == "healthy")
        .expect("a healthy record");
    let started = rfc3339(&healthy["started_at"]);
    assert!(started <= rfc3339(&healthy["ts"]), "{healthy}");
    assert!(deploys
        .iter()
        .all(|d| d["started_at"] == healthy["started_at"]));

    let event = r.one("deploy.healthy");
    assert_eq!(event["release"], v1.as_str());
    assert_eq!(event["unchanged"], false);
    assert_eq!(event["health_checked"], true);
    assert_eq!(event["started_at"], healthy["started_at"]);
    let again = deploy(&tp, &["--tag", "v1"]);
    again.expect(0);
    let unchanged = again.one("deploy.unchanged");
    assert_eq!(unchanged["unchanged"], true);
    assert_eq!(unchanged["from"], v1.as_str());
}

/// (b) the `commands` kind's `restart` command is what deploy runs.
#[test]
fn a_commands_environment_with_a_restart_command_is_restarted_with_it() {
    let tp = project();
    let port = tp.port("staging");
    let start = format!(
        "\"$DHASH_RELEASE_DIR/bin/dhash-service\" serve --bind 127.0.0.1:{port} --database \"$DHASH_DATABASE\" \
         --data-dir \"$DHASH_DATA_DIR\" --release-dir \"$DHASH_RELEASE_DIR\" >> \"$DHASH_INSTALL_ROOT/cmd.log\" 2>&1 & \
         echo $! > \"$DHASH_INSTALL_ROOT/service.pid\""
    );
    let stop = "if [ -f \"$DHASH_INSTALL_ROOT/service.pid\" ]; then pid=$(cat \"$DHASH_INSTALL_ROOT/service.pid\"); \
                kill \"$pid\" 2>/dev/null; for _ in $(seq 50); do kill -0 \"$pid\" 2>/dev/null || break; sleep 0.1; done; \
                rm -f \"$DHASH_INSTALL_ROOT/service.pid\"; fi";
    let restart =
        format!("echo restarted >> \"$DHASH_INSTALL_ROOT/restart-marker\"; {stop}; {start}");
    tp.edit_topology(|t| {
        t["environments"]["staging"]["service"] =
            json!({"kind": "commands", "start": start, "stop": stop, "restart": restart,
                   "start_timeout": "10s", "stop_timeout": "5s"});
    });
    let v1 = release_id(&bundle(&tp, "v1", &[], &[]));
    let r = deploy(&tp, &["--tag", "v1", "--no-backup"]);
    r.expect(0);
    let marker = tp.env("staging").install_root.join("restart-marker");
    assert_eq!(
        fs::read_to_string(&marker)
            .unwrap_or_default()
            .lines()
            .count(),
        1,
        "the restart command ran once: {}",
        r.stderr
    );
    assert!(r.of("service.stopped").is_empty(), "no stop-then-start");
    assert!(r.of("service.started").iter().any(|e| e["restart"] == true));
    assert_eq!(health(&tp)["release"], v1.as_str());
}

fn check<'a>(r: &'a Run, name: &str) -> &'a Value {
    r.one("deploy.planned")["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} check:\n{}", r.stdout))
}

/// (e) the dry run's health and journal checks tell the truth.
#[test]
fn the_dry_runs_health_and_journal_checks_can_fail() {
    let tp = project();
    release_id(&bundle(&tp, "v1", &[], &[]));
    deploy(&tp, &["--tag", "v1", "--no-backup"]).expect(0);
    bundle(&tp, "v2", &[], &[]);
    let dry = deploy(&tp, &["--dry-run", "--tag", "v2"]);
    dry.expect(0);
    assert_eq!(check(&dry, "health")["ok"], true);
    assert_eq!(check(&dry, "journal")["ok"], true);

    // The service is down: said, not refused (the deploy starts it).
    let env = tp.env("staging");
    let pid = gates_core::service::running_pid(&env).expect("a running service");
    Command::new("kill")
        .arg(pid.to_string())
        .status()
        .expect("kill");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !health(&tp).is_null() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let dry = deploy(&tp, &["--dry-run", "--tag", "v2"]);
    dry.expect(0);
    let h = check(&dry, "health");
    assert_eq!(h["ok"], false, "{h}");
    assert!(
        h["detail"].as_str().expect("detail").contains("down"),
        "{h}"
    );

    // An unreadable deploy journal: refused by both runs.
    let journal = env.install_root.join("deploy.journal.json");
    fs::write(&journal, "{ torn").expect("write");
    let dry = deploy(&tp, &["--dry-run", "--tag", "v2"]);
    dry.expect(1);
    assert_eq!(check(&dry, "journal")["ok"], false);
    let real = deploy(&tp, &["--tag", "v2"]);
    same_refusal(&dry, &real);
    fs::remove_file(&journal).expect("rm");
}

/// The refusal the dry run announces is the real run's, word for word.
fn same_refusal(dry: &Run, real: &Run) {
    let planned = dry.one("deploy.planned");
    let refusal = &planned["refusal"];
    let msg = refusal["msg"].as_str().expect("refusal.msg");
    assert_eq!(refusal["exit"], dry.code, "{planned}");
    assert_eq!(
        real.code, dry.code,
        "exit codes\n{}\n{}",
        dry.stderr, real.stderr
    );
    let error = real
        .stderr
        .lines()
        .find(|l| l.starts_with("deploy_dhash: error:"))
        .unwrap_or_else(|| panic!("no error line:\n{}", real.stderr));
    assert!(error.ends_with(msg), "dry run: {msg}\nreal run: {error}");
    assert!(real.of("deploy.switched").is_empty());
}

#[test]
fn the_dry_run_and_the_real_run_refuse_the_same_inputs_with_the_same_message() {
    let tp = project();
    let v1 = release_id(&bundle(&tp, "v1", &[], &[]));
    deploy(&tp, &["--tag", "v1", "--no-backup"]).expect(0);
    let v2 = release_id(&bundle(&tp, "v2", &[], &[NOTE]));
    let env = tp.env("staging");

    // --no-migrate with a pending migration.
    let dry = deploy(&tp, &["--dry-run", "--tag", "v2", "--no-migrate"]);
    dry.expect(1);
    let real = deploy(&tp, &["--tag", "v2", "--no-migrate"]);
    same_refusal(&dry, &real);
    let msg = dry.one("deploy.planned")["refusal"]["msg"].clone();
    assert_eq!(real.one("deploy.failed")["reason"], msg);

    // A migration without a .down.sql and no backup.
    const NODOWN: Extra = (
        "0004_create_labels",
        "CREATE TABLE labels (id INTEGER);",
        None,
    );
    bundle(&tp, "nodown", &[], &[NOTE, NODOWN]);
    let dry = deploy(&tp, &["--dry-run", "--tag", "nodown", "--no-backup"]);
    dry.expect(1);
    let real = deploy(&tp, &["--tag", "nodown", "--no-backup"]);
    same_refusal(&dry, &real);

    // A pending interrupted rollback.
    let rj = env.install_root.join("rollback.journal");
    fs::write(&rj, "{ a rollback killed mid-write").expect("write");
    let dry = deploy(&tp, &["--dry-run", "--tag", "v2"]);
    dry.expect(1);
    assert_eq!(check(&dry, "journal")["ok"], false);
    let real = deploy(&tp, &["--tag", "v2"]);
    same_refusal(&dry, &real);
    assert!(real.stderr.contains("rollback"), "{}", real.stderr);
    fs::remove_file(&rj).expect("rm");

    // A bad tag: refused before any plan, alike.
    let dry = deploy(&tp, &["--dry-run", "--tag", "no-such-tag"]);
    let real = deploy(&tp, &["--tag", "no-such-tag"]);
    assert_ne!(dry.code, 0);
    assert_eq!(dry.code, real.code);
    let error = |r: &Run| {
        r.stderr
            .lines()
            .find(|l| l.contains("error:"))
            .map(str::to_string)
    };
    assert_eq!(error(&dry), error(&real));

    assert_eq!(health(&tp)["release"], v1.as_str(), "nothing was changed");
    assert!(!env.releases_dir().join(&v2).exists());
}
