//! gates-core's integration tests: the seed gates at their boundaries, missing
//! data, counter resets, histogram percentiles, and every kind of broken config.

use std::path::Path;
use std::time::Duration;

use gates_core::config::{Action, ConfigError, GateKind, GatesFile, Topology};
use gates_core::gates::{histogram_quantile, quantile_linear, Decision, Evaluator, Status};
use gates_core::sample::{Bucket, Health, Metrics, Sample};

fn repo_file(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name)
}

fn production_gates() -> GatesFile {
    GatesFile::load(&repo_file("quality-gates-config.json")).expect("shipped gates load")
}

fn evaluator(env: &str, only: &str) -> Evaluator {
    let file = production_gates();
    let gates = file
        .env(env)
        .expect("env")
        .gates
        .iter()
        .filter(|g| g.name == only)
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(gates.len(), 1, "gate {only} shipped for {env}");
    Evaluator::new(gates)
}

fn metrics(req: f64, fail: f64) -> Metrics {
    Metrics {
        requests_total: Some(req),
        hash_requests_total: Some(req),
        extraction_failures_total: Some(fail),
        errors_total: Some(0.0),
        low_confidence_queue: Some(0.0),
        memory_percent: Some(10.0),
        ..Metrics::default()
    }
}

fn sample(t_s: i64, health: Health, m: Result<Metrics, String>) -> Sample {
    Sample {
        t_ms: t_s * 1000,
        health,
        metrics: m,
    }
}

fn ok(t_s: i64, m: Metrics) -> Sample {
    sample(t_s, Health::Ok, Ok(m))
}

fn one(ev: &mut Evaluator, s: &Sample) -> Decision {
    let mut d = ev.observe(s);
    assert_eq!(d.len(), 1);
    d.remove(0)
}

#[test]
fn health_two_failures_do_not_trip_a_more_than_two_gate_three_do() {
    let mut ev = evaluator("production", "health_failures");
    let down = || Health::Error {
        detail: "connection refused".into(),
    };
    assert_eq!(
        one(&mut ev, &sample(0, Health::Ok, Ok(metrics(0.0, 0.0)))).status,
        Status::Ok
    );
    assert_eq!(
        one(&mut ev, &sample(30, down(), Err("refused".into()))).status,
        Status::Ok
    );
    let d = one(
        &mut ev,
        &sample(
            60,
            Health::NotOk {
                detail: "503".into(),
            },
            Err("x".into()),
        ),
    );
    assert_eq!((d.status, d.value), (Status::Ok, Some(2.0)));
    let d = one(&mut ev, &sample(90, down(), Err("refused".into())));
    assert_eq!((d.status, d.value), (Status::Violated, Some(3.0)));
    assert_eq!(d.action, Action::AutoRollback);
    assert!(
        d.reason
            .to_string()
            .contains("3 failed health checks in a row"),
        "{}",
        d.reason
    );
    // One OK check resets the run.
    assert_eq!(
        one(&mut ev, &sample(120, Health::Ok, Ok(metrics(0.0, 0.0)))).value,
        Some(0.0)
    );
}

#[test]
fn extraction_failure_rate_exactly_five_percent_is_not_above_five() {
    let mut ev = evaluator("production", "extraction_failure_rate");
    let d = one(&mut ev, &ok(0, metrics(1000.0, 10.0)));
    assert_eq!(d.status, Status::Pending, "{}", d.reason);
    // 5 minutes in: a 10-minute window is not covered.
    assert_eq!(
        one(&mut ev, &ok(300, metrics(1500.0, 35.0))).status,
        Status::Pending
    );
    // 10 minutes: 100 requests more than... 2000-1000 = 1000 requests, 60-10 = 50 failures = 5 %.
    let d = one(&mut ev, &ok(600, metrics(2000.0, 60.0)));
    assert_eq!(d.status, Status::Ok, "{}", d.reason);
    assert!((d.value.expect("value") - 5.0).abs() < 1e-9);
    // Next: anchor is t=0 still (t=300 is not 10 min old at t=660): 1010 req, 61 fail → 6.04 %.
    let d = one(&mut ev, &ok(660, metrics(2010.0, 71.0)));
    assert_eq!(d.status, Status::Violated, "{}", d.reason);
    assert!(
        d.reason.to_string().contains("above the threshold 5 %"),
        "{}",
        d.reason
    );
}

#[test]
fn ratio_over_window_uses_the_newest_anchor_at_least_a_window_old() {
    let mut ev = evaluator("production", "error_rate"); // 3 % over 5 min, alert
    let m = |req: f64, err: f64| Metrics {
        errors_total: Some(err),
        ..metrics(req, 0.0)
    };
    one(&mut ev, &ok(0, m(0.0, 0.0)));
    one(&mut ev, &ok(120, m(100.0, 50.0))); // a burst early on
    one(&mut ev, &ok(300, m(200.0, 50.0)));
    // At t=420 the anchor is t=120 (newest ≤ 420-300): 300 requests, 0 errors since.
    let d = one(&mut ev, &ok(420, m(400.0, 50.0)));
    assert_eq!((d.status, d.value), (Status::Ok, Some(0.0)), "{}", d.reason);
    assert_eq!(d.action, Action::Alert);
}

#[test]
fn counter_reset_mid_window_never_gives_a_negative_or_absurd_rate() {
    let mut ev = evaluator("production", "extraction_failure_rate");
    one(&mut ev, &ok(0, metrics(10_000.0, 100.0)));
    one(&mut ev, &ok(300, metrics(10_500.0, 110.0)));
    // The service restarted: counters start again from zero.
    one(&mut ev, &ok(360, metrics(40.0, 1.0)));
    let d = one(&mut ev, &ok(600, metrics(400.0, 4.0)));
    // Increases: 500 + 40 + 360 = 900 requests; 10 + 1 + 3 = 14 failures.
    let v = d.value.expect("value");
    assert!((v - 14.0 / 900.0 * 100.0).abs() < 1e-9, "rate {v}");
    assert_eq!(d.status, Status::Ok);
}

#[test]
fn no_traffic_is_no_data_and_never_violates_by_default() {
    let mut ev = evaluator("production", "extraction_failure_rate");
    for t in 0..30 {
        let d = one(&mut ev, &ok(t * 60, metrics(5.0, 1.0)));
        if t >= 10 {
            assert_eq!(d.status, Status::NoData, "{}", d.reason);
            assert!(d.reason.to_string().contains("no traffic"), "{}", d.reason);
        }
    }
}

#[test]
fn failed_metrics_probes_are_errors_then_a_violation_after_the_configured_run() {
    let mut ev = evaluator("production", "low_confidence_queue");
    assert_eq!(one(&mut ev, &ok(0, metrics(0.0, 0.0))).status, Status::Ok);
    for i in 1..5 {
        let d = one(
            &mut ev,
            &sample(i * 30, Health::Ok, Err("timed out".into())),
        );
        assert_eq!(d.status, Status::Error, "poll {i}: {}", d.reason);
    }
    let d = one(&mut ev, &sample(150, Health::Ok, Err("timed out".into())));
    assert_eq!(d.status, Status::Violated, "{}", d.reason);
    assert!(
        d.reason.to_string().contains("5 polls in a row"),
        "{}",
        d.reason
    );
}

#[test]
fn no_data_violates_only_when_configured() {
    let text = r#"{"environments":{"production":{"quality_gates":{
        "low_confidence_queue":{"threshold":1000,"action":"shadow","no_data_to_violate":2}}}}}"#;
    let file = GatesFile::parse(Path::new("g.json"), text).expect("parse");
    let mut ev = Evaluator::new(file.env("production").expect("env").gates.clone());
    let m = Metrics {
        low_confidence_queue: None,
        ..metrics(0.0, 0.0)
    };
    assert_eq!(one(&mut ev, &ok(0, m.clone())).status, Status::NoData);
    let d = one(&mut ev, &ok(30, m));
    assert_eq!((d.status, d.action), (Status::Violated, Action::Shadow));
}

#[test]
fn low_confidence_queue_is_instant_and_strict() {
    let mut ev = evaluator("production", "low_confidence_queue");
    let q = |n: f64| Metrics {
        low_confidence_queue: Some(n),
        ..metrics(0.0, 0.0)
    };
    assert_eq!(one(&mut ev, &ok(0, q(1000.0))).status, Status::Ok);
    let d = one(&mut ev, &ok(30, q(1001.0)));
    assert_eq!((d.status, d.value), (Status::Violated, Some(1001.0)));
}

