//! Service control (gates_core::service), smoke_tests and validate_logging
//! against real dhash-service processes on free loopback ports.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dhash_smoke::{SmokeMode, SmokeOptions};
use gates_core::exit::EXIT_CODES_HELP;
use gates_core::sample::Health;
use gates_core::{service, Emitter};
use serde_json::{json, Value};
use testkit::{events, TestProject};

const SMOKE: &str = env!("CARGO_BIN_EXE_smoke_tests");
const VALIDATE: &str = env!("CARGO_BIN_EXE_validate_logging");
const SECRET_HOOK: &str = "https://hooks.slack.com/services/T000/B000/planted-secret-xyz";

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);
impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
impl Buf {
    fn events(&self) -> Vec<Value> {
        events(&self.0.lock().unwrap())
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("running the binary")
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited normally")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn named<'a>(evs: &'a [Value], name: &str) -> Vec<&'a Value> {
    evs.iter().filter(|e| e["event"] == name).collect()
}

/// The process group of a live process (Linux /proc).
fn pgrp(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

/// A project with a healthy v1 release serving staging.
fn running() -> (TestProject, String) {
    let tp = TestProject::new();
    let bundle = tp.bundle("v1", &[]);
    let id = tp.install_and_start("staging", &bundle);
    (tp, id)
}

// ------------------------------------------------------------ service

#[test]
fn service_start_status_restart_stop() {
    let tp = TestProject::new();
    let env = tp.env("staging");
    let before = service::status(&env);
    assert!(!before.running && before.pid.is_none(), "{before:?}");
    assert!(matches!(before.health, Health::Error { .. }));

    let bundle = tp.bundle("v1", &[]);
    let id = tp.install("staging", &bundle);
    let buf = Buf::default();
    let em = Emitter::to_writer("test", "staging", Box::new(buf.clone()));
    service::start(&env, &em).unwrap();

    let st = service::status(&env);
    assert!(st.running, "{st:?}");
    assert_eq!(st.health, Health::Ok);
    assert_eq!(st.release.as_deref(), Some(id.as_str()));
    let pid = st.pid.unwrap();
    let pidfile = fs::read_to_string(env.pid_file()).unwrap();
    assert_eq!(pidfile.trim(), pid.to_string());
    assert_eq!(
        pgrp(pid),
        Some(pid),
        "the service leads its own process group"
    );
    assert!(service::process_cmdline(pid)
        .unwrap()
        .contains("dhash-service"));
    assert!(fs::read_to_string(env.service_log())
        .unwrap()
        .contains("starting dhash-service"));

    // Starting again is a no-op on a healthy service.
    service::start(&env, &em).unwrap();
    assert_eq!(service::status(&env).pid, Some(pid));
    // ... but not when `current` now names another release (its folder
    // name is its id, as deploy and rollback install releases).
    let other = env.releases_dir().join("other-00000000");
    testkit::copy_dir(&env.releases_dir().join(&id), &other).unwrap();
    let meta = fs::read_to_string(other.join("release.json"))
        .unwrap()
        .replace(&id, "other-00000000");
    fs::write(other.join("release.json"), meta).unwrap();
    gates_core::fsutil::switch_symlink(Path::new("releases/other-00000000"), &env.current_link())
        .unwrap();
    let err = format!("{:#}", service::start(&env, &em).unwrap_err());
    assert!(
        err.contains(&format!("with release {id}, but current is other-00000000")),
        "{err}"
    );
    gates_core::fsutil::switch_symlink(&Path::new("releases").join(&id), &env.current_link())
        .unwrap();

    service::restart(&env, &em).unwrap();
    let pid2 = service::status(&env).pid.unwrap();
    assert_ne!(pid, pid2);
    assert!(!testkit::pid_alive(pid), "the old process is gone");

    service::stop(&env, &em).unwrap();
    assert!(!env.pid_file().exists());
    assert!(!testkit::pid_alive(pid2));
    assert!(!service::status(&env).running);
    // Stopping a stopped service is fine.
    service::stop(&env, &em).unwrap();

    let evs = buf.events();
    let started = named(&evs, "service.started");
    let stopped = named(&evs, "service.stopped");
    assert_eq!(started.len(), 3, "{evs:?}");
    assert_eq!(started[0]["pid"], json!(pid));
    assert_eq!(started[0]["release"], json!(id));
    assert_eq!(started[1]["already_running"], json!(true));
    assert_eq!(stopped.len(), 3);
    assert_eq!(stopped[0]["signal"], "SIGTERM");
    assert_eq!(stopped[2]["was_running"], json!(false));
}

#[test]
fn start_refuses_a_port_taken_by_another_process() {
    let tp = TestProject::new();
    let bundle = tp.bundle("v1", &[]);
    tp.install("staging", &bundle);
    let _squatter = TcpListener::bind(("127.0.0.1", tp.port("staging"))).unwrap();
    let err = format!("{:#}", tp.start("staging").unwrap_err());
    assert!(err.contains("already in use by another process"), "{err}");
    assert!(!tp.env("staging").pid_file().exists());
}

#[test]
fn start_failure_reports_the_service_log() {
    let tp = TestProject::new();
    let bundle = tp.bundle("v1", &[("crash_at_start", "true")]);
    tp.install("staging", &bundle);
    let t0 = Instant::now();
    let err = format!("{:#}", tp.start("staging").unwrap_err());
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "took {:?}",
        t0.elapsed()
    );
    assert!(err.contains("exited during start-up"), "{err}");
    assert!(
        err.contains("last lines of") && err.contains("service.log"),
        "{err}"
    );
    assert!(!tp.env("staging").pid_file().exists());

    // No release at all: a clear refusal.
    let err = format!("{:#}", tp.start("production").unwrap_err());
    assert!(err.contains("no release to start"), "{err}");
}

#[test]
fn stop_never_kills_a_pid_that_is_not_dhash_service() {
    let tp = TestProject::new();
    let env = tp.env("staging");
    let mut sleeper = Command::new("sleep")
        .arg("30")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    fs::create_dir_all(&env.install_root).unwrap();
    fs::write(env.pid_file(), format!("{}\n", sleeper.id())).unwrap();

    let buf = Buf::default();
    let em = Emitter::to_writer("test", "staging", Box::new(buf.clone()));
    service::stop(&env, &em).unwrap();
    assert!(
        sleeper.try_wait().unwrap().is_none(),
        "the unrelated process must live"
    );
    assert!(!env.pid_file().exists(), "the stale pidfile is removed");
    let evs = buf.events();
    assert_eq!(evs[0]["recycled_pid"], json!(true), "{evs:?}");
    assert!(!service::status(&env).running);

    // A garbage pidfile is removed too, nothing signalled.
    fs::write(env.pid_file(), "not-a-pid").unwrap();
    service::stop(&env, &em).unwrap();
    assert!(!env.pid_file().exists());

    sleeper.kill().unwrap();
    let _ = sleeper.wait();
}

#[test]
fn commands_service_control_runs_shell_commands() {
    let tp = TestProject::new();
    let bundle = tp.bundle("v1", &[]);
    tp.install("staging", &bundle);
    let port = tp.port("staging");
    let start = format!(
        "\"$DHASH_RELEASE_DIR/bin/dhash-service\" serve --bind 127.0.0.1:{port} --database \"$DHASH_DATABASE\" \
         --data-dir \"$DHASH_DATA_DIR\" --release-dir \"$DHASH_RELEASE_DIR\" >> \"$DHASH_INSTALL_ROOT/cmd.log\" 2>&1 & \
         echo $! > \"$DHASH_INSTALL_ROOT/service.pid\""
    );
    // Like `systemctl stop`: returns once the process is gone.
    let stop = "pid=$(cat \"$DHASH_INSTALL_ROOT/service.pid\") && kill \"$pid\" && \
                for _ in $(seq 50); do kill -0 \"$pid\" 2>/dev/null || break; sleep 0.1; done; rm -f \"$DHASH_INSTALL_ROOT/service.pid\"";
    tp.edit_topology(|t| {
        t["environments"]["staging"]["service"] =
            json!({"kind": "commands", "start": start, "stop": stop});
    });
    let env = tp.env("staging");
    let buf = Buf::default();
    let em = Emitter::to_writer("test", "staging", Box::new(buf.clone()));
    service::start(&env, &em).unwrap();
    let st = service::status(&env);
    assert!(st.running && st.pid.is_none(), "{st:?}");
    assert_eq!(st.health, Health::Ok);
    // No `restart` command: stop + start.
    service::restart(&env, &em).unwrap();
    assert_eq!(service::status(&env).health, Health::Ok);
    service::stop(&env, &em).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while service::status(&env).running && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!service::status(&env).running);
    assert_eq!(named(&buf.events(), "service.started").len(), 2);

