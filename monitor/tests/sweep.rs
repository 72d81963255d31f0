//! `--replay … --sweep` over windows the real monitor recorded against the
//! reference service (issue 16): one release rolled back by a gate, one
//! rolled back and then marked unnecessary by an operator, one that passed.
//! The expected figures are computed here from the recordings themselves.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};
use testkit::{events, TestProject};

const MONITOR: &str = env!("CARGO_BIN_EXE_monitor_dhash");
/// The live threshold of the only gate, and the sweep around it.
const LIVE: f64 = 1000.0;
const SWEEP: &str = "low_confidence_queue.threshold=250..2000/250";

use testkit::describe;

fn of<'a>(evs: &'a [Value], name: &str) -> Vec<&'a Value> {
    evs.iter().filter(|e| e["event"] == name).collect()
}

fn monitor(tp: &TestProject) -> Command {
    tp.cmd_path(Path::new(MONITOR))
}

/// One instant auto-rollback gate: the low-confidence queue, which a
/// bundle's `low_confidence_flood` fills at start-up to a known size.
fn gates(tp: &TestProject, env: &str) -> PathBuf {
    let doc = json!({"environments": {env: {"quality_gates": {
        "low_confidence_queue": {"threshold": LIVE, "window_minutes": 0, "action": "auto-rollback"}
    }}}});
    let path = tp.root().join("sweep-gates.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    path
}

/// Deploys a bundle flooding the queue with `flood` items and watches it.
/// (`tag` "v2" with 1500 is monitor.rs's bundle: cached once for both.)
fn watch_flood(
    tp: &TestProject,
    (env, tag): (&str, &str),
    cfg: &Path,
    backup: &Path,
    flood: u32,
) -> Output {
    tp.stop(env).expect("stop the running release");
    let bundle = tp.bundle(tag, &[("low_confidence_flood", &flood.to_string())]);
    tp.install_and_start(env, &bundle);
    monitor(tp)
        .args(["--env", env, "--duration", "2", "--config"])
        .arg(cfg)
        .arg("--backup")
        .arg(backup)
        .stdin(Stdio::null())
        .output()
        .expect("monitor_dhash runs")
}

fn recording_of(out: &Output) -> PathBuf {
    let evs = events(&out.stdout);
    PathBuf::from(
        of(&evs, "monitor.started")[0]["recording"]
            .as_str()
            .unwrap(),
    )
}

/// The queue figures of a recording, read from the CSV by column name.
fn queue_figures(file: &Path) -> Vec<(i64, f64)> {
    let text = std::fs::read_to_string(file).unwrap();
    let mut lines = text.lines().filter(|l| !l.starts_with('#'));
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (t, q) = (col("t_ms").unwrap(), col("low_confidence_queue").unwrap());
    lines
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Some((f[t].parse().ok()?, f[q].parse().ok()?))
        })
        .collect()
}

/// When a queue threshold would first have been crossed (`>`), if ever.
fn first_crossing(figures: &[(i64, f64)], threshold: f64) -> Option<i64> {
    figures
        .iter()
        .find(|(_, q)| *q > threshold)
        .map(|(t, _)| *t)
}

fn backup(tp: &TestProject, env: &str) -> PathBuf {
    let out = tp
        .cmd("backup_dhash")
        .args(["--env", env])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    PathBuf::from(
        of(&events(&out.stdout), "backup.verified")[0]["path"]
            .as_str()
            .unwrap(),
    )
}