#[test]
fn memory_must_breach_for_the_whole_window() {
    let mut ev = evaluator("production", "memory_usage"); // > 85 % for 5 min
    let mem = |p: f64| Metrics {
        memory_percent: Some(p),
        ..metrics(0.0, 0.0)
    };
    assert_eq!(one(&mut ev, &ok(0, mem(90.0))).status, Status::Pending);
    assert_eq!(one(&mut ev, &ok(120, mem(95.0))).status, Status::Pending);
    // A dip resets the run.
    assert_eq!(one(&mut ev, &ok(240, mem(80.0))).status, Status::Ok);
    assert_eq!(one(&mut ev, &ok(270, mem(86.0))).status, Status::Pending);
    assert_eq!(one(&mut ev, &ok(569, mem(86.0))).status, Status::Pending);
    let d = one(&mut ev, &ok(570, mem(86.0)));
    assert_eq!(d.status, Status::Violated, "{}", d.reason);
    assert_eq!(d.action, Action::Alert);
}

fn hist(counts: &[(f64, f64)]) -> Vec<Bucket> {
    counts
        .iter()
        .map(|&(le, count)| Bucket { le, count })
        .collect()
}

#[test]
fn p95_from_histogram_deltas_matches_a_hand_computation() {
    let mut ev = evaluator("production", "p95_hash_time"); // > 2000 ms over 15 min
    let inf = f64::INFINITY;
    let h = |b: Vec<Bucket>| Metrics {
        hash_time_buckets: Some(b),
        ..metrics(0.0, 0.0)
    };
    // Before the window: 1000 fast requests, all ≤ 100 ms.
    one(
        &mut ev,
        &ok(
            0,
            h(hist(&[
                (100.0, 1000.0),
                (1000.0, 1000.0),
                (2500.0, 1000.0),
                (inf, 1000.0),
            ])),
        ),
    );
    // 15 minutes later, 200 more requests: 100 ≤ 100 ms, 60 in (100, 1000], 40 in (1000, 2500].
    let d = one(
        &mut ev,
        &ok(
            900,
            h(hist(&[
                (100.0, 1100.0),
                (1000.0, 1160.0),
                (2500.0, 1200.0),
                (inf, 1200.0),
            ])),
        ),
    );
    // Hand computation on the deltas [100, 160, 200, 200]: rank = 0.95 × 200 = 190,
    // in bucket (1000, 2500] which holds 40 (from 160 to 200):
    // 1000 + 1500 × (190 − 160) / 40 = 2125 ms.
    let v = d.value.expect("value");
    assert!((v - 2125.0).abs() < 1e-9, "p95 {v}");
    assert_eq!(d.status, Status::Violated, "{}", d.reason);
    // The cumulative totals alone (p95 of all 1200) would say 1000 + 1500 × (1140−1160)/40 < 1000: fine.
}

#[test]
fn histogram_quantile_edges() {
    let inf = f64::INFINITY;
    assert_eq!(
        histogram_quantile(0.95, &hist(&[(10.0, 0.0), (inf, 0.0)])),
        None
    );
    // Everything above the highest finite bound: that bound.
    assert_eq!(
        histogram_quantile(0.95, &hist(&[(10.0, 0.0), (100.0, 0.0), (inf, 5.0)])),
        Some(100.0)
    );
    // First bucket interpolates from 0.
    assert_eq!(
        histogram_quantile(0.5, &hist(&[(10.0, 10.0), (inf, 10.0)])),
        Some(5.0)
    );
    let mut obs = vec![5.0, 1.0, 3.0, 2.0, 4.0];
    assert_eq!(quantile_linear(0.95, &mut obs), Some(4.8));
}

#[test]
fn p95_from_raw_observations_when_no_histogram() {
    let text = r#"{"environments":{"production":{"quality_gates":{
        "p95_hash_time":{"threshold":2000,"window_minutes":"1m","action":"auto-rollback"}}}}}"#;
    let file = GatesFile::parse(Path::new("g.json"), text).expect("parse");
    let mut ev = Evaluator::new(file.env("production").expect("env").gates.clone());
    let o = |v: Vec<f64>| Metrics {
        hash_time_ms: Some(v),
        ..metrics(0.0, 0.0)
    };
    one(&mut ev, &ok(0, o(vec![99_999.0]))); // before the window: not counted
    one(&mut ev, &ok(30, o((1..=50).map(f64::from).collect())));
    let d = one(
        &mut ev,
        &ok(60, o((51..=100).map(|x| f64::from(x) * 100.0).collect())),
    );
    let mut all: Vec<f64> = (1..=50)
        .map(f64::from)
        .chain((51..=100).map(|x| f64::from(x) * 100.0))
        .collect();
    let expect = quantile_linear(0.95, &mut all).expect("q");
    assert_eq!(d.value, Some(expect));
    assert_eq!(d.status, Status::Violated);
}

#[test]
fn histogram_reset_mid_window_counts_from_zero() {
    let mut ev = evaluator("production", "p95_hash_time");
    let inf = f64::INFINITY;
    let h = |b: Vec<Bucket>| Metrics {
        hash_time_buckets: Some(b),
        ..metrics(0.0, 0.0)
    };
    one(&mut ev, &ok(0, h(hist(&[(100.0, 500.0), (inf, 500.0)]))));
    one(&mut ev, &ok(450, h(hist(&[(100.0, 600.0), (inf, 600.0)]))));
    // Restart: 10 slow requests since.
    let d = one(&mut ev, &ok(900, h(hist(&[(100.0, 0.0), (inf, 10.0)]))));
    // Deltas: ≤100: 100 + 0 = 100; +Inf: 100 + 10 = 110. p95 rank 104.5 > 100 → +Inf bucket → 100.
    assert_eq!(d.value, Some(100.0), "{}", d.reason);
    assert_eq!(d.status, Status::Ok);
}

#[test]
fn staging_gates_are_alert_only_with_their_own_thresholds() {
    let file = production_gates();
    let staging = file.env("staging").expect("staging");
    assert!(staging.gates.iter().all(|g| g.action == Action::Alert));
    let health = staging
        .gates
        .iter()
        .find(|g| g.name == "health_failures")
        .expect("health");
    assert_eq!(health.threshold, 3.0);
    let prod = file.env("production").expect("production");
    let names: Vec<&str> = prod.gates.iter().map(|g| g.name.as_str()).collect();
    for n in [
        "health_failures",
        "extraction_failure_rate",
        "p95_hash_time",
        "low_confidence_queue",
        "memory_usage",
        "error_rate",
    ] {
        assert!(names.contains(&n), "production lacks {n}");
    }
    let kinds: Vec<(String, GateKind, Action)> = prod
        .gates
        .iter()
        .map(|g| (g.name.clone(), g.kind, g.action))
        .collect();
    assert!(kinds.contains(&("memory_usage".into(), GateKind::Sustained, Action::Alert)));
    assert!(kinds.contains(&(
        "p95_hash_time".into(),
        GateKind::Percentile,
        Action::AutoRollback
    )));
}

// ---- configuration -------------------------------------------------------

/// The JSON snippet of seed 002 ("Quality Gates Configuration"), verbatim.
const SEED_002_SNIPPET: &str = r#"{
  "environments": {
    "production": {
      "quality_gates": {
        "health_failures": {
          "threshold": 2,
          "window_minutes": 5,
          "action": "auto-rollback"
        }
      }
    }
  }
}"#;

#[test]
fn seed_snippet_loads_as_is() {
    let file = GatesFile::parse(Path::new("seed.json"), SEED_002_SNIPPET).expect("seed loads");
    let g = &file.env("production").expect("production").gates[0];
    assert_eq!(
        (g.name.as_str(), g.threshold, g.window, g.action),
        (
            "health_failures",
            2.0,
            Duration::from_secs(300),
            Action::AutoRollback
        )
    );
    let err = file.env("staging").expect_err("no staging");
    assert!(
        err.message.contains("this file defines: production"),
        "{err}"
    );
}

#[test]
fn humantime_windows_are_accepted() {
    let text = r#"{"environments":{"production":{"quality_gates":{
        "extraction_failure_rate":{"threshold":5,"window_minutes":"90s","action":"alert"}}}}}"#;
    let file = GatesFile::parse(Path::new("g.json"), text).expect("parse");
    assert_eq!(
        file.env("production").expect("env").gates[0].window,
        Duration::from_secs(90)
    );
}

fn gates_err(text: &str) -> ConfigError {
    GatesFile::parse(Path::new("/etc/dhash/gates.json"), text).expect_err("must fail")
}

