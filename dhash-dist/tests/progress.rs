//! The progress display: drawn under a pseudo-terminal (`script`, util-linux's
//! bsdutils), absent when the same command's stderr is a pipe. Backup,
//! verify and replay are run for real against a test project.

use std::path::Path;
use std::process::Output;

use testkit::TestProject;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `sh -c` quoting of one argument.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Runs `cmd` (program and args) in the project under a pseudo-terminal;
/// returns what the terminal received (stdout and stderr together).
fn on_terminal(tp: &TestProject, program: &Path, args: &[&str]) -> String {
    let line: Vec<String> = std::iter::once(program.to_string_lossy().into_owned())
        .chain(args.iter().map(|a| a.to_string()))
        .map(|a| quote(&a))
        .collect();
    let out = tp
        .cmd_path(Path::new("script"))
        .args(["-qfec", &line.join(" "), "/dev/null"])
        .env("TERM", "xterm")
        .env("COLUMNS", "160")
        .env_remove("DHASH_PROGRESS")
        .output()
        .unwrap_or_else(|e| {
            panic!("`script` cannot run ({e}): install Debian's bsdutils (.ci/run must install it)")
        });
    assert!(
        out.status.success(),
        "{} under a terminal: {:?}\n{}{}",
        line.join(" "),
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn piped(tp: &TestProject, program: &Path, args: &[&str]) -> Output {
    let out = tp
        .cmd_path(program)
        .args(args)
        .env_remove("DHASH_PROGRESS")
        .output()
        .expect("the tool runs");
    assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    out
}

/// The display's fixed words: `<what> [====>   ] 1.2 KiB/2.6 KiB 3 MiB/s 0s left`.
fn shows_progress(screen: &str, what: &str) -> bool {
    screen.contains(&format!("{what} [")) && screen.contains("/s") && screen.contains(" left")
}

fn assert_progress(what: &str, tp: &TestProject, program: &Path, args: &[&str]) {
    let screen = on_terminal(tp, program, args);
    assert!(
        shows_progress(&screen, what),
        "no {what} progress on the terminal:\n{screen}"
    );
    let out = piped(tp, program, args);
    let stderr = text(&out.stderr);
    assert!(
        !stderr.contains(&format!("{what} [")) && !stderr.contains('\u{1b}'),
        "progress drawn into a pipe:\n{stderr}"
    );
    for line in text(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"));
        assert!(v["event"].is_string(), "{line}");
    }
}

/// A recording of 2 minutes of healthy 1 s samples, as the live monitor writes it.
fn recording(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("telemetry.csv");
    let mut csv = String::from(
        "t_ms,health,health_detail,metrics_error,requests_total,hash_requests_total,extraction_failures_total,errors_total,low_confidence_queue,memory_percent,cpu_percent,disk_percent,hash_time_buckets,hash_time_ms\n",
    );
    for i in 0..120u64 {
        let n = i * 10;
        csv.push_str(&format!(
            "{},ok,,,{n},{n},0,0,3,40,10,20,100:{n};1000:{n};inf:{n},\n",
            1_700_000_000_000u64 + i * 1000
        ));
    }
    std::fs::write(&path, csv).expect("writing the recording");
    path
}

#[test]
fn backup_verify_and_replay_show_progress_on_a_terminal_only() {
    let tp = TestProject::new();
    let data = tp.env("staging").data_dir;
    std::fs::create_dir_all(&data).expect("data dir");
    // Enough bytes that the display has something to count.
    std::fs::write(data.join("blob.bin"), vec![7u8; 4 << 20]).expect("data file");
    let backup = testkit::bin_path("backup_dhash");
    assert_progress("backup", &tp, &backup, &["--env", "staging"]);

    let listed = piped(&tp, &backup, &["--env", "staging", "--list"]);
    let events = testkit::events(&listed.stdout);
    let zip = events
        .iter()
        .find_map(|e| e["path"].as_str())
        .unwrap_or_else(|| panic!("no backup listed: {}", text(&listed.stdout)))
        .to_string();
    assert_progress("verify", &tp, &backup, &["--verify", &zip]);

    let csv = recording(tp.root());
    let csv = csv.to_string_lossy().into_owned();
    let monitor = testkit::bin_path("monitor_dhash");
    assert_progress(
        "replay",
        &tp,
        &monitor,
        &["--env", "staging", "--replay", &csv],
    );
}
