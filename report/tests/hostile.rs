//! report_dhash against hostile or damaged input, as an operator at 3 a.m.
//! may meet it: names that carry HTML or terminal escapes, and a ledger whose
//! last line a killed writer tore. The history is written by hand here (the
//! real tools' history is exercised in report.rs).

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Output;

use serde_json::json;
use testkit::TestProject;

const REPORT: &str = env!("CARGO_BIN_EXE_report_dhash");
const ENV: &str = "staging";

fn report(tp: &TestProject, args: &[&str]) -> Output {
    tp.cmd_path(Path::new(REPORT)).args(args).output().unwrap()
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Writes `lines` as the environment's ledger, exactly (no newline added).
fn write_ledger(tp: &TestProject, text: &str) {
    let env = tp.env(ENV);
    std::fs::create_dir_all(&env.install_root).unwrap();
    std::fs::write(env.ledger_path(), text).unwrap();
}

#[test]
fn a_hostile_gate_name_cannot_add_attributes_to_the_window_page() {
    let tp = TestProject::new();
    let gate = r#"g" onmouseover="alert(document.cookie)" x='y"#;
    let events_path = tp.root().join("events.jsonl");
    let mut lines = String::new();
    for (i, status) in ["ok", "violated"].iter().enumerate() {
        let ts = format!("2026-11-20T10:00:0{i}.000Z");
        lines.push_str(
            &json!({"ts": ts, "event": format!("gate.{status}"), "gate": gate, "status": status,
                    "value": 10.0 * (i as f64 + 1.0), "threshold": 15.0, "unit": "ms", "sample_ts": ts})
            .to_string(),
        );
        lines.push('\n');
    }
    lines.push_str(
        &json!({"ts": "2026-11-20T10:00:02.000Z", "event": "monitor.completed",
                "result": "<b onclick=\"x\">"})
        .to_string(),
    );
    lines.push('\n');
    std::fs::write(&events_path, lines).unwrap();
    let monitor = json!({"ts": "2026-11-20T10:00:03.000Z", "kind": "monitor", "result": "violated",
                         "release": "r1\"'", "events": events_path});
    write_ledger(&tp, &format!("{monitor}\n"));
    let page = tp.root().join("window.html");
    let out = report(
        &tp,
        &["window", "--env", ENV, "--out", page.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        !html.contains("onmouseover=\""),
        "attribute injected: {html}"
    );
    assert!(!html.contains("<b onclick"), "markup injected: {html}");
    assert!(
        html.contains(
            "data-gate=\"g&quot; onmouseover=&quot;alert(document.cookie)&quot; x=&#39;y\""
        ),
        "the gate name kept, escaped: {html}"
    );
}