#[test]
fn broken_gate_configs_name_file_path_and_expectation() {
    let e = gates_err("{ \"environments\": ");
    assert!(e.to_string().starts_with("/etc/dhash/gates.json: "), "{e}");
    assert!(e.message.contains("invalid JSON"), "{e}");

    let e = gates_err(
        r#"{"environments":{"production":{"quality_gates":{"health_failures":{"threshold":"two","window_minutes":5,"action":"auto-rollback"}}}}}"#,
    );
    assert_eq!(
        e.path, "environments.production.quality_gates.health_failures.threshold",
        "{e}"
    );
    assert!(
        e.message
            .contains("expected a number from 0 to 10000 (failed checks in a row), found \"two\""),
        "{e}"
    );

    let e = gates_err(
        r#"{"environments":{"production":{"quality_gates":{"health_failures":{"threshold":2,"window_minutes":5,"action":"explode"}}}}}"#,
    );
    assert_eq!(
        e.path, "environments.production.quality_gates.health_failures.action",
        "{e}"
    );
    assert!(
        e.message.contains("auto-rollback") && e.message.contains("shadow"),
        "{e}"
    );

    let e = gates_err(
        r#"{"environments":{"production":{"quality_gates":{"p95_hash_time":{"threshold":-1,"window_minutes":15,"action":"alert"}}}}}"#,
    );
    assert_eq!(
        e.path, "environments.production.quality_gates.p95_hash_time.threshold",
        "{e}"
    );
    assert!(
        e.message.contains("from 0 to 3600000") && e.message.contains("found -1"),
        "{e}"
    );

    let e = gates_err(
        r#"{"environments":{"production":{"quality_gates":{"p95_hash_time":{"threshold":1,"window_minutes":"soon","action":"alert"}}}}}"#,
    );
    assert_eq!(
        e.path, "environments.production.quality_gates.p95_hash_time.window_minutes",
        "{e}"
    );

    let e = gates_err(
        r#"{"environments":{"production":{"quality_gates":{"p95_hash_time":{"treshold":1,"threshold":1,"action":"alert"}}}}}"#,
    );
    assert!(e.message.contains("treshold"), "a typo is named: {e}");

    let e = gates_err(
        r#"{"environments":{"production":{"quality_gates":{"mystery":{"threshold":1,"action":"alert"}}}}}"#,
    );
    assert_eq!(
        e.path, "environments.production.quality_gates.mystery.kind",
        "{e}"
    );

    let e = gates_err(
        r#"{"environments":{"production":{"quality_gates":{"extraction_failure_rate":{"threshold":1,"action":"alert"}}}}}"#,
    );
    assert!(e.message.contains("window > 0"), "{e}");
}

#[test]
fn unresolved_placeholders_refuse_production_only() {
    let text = r#"{"environments":{"production":{"quality_gates":{}},"staging":{"quality_gates":{}}},
        "placeholders":{"SLACK_CHANNEL":"Replace with the ops channel"}}"#;
    let file = GatesFile::parse(Path::new("/x/quality-gates-config.json"), text).expect("parse");
    let e = file.check_placeholders("production").expect_err("refused");
    assert_eq!(e.path, "placeholders.SLACK_CHANNEL");
    assert!(
        e.to_string().contains("/x/quality-gates-config.json"),
        "{e}"
    );
    assert!(e.message.contains("Replace with the ops channel"), "{e}");
    assert_eq!(
        file.check_placeholders("staging")
            .expect("staging ok")
            .len(),
        1
    );
    assert_eq!(
        gates_core::exit::exit_for(&anyhow::Error::new(e)),
        gates_core::Exit::Usage
    );
}

#[test]
fn shipped_topology_has_local_staging_and_production() {
    let t = Topology::load(&repo_file("environments.json")).expect("topology");
    let p = t.env("production").expect("production");
    assert_eq!(p.health_url, "http://127.0.0.1:3000/health");
    assert!(p.install_root.ends_with(".dhash/production"));
    assert_eq!(p.monitor.duration, Duration::from_secs(3600));
    assert_eq!(
        p.monitor.interval_at(Duration::from_secs(299)),
        Duration::from_secs(30)
    );
    assert_eq!(
        p.monitor.interval_at(Duration::from_secs(300)),
        Duration::from_secs(120)
    );
    let s = t.env("staging").expect("staging");
    assert_eq!(s.metrics_url, "http://127.0.0.1:3001/metrics");
    assert_eq!(s.monitor.duration, Duration::from_secs(1800));
    let e = t.env("qa").expect_err("unknown");
    assert!(
        e.message.contains("known: fleet, production, staging"),
        "{e}"
    );
    assert!(t
        .check_placeholders("production")
        .expect("no placeholders")
        .is_empty());
}

fn topo_err(text: &str) -> ConfigError {
    Topology::parse(Path::new("/srv/environments.json"), text).expect_err("must fail")
}