#[test]
fn a_sweep_over_real_watches_judges_against_what_happened() {
    let tp = TestProject::new();
    let env = tp.env_name();
    let v1 = tp.bundle("v1", &[]);
    tp.install_and_start(env, &v1);
    let backup = backup(&tp, env);
    let cfg = gates(&tp, env);

    // A flood of 1500 is rolled back (needed); one of 1200 is rolled back
    // and then marked unnecessary; one of 400 passes.
    let needed = watch_flood(&tp, (env, "v2"), &cfg, &backup, 1500);
    assert_eq!(needed.status.code(), Some(3), "{}", describe(&needed));
    let unneeded = watch_flood(&tp, (env, "flood1200"), &cfg, &backup, 1200);
    assert_eq!(unneeded.status.code(), Some(3), "{}", describe(&unneeded));
    let passed = watch_flood(&tp, (env, "flood400"), &cfg, &backup, 400);
    assert_eq!(passed.status.code(), Some(0), "{}", describe(&passed));
    let incident = of(&events(&unneeded.stdout), "incident.created")[0]["path"]
        .as_str()
        .unwrap_or_else(|| panic!("incident.created names its record: {}", describe(&unneeded)))
        .to_string();
    let out = tp
        .cmd("rollback_dhash")
        .args(["--env", env, "--mark-unnecessary", &incident])
        .args(["--reason", "queue backlog from a batch import"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    let files = [&needed, &unneeded, &passed].map(recording_of);
    let figures: Vec<Vec<(i64, f64)>> = files.iter().map(|f| queue_figures(f)).collect();
    let out = monitor(&tp)
        .args(["--env", env, "--config"])
        .arg(&cfg)
        .arg("--replay")
        .args(&files)
        .args(["--sweep", SWEEP])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let evs = events(&out.stdout);
    let combos = of(&evs, "sweep.combination");
    assert_eq!(combos.len(), 8, "{}", describe(&out));
    let done = &of(&evs, "sweep.completed")[0];
    let actual: Vec<&str> = (0..3)
        .map(|i| done["recordings"][i]["actual"].as_str().unwrap())
        .collect();
    assert_eq!(
        actual,
        ["rolled-back", "rolled-back (marked unnecessary)", "passed"],
        "{done}"
    );

    // Each combination, recomputed from the recorded queue figures.
    let real_end = figures[0].last().unwrap().0;
    let mut tightest = None;
    for c in &combos {
        let th = c["settings"]["low_confidence_queue.threshold"]
            .as_f64()
            .unwrap();
        let at: Vec<Option<i64>> = figures.iter().map(|f| first_crossing(f, th)).collect();
        let fp = usize::from(at[1].is_some()) + usize::from(at[2].is_some());
        assert_eq!(c["rollbacks"], at.iter().flatten().count(), "{th}: {c}");
        assert_eq!(c["false_positives"], fp, "{th}: {c}");
        assert_eq!(
            (&c["caught"], &c["needed"]),
            (&json!(usize::from(at[0].is_some())), &json!(1)),
            "{th}: {c}"
        );
        assert_eq!(
            (&c["avoided_unnecessary"], &c["unnecessary"]),
            (&json!(usize::from(at[1].is_none())), &json!(1)),
            "{th}: {c}"
        );
        let shifts: Vec<f64> = at[0]
            .map(|t| (t - real_end) as f64 / 1000.0)
            .into_iter()
            .collect();
        assert_eq!(c["shift_secs"], json!(shifts), "{th}: {c}");
        if th == LIVE {
            // The live setting catches the real rollback where it happened.
            assert!(shifts.len() == 1 && shifts[0].abs() < 1.0, "{c}");
        }
        if fp == 0 && at[0].is_some() && tightest.is_none() {
            tightest = Some(th);
        }
    }
    // Looser than the needed flood misses it; the unnecessary one is avoided
    // only above its flood; the suggestion is the tightest without a false
    // positive (the sweep runs upwards).
    let miss = combos
        .iter()
        .find(|c| c["settings"]["low_confidence_queue.threshold"] == 1500.0)
        .unwrap();
    assert_eq!(
        (&miss["caught"], &miss["rollbacks"]),
        (&json!(0), &json!(0)),
        "{miss}"
    );
    assert_eq!(
        tightest,
        Some(1250.0),
        "floods 1500/1200/400: {}",
        describe(&out)
    );
    let avoided = combos
        .iter()
        .find(|c| c["settings"]["low_confidence_queue.threshold"] == 1250.0)
        .unwrap();
    assert_eq!(avoided["avoided_unnecessary"], 1, "{avoided}");
    assert_eq!(
        done["suggested"]["settings"]["low_confidence_queue.threshold"], 1250.0,
        "{done}"
    );
}