    tp.edit_topology(|t| {
        t["environments"]["staging"]["service"] =
            json!({"kind": "commands", "start": "echo 'unit dhash not found' >&2; exit 3", "stop": "true"});
    });
    let err = format!("{:#}", service::start(&tp.env("staging"), &em).unwrap_err());
    assert!(
        err.contains("unit dhash not found") && err.contains('3'),
        "{err}"
    );

    // A start command that hangs is stopped at the configured start_timeout.
    tp.edit_topology(|t| {
        t["environments"]["staging"]["service"] = json!({"kind": "commands",
            "start": "sleep 60", "stop": "true", "start_timeout": "1s"});
    });
    let t0 = Instant::now();
    let err = format!("{:#}", service::start(&tp.env("staging"), &em).unwrap_err());
    assert!(err.contains("did not finish within 1s"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
}

// ------------------------------------------------------------ smoke_tests

#[test]
fn smoke_passes_on_a_healthy_release() {
    let (tp, id) = running();
    let out = run(tp.cmd_path(Path::new(SMOKE)).args(["--env", "staging"]));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let evs = events(&out.stdout);
    let checks = named(&evs, "smoke.check");
    let names: Vec<&str> = checks
        .iter()
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    assert_eq!(
        &names[..4],
        ["health", "release", "metrics_schema", "queue_status"]
    );
    assert!(
        names.len() > 4 && names[4..].iter().all(|n| n.starts_with("golden:")),
        "{names:?}"
    );
    assert!(checks.iter().all(|c| c["ok"] == json!(true)), "{checks:?}");
    assert!(checks[1]["detail"].as_str().unwrap().contains(&id));
    let passed = named(&evs, "smoke.passed");
    assert_eq!(passed.len(), 1);
    assert!(evs
        .iter()
        .all(|e| e["tool"] == "smoke_tests" && e["env"] == "staging"));

    // One line per check in monitor_logs/smoke_tests_<timestamp>.log.
    let log = Path::new(passed[0]["log"].as_str().unwrap()).to_path_buf();
    assert!(
        log.starts_with(tp.root().join("monitor_logs")),
        "{}",
        log.display()
    );
    let name = log.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        name.starts_with("smoke_tests_") && name.ends_with("Z.log"),
        "{name}"
    );
    let text = fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.lines().filter(|l| l.contains(" PASS ")).count(),
        checks.len(),
        "{text}"
    );
    assert!(text.lines().last().unwrap().contains("RESULT passed"));