#[test]
fn broken_topology_names_file_and_path() {
    let base = |svc: &str, url: &str| {
        format!(
            r#"{{"environments":{{"qa":{{"install_root":"a","data_dir":"b","database":"c","service":{svc},
            "health_url":"{url}","metrics_url":"http://h/m","queue_url":"http://h/q"}}}}}}"#
        )
    };
    let e = topo_err(&base(
        r#"{"kind":"local","bind":"nowhere"}"#,
        "http://h/health",
    ));
    assert_eq!(e.path, "environments.qa.service.bind", "{e}");
    let e = topo_err(&base(r#"{"kind":"local","bind":"127.0.0.1:1"}"#, "ftp://h"));
    assert_eq!(e.path, "environments.qa.health_url", "{e}");
    let e = topo_err(&base(r#"{"kind":"teleport"}"#, "http://h/health"));
    assert_eq!(e.path, "environments.qa.service.kind", "{e}");
    assert!(
        e.message.contains("local") && e.message.contains("commands"),
        "{e}"
    );
    let ok = Topology::parse(
        Path::new("/srv/environments.json"),
        &base(
            r#"{"kind":"commands","start":"systemctl start dhash","stop":"systemctl stop dhash"}"#,
            "http://h/health",
        ),
    )
    .expect("commands ok");
    let qa = ok.env("qa").expect("qa");
    assert_eq!(qa.install_root, Path::new("/srv/a"));
    assert_eq!(
        qa.service.timeouts(),
        (Duration::from_secs(60), Duration::from_secs(30)),
        "commands default timeouts"
    );
    let slow = Topology::parse(
        Path::new("/srv/environments.json"),
        &base(
            r#"{"kind":"commands","start":"systemctl start dhash","stop":"systemctl stop dhash","start_timeout":"3m","stop_timeout":45}"#,
            "http://h/health",
        ),
    )
    .expect("commands with timeouts");
    assert_eq!(
        slow.env("qa").expect("qa").service.timeouts(),
        (Duration::from_secs(180), Duration::from_secs(45))
    );
    let e = topo_err(&base(
        r#"{"kind":"commands","start":"a","stop":"b","start_timeout":"soon"}"#,
        "http://h/health",
    ));
    assert_eq!(e.path, "environments.qa.service.start_timeout", "{e}");
    let e = topo_err(r#"{"environments":{"qa":{"install_root":"a"}}}"#);
    assert!(e.message.contains("missing field"), "{e}");
}

// ---------------------------------------------------------------------------
// Every number range-checked, duplicate keys refused, the shipped profiles.

const GATES_PATH: &str = "/etc/dhash/quality-gates-config.json";
const TOPO_PATH: &str = "/srv/dhash/environments.json";

fn shipped_json(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(repo_file(name)).expect("read shipped file"))
        .expect("shipped file is JSON")
}

/// The shipped file with `value` written at the JSON pointer `at` (created
/// when missing), parsed with `parse`.
fn mutated<T>(
    name: &str,
    at: &str,
    value: serde_json::Value,
    parse: impl Fn(&str) -> Result<T, ConfigError>,
) -> Result<T, ConfigError> {
    let mut doc = shipped_json(name);
    let (parent, key) = at.rsplit_once('/').expect("pointer");
    let slot = doc
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("{parent} in {name}"));
    match slot {
        serde_json::Value::Object(m) => {
            m.insert(key.to_string(), value);
        }
        serde_json::Value::Array(a) => a[key.parse::<usize>().expect("index")] = value,
        other => panic!("{parent} is {other}"),
    }
    parse(&serde_json::to_string_pretty(&doc).expect("json"))
}

fn assert_config_error(e: &ConfigError, file: &str, path: &str, expect: &str, case: &str) {
    assert_eq!(e.file, Path::new(file), "{case}: {e}");
    assert_eq!(e.path, path, "{case}: {e}");
    assert!(
        e.message.contains(expect),
        "{case}: expected {expect:?} in: {e}"
    );
    assert!(
        e.message.len() < 400,
        "{case}: an operator reads this on one screen: {e}"
    );
    let shown = e.to_string();
    assert!(
        shown.starts_with(&format!(
            "{file}: {}: ",
            if path.is_empty() { "(document)" } else { path }
        )),
        "{case}: the message names file and path: {shown}"
    );
    assert_eq!(
        gates_core::exit::exit_for(&anyhow::Error::new(e.clone())),
        gates_core::Exit::Usage,
        "{case}: a config error exits 2"
    );
}

#[test]
fn every_number_in_the_gates_file_is_range_checked() {
    use serde_json::json;
    let gate = "/environments/production/quality_gates";
    let cases: Vec<(String, serde_json::Value, &str, &str)> = vec![
        // Issue 13 #4: a panic in monitor --replay and deploy --dry-run.
        (
            format!("{gate}/p95_hash_time/window_minutes"),
            json!(1e300),
            "environments.production.quality_gates.p95_hash_time.window_minutes",
            "from 0ms to 7days",
        ),
        (
            format!("{gate}/p95_hash_time/window_minutes"),
            json!("1e300"),
            "environments.production.quality_gates.p95_hash_time.window_minutes",
            "from 0ms to 7days",
        ),
        (
            format!("{gate}/p95_hash_time/window_minutes"),
            json!(10081),
            "environments.production.quality_gates.p95_hash_time.window_minutes",
            "from 0ms to 7days",
        ),
        (
            format!("{gate}/p95_hash_time/window_minutes"),
            json!(-5),
            "environments.production.quality_gates.p95_hash_time.window_minutes",
            "from 0ms to 7days",
        ),
        (
            format!("{gate}/p95_hash_time/window_minutes"),
            json!("400d"),
            "environments.production.quality_gates.p95_hash_time.window_minutes",
            "from 0ms to 7days",
        ),
        (
            format!("{gate}/p95_hash_time/window_minutes"),
            json!("99999999999999999999999y"),
            "environments.production.quality_gates.p95_hash_time.window_minutes",
            "from 0ms to 7days",
        ),
        (
            format!("{gate}/p95_hash_time/window_minutes"),
            json!("NaN"),
            "environments.production.quality_gates.p95_hash_time.window_minutes",
            "from 0ms to 7days",
        ),
        (
            format!("{gate}/p95_hash_time/window_minutes"),
            json!(true),
            "environments.production.quality_gates.p95_hash_time.window_minutes",
            "from 0ms to 7days",
        ),
        (
            format!("{gate}/p95_hash_time/threshold"),
            json!(1e300),
            "environments.production.quality_gates.p95_hash_time.threshold",
            "from 0 to 3600000 (milliseconds)",
        ),
        (
            format!("{gate}/extraction_failure_rate/threshold"),
            json!(100.5),
            "environments.production.quality_gates.extraction_failure_rate.threshold",
            "from 0 to 100 (a rate is a percent",
        ),
        (
            format!("{gate}/error_rate/threshold"),
            json!(-0.1),
            "environments.production.quality_gates.error_rate.threshold",
            "from 0 to 100",
        ),
        (
            format!("{gate}/memory_usage/threshold"),
            json!(150),
            "environments.production.quality_gates.memory_usage.threshold",
            "from 0 to 100 (a percent)",
        ),
        (
            format!("{gate}/health_failures/threshold"),
            json!(1e9),
            "environments.production.quality_gates.health_failures.threshold",
            "from 0 to 10000 (failed checks in a row)",
        ),
        (
            format!("{gate}/low_confidence_queue/threshold"),
            json!(1e300),
            "environments.production.quality_gates.low_confidence_queue.threshold",
            "from 0 to 1000000000000",
        ),
        (
            format!("{gate}/health_failures/threshold"),
            json!("2"),
            "environments.production.quality_gates.health_failures.threshold",
            "from 0 to 10000 (failed checks in a row), found \"2\"",
        ),
        (
            format!("{gate}/p95_hash_time/threshold"),
            json!(null),
            "environments.production.quality_gates.p95_hash_time.threshold",
            "from 0 to 3600000 (milliseconds), found null",
        ),
        (
            format!("{gate}/p95_hash_time/percentile"),
            json!("95"),
            "environments.production.quality_gates.p95_hash_time.percentile",
            "0 < percentile < 100 (95 or 0.95 for p95), found \"95\"",
        ),
        (
            format!("{gate}/p95_hash_time/percentile"),
            json!(0),
            "environments.production.quality_gates.p95_hash_time.percentile",
            "0 < percentile < 100",
        ),
        (
            format!("{gate}/p95_hash_time/percentile"),
            json!(100),
            "environments.production.quality_gates.p95_hash_time.percentile",
            "0 < percentile < 100",
        ),
        (
            format!("{gate}/p95_hash_time/percentile"),
            json!(1e300),
            "environments.production.quality_gates.p95_hash_time.percentile",
            "0 < percentile < 100",
        ),
        (
            format!("{gate}/p95_hash_time/errors_to_violate"),
            json!(-1),
            "environments.production.quality_gates.p95_hash_time.errors_to_violate",
            "from 0 to 10000, found -1",
        ),
        (
            format!("{gate}/p95_hash_time/errors_to_violate"),
            json!(1e300),
            "environments.production.quality_gates.p95_hash_time.errors_to_violate",
            "from 0 to 10000, found 1e+300",
        ),
        (
            format!("{gate}/p95_hash_time/errors_to_violate"),
            json!(2.5),
            "environments.production.quality_gates.p95_hash_time.errors_to_violate",
            "from 0 to 10000, found 2.5",
        ),
        (
            format!("{gate}/p95_hash_time/errors_to_violate"),
            json!("3"),
            "environments.production.quality_gates.p95_hash_time.errors_to_violate",
            "whole number from 0 to 10000",
        ),
        (
            format!("{gate}/p95_hash_time/no_data_to_violate"),
            json!(10001),
            "environments.production.quality_gates.p95_hash_time.no_data_to_violate",
            "from 0 to 10000, found 10001",
        ),
        // The optional monitoring section: the same ranges as environments.json.
        (
            "/environments/production/monitoring".into(),
            json!({"duration": 0}),
            "environments.production.monitoring.duration",
            "from 1s to 7days",
        ),
        (
            "/environments/production/monitoring".into(),
            json!({"duration": 1e300}),
            "environments.production.monitoring.duration",
            "from 1s to 7days",
        ),
        (
            "/environments/production/monitoring".into(),
            json!({"duration": "8d"}),
            "environments.production.monitoring.duration",
            "from 1s to 7days",
        ),
        (
            "/environments/production/monitoring".into(),
            json!({"cadence": []}),
            "environments.production.monitoring.cadence",
            "at least one phase",
        ),
        (
            "/environments/production/monitoring".into(),
            json!({"cadence": [{"every": 0}]}),
            "environments.production.monitoring.cadence[0].every",
            "from 100ms to 1h",
        ),
        (
            "/environments/production/monitoring".into(),
            json!({"cadence": [{"every": "30s", "until": "15m"}, {"every": 1e300}]}),
            "environments.production.monitoring.cadence[1].every",
            "from 100ms to 1h",
        ),
        (
            "/environments/production/monitoring".into(),
            json!({"cadence": [{"every": "30s", "until": "15m"}, {"every": "60s", "until": "10m"}]}),
            "environments.production.monitoring.cadence[1].until",
            "after the previous phase's end (15m)",
        ),
        (
            "/environments/production/monitoring".into(),
            json!({"cadence": [{"every": "30s", "until": "15m", "for": "5m"}]}),
            "environments.production.monitoring.cadence[0]",
            "not both",
        ),
        (
            "/environments/production/monitoring".into(),
            json!({"cadence": [{"every": "30s", "until": "1e300"}]}),
            "environments.production.monitoring.cadence[0].until",
            "from 100ms to 7days",
        ),
        (
            "/environments/production/monitoring".into(),
            json!({"cadence": [{"every": "30s"}, {"every": "60s", "until": "1h"}]}),
            "environments.production.monitoring.cadence[1].until",
            "never starts",
        ),
        (
            "/environments/production/monitoring".into(),
            json!({"durration": "4h"}),
            "environments.production.monitoring.durration",
            "unknown field `durration`, expected one of `duration`, `cadence`",
        ),
        // A misspelt section would be ignored silently: refused instead.
        (
            "/environments/production/monitorng".into(),
            json!({"duration": "4h"}),
            "environments.production.monitorng",
            "unknown field `monitorng`, expected one of `quality_gates`, `monitoring`",
        ),
    ];
    for (at, value, path, expect) in cases {
        let case = format!("{at} = {value}");
        let e = mutated("quality-gates-config.json", &at, value, |t| {
            GatesFile::parse(Path::new(GATES_PATH), t)
        })
        .expect_err(&case);
        assert_config_error(&e, GATES_PATH, path, expect, &case);
    }
}

#[test]
fn every_number_in_the_topology_is_range_checked() {
    use serde_json::json;
    let p = "/environments/production";
    let q = "environments.production";
    let cases: Vec<(String, serde_json::Value, String, &str)> = vec![
        (
            format!("{p}/monitor/duration"),
            json!(1e300),
            format!("{q}.monitor.duration"),
            "from 1s to 7days",
        ),
        (
            format!("{p}/monitor/duration"),
            json!(0),
            format!("{q}.monitor.duration"),
            "from 1s to 7days",
        ),
        (
            format!("{p}/monitor/duration"),
            json!("8d"),
            format!("{q}.monitor.duration"),
            "from 1s to 7days",
        ),
        (
            format!("{p}/monitor/duration"),
            json!(-60),
            format!("{q}.monitor.duration"),
            "from 1s to 7days",
        ),
        (
            format!("{p}/monitor/cadence/0/every"),
            json!(0),
            format!("{q}.monitor.cadence[0].every"),
            "from 100ms to 1h",
        ),
        (
            format!("{p}/monitor/cadence/0/every"),
            json!(1e300),
            format!("{q}.monitor.cadence[0].every"),
            "from 100ms to 1h",
        ),
        (
            format!("{p}/monitor/cadence/1/every"),
            json!("2h"),
            format!("{q}.monitor.cadence[1].every"),
            "from 100ms to 1h",
        ),
        (
            format!("{p}/monitor/cadence/0/for"),
            json!(-1),
            format!("{q}.monitor.cadence[0].for"),
            "from 100ms to 7days",
        ),
        (
            format!("{p}/monitor/cadence/0/for"),
            json!("1e300"),
            format!("{q}.monitor.cadence[0].for"),
            "from 100ms to 7days",
        ),
        (
            format!("{p}/monitor/probe_timeout"),
            json!(0),
            format!("{q}.monitor.probe_timeout"),
            "from 100ms to 5m",
        ),
        (
            format!("{p}/monitor/probe_timeout"),
            json!(1e300),
            format!("{q}.monitor.probe_timeout"),
            "from 100ms to 5m",
        ),
        (
            format!("{p}/service/start_timeout"),
            json!(1e300),
            format!("{q}.service.start_timeout"),
            "from 100ms to 1h",
        ),
        (
            format!("{p}/service/stop_timeout"),
            json!(0),
            format!("{q}.service.stop_timeout"),
            "from 100ms to 1h",
        ),
        (
            format!("{p}/service/bind"),
            json!("127.0.0.1:0"),
            format!("{q}.service.bind"),
            "port from 1 to 65535",
        ),
        (
            format!("{p}/service/bind"),
            json!("127.0.0.1:70000"),
            format!("{q}.service.bind"),
            "port from 1 to 65535",
        ),
        (
            format!("{p}/health_url"),
            json!("http://127.0.0.1:0/health"),
            format!("{q}.health_url"),
            "port from 1 to 65535",
        ),
        (
            format!("{p}/metrics_url"),
            json!("http://127.0.0.1:99999/metrics"),
            format!("{q}.metrics_url"),
            "port from 1 to 65535",
        ),
        (
            format!("{p}/queue_url"),
            json!("http://[::1]:x/q"),
            format!("{q}.queue_url"),
            "port from 1 to 65535",
        ),
        (
            format!("{p}/health/checks_required"),
            json!(0),
            format!("{q}.health.checks_required"),
            "from 1 to 100, found 0",
        ),
        (
            format!("{p}/health/checks_required"),
            json!(1e300),
            format!("{q}.health.checks_required"),
            "from 1 to 100, found 1e+300",
        ),
        (
            format!("{p}/health/checks_required"),
            json!(-3),
            format!("{q}.health.checks_required"),
            "from 1 to 100, found -3",
        ),
        (
            format!("{p}/health/checks_required"),
            json!(2.5),
            format!("{q}.health.checks_required"),
            "from 1 to 100, found 2.5",
        ),
        (
            format!("{p}/health/interval"),
            json!(1e300),
            format!("{q}.health.interval"),
            "from 0ms to 5m",
        ),
        (
            format!("{p}/health/interval"),
            json!(-1),
            format!("{q}.health.interval"),
            "from 0ms to 5m",
        ),
        (
            format!("{p}/health/timeout"),
            json!(0),
            format!("{q}.health.timeout"),
            "from 100ms to 1h",
        ),
        (
            format!("{p}/notifications/quiet_period"),
            json!(1e300),
            format!("{q}.notifications.quiet_period"),
            "from 0ms to 7days",
        ),
        (
            format!("{p}/notifications/quiet_period"),
            json!("-1"),
            format!("{q}.notifications.quiet_period"),
            "from 0ms to 7days",
        ),
        (
            format!("{p}/notifications/timeout"),
            json!(0),
            format!("{q}.notifications.timeout"),
            "from 100ms to 10m",
        ),
        (
            format!("{p}/notifications/timeout"),
            json!("1e300"),
            format!("{q}.notifications.timeout"),
            "from 100ms to 10m",
        ),
        // Issue 13, weak "Retention": 0 was taken as 1 and pruned 9 backups.
        (
            format!("{p}/retention/backups"),
            json!(0),
            format!("{q}.retention.backups"),
            "from 1 to 10000, found 0",
        ),
        (
            format!("{p}/retention/backups"),
            json!(-1),
            format!("{q}.retention.backups"),
            "from 1 to 10000, found -1",
        ),
        (
            format!("{p}/retention/backups"),
            json!(1e300),
            format!("{q}.retention.backups"),
            "from 1 to 10000, found 1e+300",
        ),
        (
            format!("{p}/retention/backups"),
            json!(10001),
            format!("{q}.retention.backups"),
            "from 1 to 10000, found 10001",
        ),
        (
            format!("{p}/retention/backups"),
            json!("10"),
            format!("{q}.retention.backups"),
            "from 1 to 10000, found \"10\"",
        ),
        (
            format!("{p}/retention/releases"),
            json!(1),
            format!("{q}.retention.releases"),
            "from 2 to 1000, found 1",
        ),
        (
            format!("{p}/retention/releases"),
            json!(0),
            format!("{q}.retention.releases"),
            "from 2 to 1000, found 0",
        ),
    ];
    for (at, value, path, expect) in cases {
        let case = format!("{at} = {value}");
        let e = mutated("environments.json", &at, value, |t| {
            Topology::parse(Path::new(TOPO_PATH), t)
        })
        .expect_err(&case);
        assert_config_error(&e, TOPO_PATH, &path, expect, &case);
    }
    // The edges themselves are accepted.
    for (at, value) in [
        (format!("{p}/retention/backups"), json!(1)),
        (format!("{p}/retention/backups"), json!(10000)),
        (format!("{p}/retention/releases"), json!(2)),
        (format!("{p}/health/checks_required"), json!(100)),
        (format!("{p}/monitor/duration"), json!("7days")),
        (format!("{p}/monitor/cadence/0/every"), json!(0.1)),
        (format!("{p}/service/bind"), json!("127.0.0.1:65535")),
        (format!("{p}/notifications/quiet_period"), json!(0)),
    ] {
        mutated("environments.json", &at, value.clone(), |t| {
            Topology::parse(Path::new(TOPO_PATH), t)
        })
        .unwrap_or_else(|e| panic!("{at} = {value} is in range: {e}"));
    }
}

#[test]
fn retention_zero_in_config_and_keep_zero_share_one_range() {
    use gates_core::config::limits::{check_backups_keep, RETENTION_BACKUPS};
    assert_eq!(RETENTION_BACKUPS, 1..=10_000);
    let flag = check_backups_keep(0).expect_err("--keep 0");
    let config = mutated(
        "environments.json",
        "/environments/production/retention/backups",
        serde_json::json!(0),
        |t| Topology::parse(Path::new(TOPO_PATH), t),
    )
    .expect_err("retention.backups 0");
    assert_eq!(flag, config.message, "the flag and the file say the same");
    assert_eq!(check_backups_keep(1), Ok(1));
    assert_eq!(check_backups_keep(10_000), Ok(10_000));
    assert!(check_backups_keep(10_001)
        .expect_err("too many")
        .contains("from 1 to 10000"));
    // The shipped value is read as written, not bumped.
    let t = Topology::load(&repo_file("environments.json")).expect("topology");
    assert_eq!(
        t.env("production").expect("production").retention.backups,
        10
    );
}

fn dup_err_gates(text: &str) -> ConfigError {
    GatesFile::parse(Path::new(GATES_PATH), text).expect_err("duplicate refused")
}

#[test]
fn duplicate_keys_are_refused_at_any_depth_in_both_files() {
    // Issue 13 #6: two "production" environments; the second used to win.
    let topo = std::fs::read_to_string(repo_file("environments.json")).expect("read");
    let doc: serde_json::Value = serde_json::from_str(&topo).expect("json");
    let prod = serde_json::to_string(&doc["environments"]["production"]).expect("json");
    let staging = serde_json::to_string(&doc["environments"]["staging"]).expect("json");
    let twice =
        format!("{{\"environments\": {{\n\"production\": {prod},\n\"production\": {staging}\n}}}}");
    let e = Topology::parse(Path::new(TOPO_PATH), &twice).expect_err("refused");
    assert_config_error(
        &e,
        TOPO_PATH,
        "environments.production",
        "duplicate key \"production\" in environments (second one at line 3)",
        "two production keys",
    );

    // Deeper: inside an array element of the topology.
    let routes = topo.replacen(
        "{ \"channel\": \"slack\", \"min_level\": \"info\" }",
        "{ \"channel\": \"slack\", \"min_level\": \"info\", \"channel\": \"teams\" }",
        1,
    );
    assert_ne!(routes, topo, "the shipped file has a slack route");
    let e = Topology::parse(Path::new(TOPO_PATH), &routes).expect_err("refused");
    assert_config_error(
        &e,
        TOPO_PATH,
        "environments.production.notifications.routes[0].channel",
        "duplicate key \"channel\"",
        "duplicate in a route",
    );

    // The gates file: an environment, a gate, a gate's field, the top level.
    let g = |inner: &str| format!(r#"{{"environments":{{{inner}}}}}"#);
    let gate = r#""health_failures":{"threshold":2,"window_minutes":5,"action":"auto-rollback"}"#;
    let cases = [
        (
            g(&format!(
                r#""production":{{"quality_gates":{{{gate}}}}},"production":{{"quality_gates":{{}}}}"#
            )),
            "environments.production",
            "duplicate key \"production\" in environments",
        ),
        (
            g(&format!(
                r#""production":{{"quality_gates":{{{gate},{gate}}}}}"#
            )),
            "environments.production.quality_gates.health_failures",
            "duplicate key \"health_failures\" in environments.production.quality_gates",
        ),
        (
            g(
                r#""production":{"quality_gates":{"health_failures":{"threshold":2,"threshold":200,"action":"alert"}}}"#,
            ),
            "environments.production.quality_gates.health_failures.threshold",
            "duplicate key \"threshold\"",
        ),
        (
            r#"{"environments":{},"placeholders":{},"environments":{}}"#.to_string(),
            "environments",
            "duplicate key \"environments\" in the top-level object",
        ),
        (
            // An escape that spells the same key is the same key.
            g(r#""staging":{"quality_gates":{}},"st\u0061ging":{"quality_gates":{}}"#),
            "environments.staging",
            "duplicate key \"staging\"",
        ),
    ];
    for (text, path, expect) in cases {
        let e = dup_err_gates(&text);
        assert_config_error(&e, GATES_PATH, path, expect, &text);
    }
    // The same key in two different objects is no duplicate.
    GatesFile::parse(
        Path::new(GATES_PATH),
        &g(&format!(
            r#""production":{{"quality_gates":{{{gate}}}}},"staging":{{"quality_gates":{{{gate}}}}}"#
        )),
    )
    .expect("same gate name in two environments");
}

#[test]
fn environment_names_paths_and_commands_are_checked() {
    use serde_json::json;
    let shipped = shipped_json("environments.json");
    let prod = shipped["environments"]["production"].clone();
    for bad in ["../etc", "a/b", "", "-x", "prod env", &"p".repeat(65)] {
        let doc = json!({"environments": {bad: prod.clone()}});
        let e = Topology::parse(Path::new(TOPO_PATH), &doc.to_string()).expect_err(bad);
        assert_config_error(
            &e,
            TOPO_PATH,
            &format!("environments.{bad}"),
            "expected an environment name of 1 to 64 letters, digits, '-' or '_'",
            bad,
        );
        let g = json!({"environments": {bad: {"quality_gates": {}}}});
        let e = GatesFile::parse(Path::new(GATES_PATH), &g.to_string()).expect_err(bad);
        assert_config_error(
            &e,
            GATES_PATH,
            &format!("environments.{bad}"),
            "(it becomes part of file names)",
            bad,
        );
    }
    let ok = json!({"environments": {"eu-west_2": prod.clone()}});
    Topology::parse(Path::new(TOPO_PATH), &ok.to_string()).expect("a plain name loads");

    let p = "/environments/production";
    let q = "environments.production";
    let long_part = "a".repeat(256);
    let long_path = "a/".repeat(2049);
    let cases: Vec<(String, serde_json::Value, String, &str)> = vec![
        (
            format!("{p}/install_root"),
            json!(""),
            format!("{q}.install_root"),
            "that would be the project folder itself",
        ),
        (
            format!("{p}/data_dir"),
            json!("  "),
            format!("{q}.data_dir"),
            "found an empty string",
        ),
        (
            format!("{p}/database"),
            json!("a\u{0}b"),
            format!("{q}.database"),
            "NUL",
        ),
        (
            format!("{p}/backup_dir"),
            json!(long_path),
            format!("{q}.backup_dir"),
            "at most 4096 bytes, found 4098 bytes",
        ),
        (
            format!("{p}/log_dir"),
            json!(long_part),
            format!("{q}.log_dir"),
            "at most 255 bytes, found one of 256 bytes",
        ),
        (
            format!("{p}/notifications/out_dir"),
            json!(""),
            format!("{q}.notifications.out_dir"),
            "empty string",
        ),
        (
            "/dist_dir".into(),
            json!(""),
            "dist_dir".into(),
            "empty string",
        ),
        (
            format!("{p}/service"),
            json!({"kind": "commands", "start": " ", "stop": "x"}),
            format!("{q}.service.start"),
            "expected a shell command",
        ),
        (
            format!("{p}/service"),
            json!({"kind": "commands", "start": "x", "stop": "x", "restart": ""}),
            format!("{q}.service.restart"),
            "expected a shell command",
        ),
    ];
    for (at, value, path, expect) in cases {
        let case = format!("{at} = {value}");
        let e = mutated("environments.json", &at, value, |t| {
            Topology::parse(Path::new(TOPO_PATH), t)
        })
        .expect_err(&case);
        assert_config_error(&e, TOPO_PATH, &path, expect, &case);
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    for open in ["[", "{\"environments\":", "{\"a\":"] {
        for text in [
            open.repeat(100_000),
            format!("{}1{}", open.repeat(5000), "]".repeat(5000)),
        ] {
            let e = GatesFile::parse(Path::new(GATES_PATH), &text).expect_err("deep");
            assert_eq!(e.file, Path::new(GATES_PATH), "{e}");
            let e = Topology::parse(Path::new(TOPO_PATH), &text).expect_err("deep");
            assert_eq!(e.file, Path::new(TOPO_PATH), "{e}");
        }
    }
}

#[test]
fn a_byte_order_mark_is_named_not_a_syntax_error_at_column_1() {
    let text = format!(
        "\u{feff}{}",
        std::fs::read_to_string(repo_file("environments.json")).expect("read")
    );
    let e = Topology::parse(Path::new(TOPO_PATH), &text).expect_err("BOM");
    assert_config_error(&e, TOPO_PATH, "", "byte order mark", "BOM");
}

#[test]
fn require_env_refuses_a_deploy_whose_watch_could_not_start() {
    let only_staging = r#"{"environments":{"staging":{"quality_gates":{
        "health_failures":{"threshold":3,"window_minutes":5,"action":"alert"}}},
        "qa":{"quality_gates":{}}}}"#;
    let file = GatesFile::parse(Path::new(GATES_PATH), only_staging).expect("parse");
    let e = file
        .require_env("production")
        .expect_err("no production section");
    assert_config_error(
        &e,
        GATES_PATH,
        "environments.production",
        "the post-deploy watch could not start",
        "missing section",
    );
    assert!(e.message.contains("this file defines: qa, staging"), "{e}");
    let e = file.require_env("qa").expect_err("no gate");
    assert_config_error(
        &e,
        GATES_PATH,
        "environments.qa.quality_gates",
        "would check nothing",
        "empty section",
    );
    assert_eq!(file.require_env("staging").expect("staging").gates.len(), 1);
    // The shipped files have both environments.
    for name in ["quality-gates-config.json", "quality-gates-mobius.json"] {
        let f = GatesFile::load(&repo_file(name)).expect(name);
        for env in ["production", "staging"] {
            f.require_env(env)
                .unwrap_or_else(|e| panic!("{name} {env}: {e}"));
        }
    }
}

#[test]
fn watch_setup_applies_the_profile_and_refuses_a_watch_that_cannot_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        repo_file("environments.json"),
        dir.path().join("environments.json"),
    )
    .expect("copy topology");
    let mobius = dir.path().join("mobius.json");
    std::fs::copy(repo_file("quality-gates-mobius.json"), &mobius).expect("copy profile");
    let project = gates_core::project::Project::open(dir.path()).expect("project");
    let (env, gates) = project
        .watch_setup("production", Some(&mobius))
        .expect("mobius watch");
    assert_eq!(env.monitor.duration, Duration::from_secs(4 * 3600));
    assert_eq!(
        env.monitor.interval_at(Duration::from_secs(3600)),
        Duration::from_secs(300)
    );
    assert_eq!(gates.file, mobius);
    // No --config and no quality-gates-config.json: the error names the file.
    let e = project
        .watch_setup("production", None)
        .expect_err("no gates file");
    assert!(e.message.contains("cannot read the file"), "{e}");
    assert_eq!(e.file, dir.path().join("quality-gates-config.json"));
    // A gates file without the environment's section: refused, named.
    let only_staging = dir.path().join("quality-gates-config.json");
    let mut doc = shipped_json("quality-gates-config.json");
    doc["environments"]
        .as_object_mut()
        .expect("environments")
        .remove("production");
    std::fs::write(&only_staging, doc.to_string()).expect("write");
    let e = project
        .watch_setup("production", None)
        .expect_err("no section");
    assert_eq!(e.path, "environments.production", "{e}");
    assert!(e.message.contains("could not start"), "{e}");
    // Without an override the topology's watch stays.
    let (env, _) = project.watch_setup("staging", None).expect("staging");
    assert_eq!(env.monitor.duration, Duration::from_secs(1800));
}

