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
    assert!(e.message.contains("expected f64"), "{e}");

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
    assert!(e.message.contains("≥ 0"), "{e}");

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
    assert!(e.message.contains("known: production, staging"), "{e}");
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