    // --quick: health only. --post-rollback: 3 consecutive health checks first.
    let out = run(tp
        .cmd_path(Path::new(SMOKE))
        .args(["--env", "staging", "--quick"]));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let evs = events(&out.stdout);
    let checks = named(&evs, "smoke.check");
    assert_eq!(
        (checks.len(), checks[0]["check"].as_str()),
        (1, Some("health"))
    );

    let out = run(tp.cmd_path(Path::new(SMOKE)).args([
        "--env",
        "staging",
        "--post-rollback",
        "--verbose",
    ]));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let evs = events(&out.stdout);
    assert_eq!(named(&evs, "smoke.check")[0]["check"], "health_consecutive");
    assert!(named(&evs, "health.checked").len() >= 3);

    // The library API.
    let project = tp.project();
    let env = project.env("staging").unwrap();
    let report = dhash_smoke::run(
        &project,
        env,
        &SmokeOptions {
            mode: SmokeMode::PostDeploy,
            dry_run: false,
        },
        &Emitter::sink("test", "staging"),
    )
    .unwrap();
    assert!(report.passed && report.checks.len() > 4, "{report:?}");
}

#[test]
fn smoke_fails_naming_a_wrong_golden_hash() {
    let (tp, _) = running();
    let env = tp.env("staging");
    let manifest = env.current_link().join("golden/manifest.json");
    let mut m: Value = serde_json::from_str(&fs::read_to_string(&manifest).unwrap()).unwrap();
    let first = m["images"][0]["file"].as_str().unwrap().to_string();
    let image = Path::new(&first)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    m["images"][0]["dhash"] = json!("0123456789abcdef");
    fs::write(&manifest, m.to_string()).unwrap();

    let out = run(tp
        .cmd_path(Path::new(SMOKE))
        .args(["--env", "staging", "--post-deploy"]));
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("golden:{image}")) && err.contains("0123456789abcdef"),
        "{err}"
    );
    let evs = events(&out.stdout);
    let failed = named(&evs, "smoke.failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["failed"], json!([format!("golden:{image}")]));
    let log = fs::read_to_string(failed[0]["log"].as_str().unwrap()).unwrap();
    assert!(log.contains(&format!("FAIL golden:{image}")), "{log}");
}

