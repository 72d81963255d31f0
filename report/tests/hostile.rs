//! report_dhash against hostile or damaged input, as an operator at 3 a.m.
//! may meet it: names that carry HTML or terminal escapes, and a ledger whose
//! last line a killed writer tore. The history is written by hand here (the
//! real tools' history is exercised in report.rs).

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Output;

use serde_json::json;
use testkit::{events, TestProject};

const REPORT: &str = env!("CARGO_BIN_EXE_report_dhash");
const ENV: &str = "staging";

fn report(tp: &TestProject, args: &[&str]) -> Output {
    tp.cmd_path(Path::new(REPORT)).args(args).output().unwrap()
}

use testkit::describe;

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

/// `minutes_ago` minutes before now, as the tools write times.
fn recent(minutes_ago: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::minutes(minutes_ago))
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

#[test]
fn terminal_escapes_in_the_ledger_are_shown_not_obeyed_by_the_table() {
    let tp = TestProject::new();
    let evil = "v2\u{1b}]0;pwned\u{7}\u{1b}[2J\u{202e}";
    let deploy = json!({"ts": recent(60), "kind": "deploy", "result": "healthy", "release": evil});
    let rollback = json!({"ts": recent(30), "kind": "rollback", "result": "completed",
                          "from": evil, "release": "v1", "reason": "manual"});
    write_ledger(&tp, &format!("{deploy}\n{rollback}\n"));
    let table = report(&tp, &["--env", ENV, "--table"]);
    let events_out = report(&tp, &["--env", ENV]);
    for (out, text) in [(&table, &table.stdout), (&events_out, &events_out.stderr)] {
        assert_eq!(out.status.code(), Some(0), "{}", describe(out));
        let text = String::from_utf8_lossy(text);
        assert!(
            !text.contains(['\u{1b}', '\u{7}', '\u{202e}']),
            "raw escapes reach the terminal: {text:?}"
        );
        assert!(
            text.contains(r"v2\u{1b}]0;pwned\u{7}\u{1b}[2J\u{202e}"),
            "the release still shown, escaped: {text}"
        );
    }
}

#[test]
fn a_torn_last_ledger_line_is_skipped_with_a_warning_but_damage_before_it_is_refused() {
    let tp = TestProject::new();
    let deploy = json!({"ts": recent(60), "kind": "deploy", "result": "healthy", "release": "r1"});
    let rollback = json!({"ts": recent(30), "kind": "rollback", "result": "completed",
                          "from": "r1", "release": "r0", "reason": "manual"});
    // A writer killed mid-append: no newline after the cut.
    let torn = r#"{"ts":"2026-12-02T09:00:00.0"#;
    write_ledger(&tp, &format!("{deploy}\n{rollback}\n{torn}"));
    let textfile = tp.root().join("dhash.prom");
    let out = report(
        &tp,
        &[
            "--env",
            ENV,
            "--prometheus-textfile",
            textfile.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let evs = events(&out.stdout);
    let warned: Vec<_> = evs
        .iter()
        .filter(|e| e["event"] == "report.ledger-torn")
        .collect();
    assert_eq!(warned.len(), 1, "{}", describe(&out));
    assert_eq!(warned[0]["level"], "warning");
    assert_eq!(warned[0]["line"], 3);
    let figure = |name: &str| {
        evs.iter()
            .find(|e| e["event"] == "report.figure" && e["name"] == name)
            .map(|e| e["value"].clone())
    };
    assert_eq!(
        figure("deployments"),
        Some(json!(1.0)),
        "{}",
        describe(&out)
    );
    assert_eq!(figure("ledger_torn_lines"), Some(json!(1.0)));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ledger line 3 is torn"));
    let prom = std::fs::read_to_string(&textfile).unwrap();
    assert!(
        prom.contains("dhash_ledger_torn_lines{env=\"staging\"} 1"),
        "{prom}"
    );

    // The next append after a cut starts a new line (fsutil::append_line),
    // so a torn line may sit in the middle: still a cut, still skipped.
    write_ledger(&tp, &format!("{deploy}\n{torn}\n{rollback}\n"));
    let out = report(&tp, &["--env", ENV]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let evs = events(&out.stdout);
    let torn_at: Vec<_> = evs
        .iter()
        .filter(|e| e["event"] == "report.ledger-torn")
        .map(|e| e["line"].clone())
        .collect();
    assert_eq!(torn_at, [json!(2)], "{}", describe(&out));
    assert_eq!(
        evs.iter()
            .filter(|e| e["event"] == "report.rollback")
            .count(),
        1,
        "the record after the cut is read: {}",
        describe(&out)
    );

    // A write cut inside a multi-byte character (free text is written raw)
    // leaves bytes that are not UTF-8: still a torn line, not an unreadable
    // ledger.
    let env = tp.env(ENV);
    let reason = r#"{"ts":"2026-12-02T09:00:00.000Z","kind":"judgment","reason":"doublé"#;
    let mut bytes = format!("{deploy}\n").into_bytes();
    bytes.extend_from_slice(&reason.as_bytes()[..reason.len() - 1]);
    bytes.extend_from_slice(format!("\n{rollback}\n").as_bytes());
    std::fs::write(env.ledger_path(), bytes).unwrap();
    let out = report(&tp, &["--env", ENV]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let evs = events(&out.stdout);
    assert!(
        evs.iter()
            .any(|e| e["event"] == "report.ledger-torn" && e["line"] == 2),
        "{}",
        describe(&out)
    );
    assert_eq!(
        evs.iter()
            .filter(|e| e["event"] == "report.rollback")
            .count(),
        1,
        "{}",
        describe(&out)
    );

    // A record glued onto a cut (what appends did before) is damage: refused.
    write_ledger(&tp, &format!("{deploy}\n{torn}{rollback}\n"));
    let out = report(&tp, &["--env", ENV]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ledger.jsonl line 2") && err.contains("unreadable"),
        "{err}"
    );
    assert!(
        out.stdout.is_empty(),
        "no partial report: {}",
        describe(&out)
    );
}

#[test]
fn mark_refuses_an_empty_reason_as_rollback_dhash_does() {
    let tp = TestProject::new();
    let rollback = json!({"ts": recent(30), "kind": "rollback", "result": "completed",
                          "from": "r1", "release": "r0", "reason": "quality gate g violated: x"});
    write_ledger(&tp, &format!("{rollback}\n"));
    let id = rollback["ts"].as_str().unwrap();
    for blank in ["", "  "] {
        let out = report(
            &tp,
            &[
                "mark",
                "--env",
                ENV,
                "--rollback",
                id,
                "--unnecessary",
                "--reason",
                blank,
            ],
        );
        assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("--reason is empty"));
    }
    let out = report(
        &tp,
        &["mark", "--env", ENV, "--rollback", id, "--unnecessary"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let ledger = std::fs::read_to_string(tp.env(ENV).ledger_path()).unwrap();
    assert_eq!(ledger.matches("rollback-review").count(), 1, "{ledger}");
}