#[test]
fn mobius_profile_has_seed_004_triggers_and_phases() {
    let file = GatesFile::load(&repo_file("quality-gates-mobius.json")).expect("mobius loads");
    assert!(
        file.check_placeholders("production").is_ok(),
        "no unresolved placeholder"
    );
    let prod = file.require_env("production").expect("production");
    let by = |env: &gates_core::config::GatesEnv, n: &str| {
        env.gates
            .iter()
            .find(|g| g.name == n)
            .cloned()
            .unwrap_or_else(|| panic!("gate {n} in {}", env.name))
    };
    let health = by(prod, "health_failures");
    assert_eq!(
        (health.kind, health.threshold, health.action),
        (GateKind::Consecutive, 2.0, Action::AutoRollback)
    );
    let errors = by(prod, "error_rate");
    assert_eq!(
        (errors.kind, errors.threshold, errors.window, errors.action),
        (
            GateKind::Ratio,
            10.0,
            Duration::from_secs(300),
            Action::AutoRollback
        )
    );
    let p95 = by(prod, "p95_hash_time");
    assert_eq!(
        (
            p95.kind,
            p95.threshold,
            p95.window,
            p95.quantile,
            p95.action
        ),
        (
            GateKind::Percentile,
            5000.0,
            Duration::from_secs(600),
            0.95,
            Action::AutoRollback
        )
    );
    let warn = by(prod, "error_rate_warning");
    assert_eq!((warn.threshold, warn.action), (5.0, Action::Alert));

    // "3+ consecutive": two failures hold, the third violates.
    let mut ev = Evaluator::new(vec![health]);
    let down = |t| {
        sample(
            t,
            Health::Error {
                detail: "refused".into(),
            },
            Err("refused".into()),
        )
    };
    assert_eq!(one(&mut ev, &down(0)).status, Status::Ok);
    assert_eq!(one(&mut ev, &down(30)).status, Status::Ok);
    assert_eq!(one(&mut ev, &down(60)).status, Status::Violated);

    // "Error rate > 10% for 5+ minutes": exactly 10 % holds, above violates.
    let m = |req: f64, err: f64| Metrics {
        requests_total: Some(req),
        errors_total: Some(err),
        ..Metrics::default()
    };
    let mut ev = Evaluator::new(vec![errors]);
    assert_eq!(one(&mut ev, &ok(0, m(1000.0, 0.0))).status, Status::Pending);
    assert_eq!(one(&mut ev, &ok(300, m(2000.0, 100.0))).status, Status::Ok);
    let d = one(&mut ev, &ok(330, m(2100.0, 111.0)));
    assert_eq!(d.status, Status::Violated, "{}", d.reason);

    // Phases: 30 s to T+15, 60 s to T+60, 300 s to T+240.
    let o = file
        .monitor_override("production")
        .expect("production monitoring");
    assert_eq!(o.duration, Some(Duration::from_secs(240 * 60)));
    let mut env = Topology::load(&repo_file("environments.json"))
        .expect("topology")
        .env("production")
        .expect("production")
        .clone();
    assert!(file.apply_monitoring(&mut env));
    assert_eq!(env.monitor.duration, Duration::from_secs(4 * 3600));
    let min = |m: u64| Duration::from_secs(m * 60);
    for (at, every) in [
        (Duration::ZERO, 30),
        (min(15) - Duration::from_secs(1), 30),
        (min(15), 60),
        (min(60) - Duration::from_secs(1), 60),
        (min(60), 300),
        (min(239), 300),
    ] {
        assert_eq!(
            env.monitor.interval_at(at),
            Duration::from_secs(every),
            "interval at {at:?}"
        );
    }

    // Staging: a looser copy that alerts and never rolls back by itself.
    let staging = file.require_env("staging").expect("staging");
    for g in &staging.gates {
        assert_eq!(g.action, Action::Alert, "{}", g.name);
        let p = by(prod, &g.name);
        assert!(g.threshold > p.threshold, "{} looser in staging", g.name);
        assert!(g.window >= p.window, "{} window", g.name);
    }
    let s = file
        .monitor_override("staging")
        .expect("staging monitoring");
    assert_eq!(s.duration, Some(min(60)));

    // The default profile has no override: the topology's watch stays.
    let default = production_gates();
    assert!(default.monitor_override("production").is_none());
    let mut env2 = env.clone();
    env2.monitor.duration = min(60);
    assert!(!default.apply_monitoring(&mut env2));
    assert_eq!(env2.monitor.duration, min(60));
}