#[test]
fn smoke_times_out_on_a_hanging_metrics_endpoint() {
    let (tp, _) = running();
    let hang = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = hang.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in hang.incoming().flatten() {
            held.push(s);
        }
    });
    tp.edit_topology(|t| {
        t["environments"]["staging"]["metrics_url"] =
            json!(format!("http://127.0.0.1:{port}/metrics"));
        t["environments"]["staging"]["monitor"]["probe_timeout"] = json!("1s");
    });
    let t0 = Instant::now();
    let out = run(tp.cmd_path(Path::new(SMOKE)).args(["--env", "staging"]));
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t0.elapsed()
    );
    let evs = events(&out.stdout);
    let metrics = named(&evs, "smoke.check")
        .into_iter()
        .find(|c| c["check"] == "metrics_schema")
        .unwrap()
        .clone();
    assert_eq!(metrics["ok"], json!(false));
    assert!(
        metrics["detail"]
            .as_str()
            .unwrap()
            .contains("no answer within"),
        "{metrics}"
    );
    assert!(metrics["seconds"].as_f64().unwrap() < 2.0, "{metrics}");
    assert!(stderr(&out).contains("metrics_schema"));
}

#[test]
fn smoke_fails_fast_when_nothing_answers_and_dry_run_contacts_nothing() {
    let tp = TestProject::new();
    let out = run(tp
        .cmd_path(Path::new(SMOKE))
        .args(["--env", "production", "--quick"]));
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("health"), "{}", stderr(&out));

    // Point every URL at a listener that records connections.
    let spy = TcpListener::bind("127.0.0.1:0").unwrap();
    spy.set_nonblocking(true).unwrap();
    let base = format!("http://127.0.0.1:{}", spy.local_addr().unwrap().port());
    tp.edit_topology(|t| {
        let e = &mut t["environments"]["staging"];
        e["health_url"] = json!(format!("{base}/health"));
        e["metrics_url"] = json!(format!("{base}/metrics"));
        e["queue_url"] = json!(format!("{base}/api/dhash/queue/status"));
    });
    let logs_before = fs::read_dir(tp.root().join("monitor_logs"))
        .unwrap()
        .count();
    let out = run(tp
        .cmd_path(Path::new(SMOKE))
        .args(["--env", "staging", "--dry-run"]));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let planned: Vec<String> = named(&events(&out.stdout), "smoke.planned")
        .iter()
        .map(|e| e["check"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        planned[..4],
        ["health", "release", "metrics_schema", "queue_status"]
    );
    assert!(spy.accept().is_err(), "a dry run must not connect");
    let logs_after = fs::read_dir(tp.root().join("monitor_logs"))
        .unwrap()
        .count();
    assert_eq!(logs_before, logs_after, "a dry run writes no log");
}

// ------------------------------------------------------------ validate_logging

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

