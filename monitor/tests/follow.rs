//! `monitor_dhash --follow`, the operator's dashboard, against a real short
//! watch of the reference service: through a pipe it prints plain lines;
//! on a terminal (a pty from `script`, util-linux) it redraws in place.
//! Both follow the same watch and exit with its result.

#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use testkit::TestProject;

const MONITOR: &str = env!("CARGO_BIN_EXE_monitor_dhash");

use testkit::describe;

/// Waits (bounded) for a child; kills it and fails the test on timeout.
fn wait_bounded(child: Child, limit: Duration) -> Output {
    let pid = child.id();
    let started = Instant::now();
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    while !waiter.is_finished() {
        if started.elapsed() > limit {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("pid {pid} did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    waiter.join().unwrap()
}

#[test]
fn follow_shows_the_running_watch_plain_in_a_pipe_and_redrawn_on_a_terminal() {
    let tp = TestProject::new();
    let env = tp.env_name();
    let v1 = tp.install_and_start(env, &tp.bundle("v1", &[]));
    let gates = tp.root().join("gates.json");
    let doc = json!({"environments": {env: {"quality_gates": {
        "low_confidence_queue": {"threshold": 1000, "window_minutes": 0, "action": "auto-rollback"},
        "extraction_failure_rate": {"threshold": 50, "window_minutes": "2s", "action": "alert"}
    }}}});
    std::fs::write(&gates, serde_json::to_vec(&doc).unwrap()).unwrap();

    // Started first, so the watch is there; --follow also waits for one.
    let plain = tp
        .cmd_path(MONITOR.as_ref())
        .args(["--env", env, "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let tty = tp
        .cmd_path("script".as_ref())
        .args([
            "-qfec",
            &format!("{MONITOR} --env {env} --follow"),
            "/dev/null",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("`script` (util-linux, Debian's bsdutils) is needed for the terminal check: {e}")
        });
    let watch = tp
        .cmd_path(MONITOR.as_ref())
        .args([
            "--env",
            env,
            "--duration",
            "4",
            "--release",
            &v1,
            "--config",
        ])
        .arg(&gates)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let watch = wait_bounded(watch, Duration::from_secs(30));
    assert_eq!(watch.status.code(), Some(0), "the watch passed");
    let plain = wait_bounded(plain, Duration::from_secs(20));
    let tty = wait_bounded(tty, Duration::from_secs(20));

    assert_eq!(plain.status.code(), Some(0), "{}", describe(&plain));
    let text = String::from_utf8_lossy(&plain.stdout);
    assert!(
        !text.contains('\x1b'),
        "no terminal codes in a pipe: {text}"
    );
    assert!(text.contains(&format!("watching {v1} until ")), "{text}");
    let queue_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" low_confidence_queue ok "))
        .collect();
    assert!(
        queue_lines.len() >= 2
            && queue_lines[0].contains("(threshold 1000.00 items, auto-rollback)"),
        "a line per decision, with the threshold: {text}"
    );
    assert!(
        text.contains(" extraction_failure_rate pending "),
        "the alert gate pending until its 2 s are covered: {text}"
    );
    assert!(text.trim_end().ends_with("watch ended: passed"), "{text}");

    assert_eq!(tty.status.code(), Some(0), "{}", describe(&tty));
    let screen = String::from_utf8_lossy(&tty.stdout);
    let frames = screen.matches("\x1b[H\x1b[J").count();
    assert!(
        frames >= 3,
        "redrawn in place ({frames} frames): {screen:?}"
    );
    let last = screen.rsplit("\x1b[H\x1b[J").next().unwrap();
    assert!(
        last.contains(&format!("dhash watch of {v1} on {env} - ended: passed")),
        "{last}"
    );
    for row in [
        "low_confidence_queue",
        "extraction_failure_rate",
        "last samples (UTC)",
        "health ok",
    ] {
        assert!(last.contains(row), "{row} in the last frame: {last}");
    }
    let running = screen
        .split("\x1b[H\x1b[J")
        .any(|f| f.contains("s left in the window"));
    assert!(running, "time left shown while it ran: {screen:?}");
}

#[test]
fn follow_without_a_watch_fails_naming_the_environment() {
    let tp = TestProject::new();
    let started = Instant::now();
    let out = Command::new(MONITOR)
        .current_dir(tp.root())
        .env(gates_core::project::ROOT_VAR, tp.root())
        .args(["--env", "staging", "--follow"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no watch of staging is running"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(20), "bounded wait");
}