/// Runs a seed's snippet in a folder whose `quality-gates-config.json` is
/// `profile`, as an operator who copied the profile there would. None when
/// the interpreter is not installed (a platform without node, say).
fn run_seed_snippet(profile: &str, program: &str, args: &[&str]) -> Option<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        repo_file(profile),
        dir.path().join("quality-gates-config.json"),
    )
    .expect("copy profile");
    let out = match std::process::Command::new(program)
        .args(args)
        .current_dir(dir.path())
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("{program} is not installed: the seed snippet is not run here");
            return None;
        }
        Err(e) => panic!("{program}: {e}"),
    };
    assert!(
        out.status.success(),
        "{program} on {profile}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Seed 004's "Validate quality gates config" step, verbatim.
const SEED_004_PYTHON: &str = r#"
import json
with open('quality-gates-config.json') as f:
    config = json.load(f)
    print('✅ Quality gates config is valid JSON')
    
    # Check for placeholders
    placeholders = config.get('placeholders', {})
    unresolved = []
    for key, value in placeholders.items():
        if 'Replace with' in str(value):
            unresolved.append(f'{key}: {value}')
    
    if unresolved:
        print('⚠️  Unresolved placeholders:')
        for item in unresolved:
            print(f'   - {item}')
    else:
        print('✅ All placeholders resolved')
"#;

/// Seed 003's "Review quality gate thresholds" step, verbatim.
const SEED_003_NODE: &str = r#"
const config = require('./quality-gates-config.json');
const prod = config.environments.production;
console.log('Current production thresholds:');
console.log(JSON.stringify(prod.quality_gates, null, 2));
"#;

#[test]
fn seed_validation_snippets_run_unchanged_against_both_profiles() {
    for profile in ["quality-gates-mobius.json", "quality-gates-config.json"] {
        if let Some(out) = run_seed_snippet(profile, "python3", &["-c", SEED_004_PYTHON]) {
            assert!(
                out.contains("✅ Quality gates config is valid JSON"),
                "{out}"
            );
            assert!(out.contains("✅ All placeholders resolved"), "{out}");
        }
        if let Some(out) = run_seed_snippet(profile, "node", &["-e", SEED_003_NODE]) {
            let printed = out
                .split_once("Current production thresholds:\n")
                .map(|(_, rest)| rest)
                .unwrap_or_else(|| panic!("{out}"));
            let gates: serde_json::Value =
                serde_json::from_str(printed).expect("node printed JSON");
            assert_eq!(
                gates,
                shipped_json(profile)["environments"]["production"]["quality_gates"],
                "{profile}"
            );
            if profile == "quality-gates-mobius.json" {
                assert_eq!(gates["error_rate"]["threshold"], 10);
                assert_eq!(gates["p95_hash_time"]["threshold"], 5000);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Property tests: whatever the input, the loaders answer with a value (a
// config or a ConfigError naming the file), never a panic; and whatever they
// accept is within the documented ranges.

mod props {
    use super::*;
    use gates_core::config::limits;
    use proptest::prelude::*;
    use serde_json::Value;

    /// Keys the loaders know, so that generated documents reach deep code.
    const KEYS: &[&str] = &[
        "environments",
        "production",
        "staging",
        "quality_gates",
        "placeholders",
        "health_failures",
        "extraction_failure_rate",
        "error_rate",
        "p95_hash_time",
        "low_confidence_queue",
        "memory_usage",
        "mystery",
        "threshold",
        "window_minutes",
        "action",
        "kind",
        "metric",
        "numerator",
        "denominator",
        "percentile",
        "errors_to_violate",
        "no_data_to_violate",
        "monitoring",
        "monitor",
        "duration",
        "cadence",
        "every",
        "for",
        "until",
        "probe_timeout",
        "install_root",
        "data_dir",
        "database",
        "service",
        "bind",
        "start_timeout",
        "stop_timeout",
        "health_url",
        "metrics_url",
        "queue_url",
        "retention",
        "backups",
        "releases",
        "health",
        "checks_required",
        "interval",
        "timeout",
        "notifications",
        "routes",
        "channel",
        "min_level",
        "quiet_period",
        "description",
    ];

    /// Strings the loaders give meaning to, and some they must refuse.
    const STRINGS: &[&str] = &[
        "",
        "10m",
        "90s",
        "5m 30s",
        "1e300",
        "-1",
        "NaN",
        "inf",
        "400d",
        "7days",
        "99999999999999999999999y",
        "auto-rollback",
        "alert",
        "shadow",
        "ratio",
        "consecutive",
        "percentile",
        "instant",
        "sustained",
        "health",
        "errors_total",
        "requests_total",
        "hash_time_ms",
        "memory_percent",
        "local",
        "commands",
        "127.0.0.1:3000",
        "127.0.0.1:0",
        "http://127.0.0.1:3000/health",
        "http://h:99999/x",
        "https://[::1]:x/",
        "slack",
        "info",
        "critical",
        "Replace with the channel",
    ];

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_filter_map("finite", |x| {
                serde_json::Number::from_f64(x).map(Value::Number)
            }),
            prop_oneof![
                Just(0.0),
                Just(0.05),
                Just(1.0),
                Just(2.5),
                Just(100.0),
                Just(1e300),
                Just(-1e300),
                Just(-0.0),
                Just(1e19)
            ]
            .prop_map(|x: f64| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)),
            prop::sample::select(STRINGS).prop_map(Value::from),
            "[ -~]{0,12}".prop_map(Value::from),
        ]
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => prop::sample::select(KEYS).prop_map(str::to_string),
            1 => "[a-z_]{1,8}",
        ]
    }

    fn json() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(5, 96, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map(key(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Every JSON pointer of a document (objects and arrays included).
    fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                    out.push(p.clone());
                    pointers(v, p, out);
                }
            }
            Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    let p = format!("{at}/{i}");
                    out.push(p.clone());
                    pointers(v, p, out);
                }
            }
            _ => {}
        }
    }

    /// The shipped document with the node at one of its pointers replaced,
    /// or a key added beside it.
    fn mutate(name: &str, pick: prop::sample::Index, value: Value, add: Option<String>) -> String {
        let mut doc = shipped_json(name);
        let mut all = Vec::new();
        pointers(&doc, String::new(), &mut all);
        let at = pick.get(&all).clone();
        if let Some(slot) = doc.pointer_mut(&at) {
            match (add, slot) {
                (Some(k), Value::Object(m)) => {
                    m.insert(k, value);
                }
                (_, slot) => *slot = value,
            }
        }
        serde_json::to_string(&doc).unwrap_or_default()
    }

    fn check_gates(text: &str) {
        match GatesFile::parse(Path::new(GATES_PATH), text) {
            Err(e) => assert_eq!(e.file, Path::new(GATES_PATH)),
            Ok(f) => {
                for env in f.environments.values() {
                    for g in &env.gates {
                        assert!(g.threshold.is_finite() && g.threshold >= 0.0, "{g:?}");
                        assert!(limits::GATE_WINDOW.contains(g.window), "{g:?}");
                        assert!(g.quantile > 0.0 && g.quantile < 1.0, "{g:?}");
                    }
                    if let Some(m) = &env.monitoring {
                        if let Some(d) = m.duration {
                            assert!(limits::MONITOR_DURATION.contains(d), "{m:?}");
                        }
                        for p in m.cadence.iter().flatten() {
                            assert!(limits::CADENCE_EVERY.contains(p.every), "{m:?}");
                        }
                    }
                }
            }
        }
    }

    fn check_topology(text: &str) {
        match Topology::parse(Path::new(TOPO_PATH), text) {
            Err(e) => assert_eq!(e.file, Path::new(TOPO_PATH)),
            Ok(t) => {
                for env in t.environments.values() {
                    let m = &env.monitor;
                    assert!(limits::MONITOR_DURATION.contains(m.duration), "{m:?}");
                    assert!(limits::PROBE_TIMEOUT.contains(m.probe_timeout), "{m:?}");
                    assert!(m
                        .cadence
                        .iter()
                        .all(|p| limits::CADENCE_EVERY.contains(p.every)));
                    let r = &env.retention;
                    assert!(
                        limits::RETENTION_BACKUPS.contains(&(r.backups as u64)),
                        "{r:?}"
                    );
                    assert!(
                        limits::RETENTION_RELEASES.contains(&(r.releases as u64)),
                        "{r:?}"
                    );
                    let h = &env.health;
                    assert!(limits::HEALTH_CHECKS_REQUIRED.contains(&u64::from(h.checks_required)));
                    assert!(limits::HEALTH_TIMEOUT.contains(h.timeout), "{h:?}");
                    assert!(limits::NOTIFY_TIMEOUT.contains(env.notify.timeout));
                    // Never panics, whatever was written.
                    let _ = env.service.timeouts();
                }
            }
        }
    }

    /// 256 cases a property (a few seconds in all); PROPTEST_CASES=N for a
    /// longer run, as the nightly fault matrix does.
    fn config() -> ProptestConfig {
        let mut c = ProptestConfig::default();
        if std::env::var_os("PROPTEST_CASES").is_none() {
            c.cases = 256;
        }
        c
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let text = String::from_utf8_lossy(&bytes);
            check_gates(&text);
            check_topology(&text);
        }

        #[test]
        fn arbitrary_json_never_panics(doc in json()) {
            let text = serde_json::to_string(&doc).expect("json");
            check_gates(&text);
            check_topology(&text);
            // The same under the key the loaders start from.
            let wrapped = serde_json::json!({"environments": doc}).to_string();
            check_gates(&wrapped);
            check_topology(&wrapped);
        }

        #[test]
        fn shipped_gates_with_one_field_changed_never_panic(
            pick in any::<prop::sample::Index>(),
            value in json(),
            add in prop::option::of(key()),
        ) {
            check_gates(&mutate("quality-gates-config.json", pick, value.clone(), add.clone()));
            check_gates(&mutate("quality-gates-mobius.json", pick, value, add));
        }

        #[test]
        fn shipped_topology_with_one_field_changed_never_panics(
            pick in any::<prop::sample::Index>(),
            value in json(),
            add in prop::option::of(key()),
        ) {
            check_topology(&mutate("environments.json", pick, value, add));
        }

        #[test]
        fn truncated_shipped_files_are_errors(cut in any::<prop::sample::Index>()) {
            for name in ["quality-gates-config.json", "environments.json"] {
                let text = std::fs::read_to_string(repo_file(name)).expect("read");
                let trimmed = text.trim_end();
                let mut at = cut.index(trimmed.len());
                while !trimmed.is_char_boundary(at) {
                    at -= 1;
                }
                let e = if name == "environments.json" {
                    Topology::parse(Path::new(TOPO_PATH), &trimmed[..at]).map(|_| ())
                } else {
                    GatesFile::parse(Path::new(GATES_PATH), &trimmed[..at]).map(|_| ())
                };
                prop_assert!(e.is_err(), "{name} cut at {at} must not load");
            }
        }

        /// Events on stdin (issue 13): any bytes, split in lines, give one
        /// item per non-blank line with its own line number, never a panic;
        /// an object with the envelope is an event, any other object is
        /// forwarded as `Other`, anything else is `Malformed`.
        #[test]
        fn upstream_lines_never_panic_and_keep_their_numbers(
            lines in prop::collection::vec(upstream_line(), 0..24)
        ) {
            let mut input = Vec::new();
            for l in &lines {
                input.extend_from_slice(l);
                input.push(b'\n');
            }
            let items: Vec<_> =
                gates_core::event::read_upstream(std::io::Cursor::new(input)).collect();
            let expected: Vec<usize> = lines
                .iter()
                .enumerate()
                .filter(|(_, l)| !String::from_utf8_lossy(l).trim().is_empty())
                .map(|(i, _)| i + 1)
                .collect();
            let got: Vec<usize> = items
                .iter()
                .map(|u| match u {
                    gates_core::event::Upstream::Event { line_no, .. }
                    | gates_core::event::Upstream::Other { line_no, .. }
                    | gates_core::event::Upstream::Malformed { line_no, .. } => *line_no,
                })
                .collect();
            prop_assert_eq!(got, expected);
            for u in &items {
                if let gates_core::event::Upstream::Malformed { raw, .. } = u {
                    let parsed = serde_json::from_str::<Value>(raw);
                    prop_assert!(!matches!(parsed, Ok(Value::Object(_))), "{raw}");
                }
            }
        }
    }

    /// A line of stdin: an envelope-shaped event, another JSON value, or raw bytes.
    fn upstream_line() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            (key(), key(), any::<i64>()).prop_map(|(tool, ev, n)| serde_json::json!({
                "ts": "2026-12-02T00:00:00Z", "tool": tool, "env": "production",
                "event": format!("{ev}.done"), "level": "info", "msg": n.to_string()
            })
            .to_string()
            .into_bytes()),
            json().prop_map(|v| v.to_string().into_bytes()),
            prop::collection::vec(any::<u8>(), 0..64)
                .prop_map(|b| b.into_iter().filter(|c| *c != b'\n').collect()),
        ]
    }
}