#[test]
fn validate_logging_passes_on_clean_logs() {
    let tp = TestProject::new();
    write(
        &tp.root().join("monitor_logs/deploy.log"),
        "deploy started\nwebhook [REDACTED] answered 200\n",
    );
    write(
        &tp.root().join("monitor_logs/notification_fallback.jsonl"),
        "{\"event\":\"notify.fallback\",\"url\":\"[REDACTED]\"}\n\n{\"a\":1}\n",
    );
    let out = run(tp
        .cmd_path(Path::new(VALIDATE))
        .args(["--env", "staging"])
        .env("SLACK_WEBHOOK", SECRET_HOOK));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let evs = events(&out.stdout);
    assert_eq!(named(&evs, "logging.passed").len(), 1);
    assert_eq!(named(&evs, "logging.passed")[0]["files"], json!(2));
    let conc = named(&evs, "logging.concurrency-tested");
    assert_eq!(conc[0]["ok"], json!(true));
    // The self-test cleans up after itself.
    let left: Vec<_> = fs::read_dir(tp.root().join("monitor_logs"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
}

#[test]
fn validate_logging_finds_secrets_credentials_and_broken_json_lines() {
    let tp = TestProject::new();
    write(
        &tp.root().join("monitor_logs/deploy.log"),
        &format!("deploy started\nPOST {SECRET_HOOK} failed\nok\n"),
    );
    write(
        &tp.root().join("notifications_out/email.txt"),
        "relay smtp://ops:hunter22@mail.example.com:587\n",
    );
    write(
        &tp.root().join("monitor_logs/notification_fallback.jsonl"),
        "{\"ok\":true}\n{\"torn\":\n",
    );
    let out = run(tp
        .cmd_path(Path::new(VALIDATE))
        .args(["--env", "staging"])
        .env("SLACK_WEBHOOK", SECRET_HOOK));
    assert_eq!(code(&out), 1);
    let err = stderr(&out);
    assert!(
        err.contains("monitor_logs/deploy.log:2: the value of SLACK_WEBHOOK appears unredacted"),
        "{err}"
    );
    assert!(err.contains("notifications_out/email.txt:1"), "{err}");
    assert!(
        err.contains("monitor_logs/notification_fallback.jsonl:2"),
        "{err}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("planted-secret") && !err.contains("planted-secret"),
        "never echo the secret"
    );
    assert!(!stdout.contains("hunter22") && !err.contains("hunter22"));
    let evs = events(&out.stdout);
    let kinds: Vec<&str> = named(&evs, "logging.flagged")
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["secret", "malformed-jsonl", "url-credentials"],
        "{evs:?}"
    );
    assert_eq!(named(&evs, "logging.failed").len(), 1);

    // Without the variable set, the webhook line is not a known secret.
    let out = run(tp.cmd_path(Path::new(VALIDATE)).args(["--env", "staging"]));
    assert!(!stderr(&out).contains("SLACK_WEBHOOK"));
}

#[test]
fn concurrent_appends_never_interleave() {
    let dir = tempfile::tempdir().unwrap();
    let findings = dhash_smoke::logging::concurrency_selftest(dir.path(), 8, 300).unwrap();
    assert!(findings.is_empty(), "{findings:?}");
    let text = fs::read_to_string(dir.path().join("selftest.log")).unwrap();
    assert_eq!(text.lines().count(), 2400);
}

// ------------------------------------------------------------ arguments

#[test]
fn invalid_arguments_exit_2_and_help_lists_exit_codes() {
    let tp = TestProject::new();
    for bin in [SMOKE, VALIDATE] {
        let out = run(tp
            .cmd_path(Path::new(bin))
            .args(["--env", "staging", "--bogus"]));
        assert_eq!(code(&out), 2, "{bin}: {}", stderr(&out));
        let out = run(&mut tp.cmd_path(Path::new(bin)));
        assert_eq!(code(&out), 2, "{bin} without --env");
        let out = run(tp.cmd_path(Path::new(bin)).args(["--env", "qa"]));
        assert_eq!(code(&out), 2, "{bin} unknown env");
        assert!(
            stderr(&out).contains("staging"),
            "lists the known environments: {}",
            stderr(&out)
        );
        let out = run(tp.cmd_path(Path::new(bin)).arg("--help"));
        assert_eq!(code(&out), 0);
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.trim_end().ends_with(EXIT_CODES_HELP), "{bin}: {help}");
    }
    let out =
        run(tp
            .cmd_path(Path::new(SMOKE))
            .args(["--env", "staging", "--quick", "--post-deploy"]));
    assert_eq!(code(&out), 2);
    let out = run(tp
        .cmd_path(Path::new(VALIDATE))
        .args(["--env", "staging", "--threads", "0"]));
    assert_eq!(code(&out), 2);
}
