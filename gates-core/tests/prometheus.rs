//! Prometheus as a metrics source (issue 17), against the real thing: the
//! shipped `deploy/prometheus/` files through `promtool`, and a real
//! Prometheus (Debian's `prometheus` package, which `.ci/run` installs)
//! scraping reference-service instances on loopback every second while the
//! load driver runs. A missing `prometheus` or `promtool` fails the tests,
//! naming the package.
#![cfg(unix)]
#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use gates_core::config::{GateKind, GateSpec, GatesFile, Topology};
use gates_core::gates::{Evaluator, Status};
use gates_core::promql::{self, Client, Figure, Scope, Split};
use gates_core::sample::{Health, Sample};
use serde_json::Value;

/// The scrape and rule-evaluation interval of the shipped prometheus.yml,
/// for which rules.yml is generated.
const SHIPPED_INTERVAL: Duration = Duration::from_secs(15);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn prom_dir() -> PathBuf {
    root().join("deploy/prometheus")
}

fn shipped_gates() -> GatesFile {
    GatesFile::load(&root().join("quality-gates-config.json")).unwrap()
}

fn need(program: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("{program} is needed for this test: bash .ci/run installs it (apt-get install prometheus)")
    })
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Compares a shipped file with what it should hold; `UPDATE_PROMETHEUS_RULES=1`
/// rewrites it instead.
fn check_generated(name: &str, want: &str) {
    let path = prom_dir().join(name);
    if std::env::var_os("UPDATE_PROMETHEUS_RULES").is_some_and(|v| v == "1") {
        fs::write(&path, want).unwrap();
        return;
    }
    let have = fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{} differs from the shipped gates (quality-gates-config.json); regenerate it with\n  UPDATE_PROMETHEUS_RULES=1 cargo test -p gates-core --test prometheus shipped\n--- want ---\n{want}",
        path.display()
    );
}

#[test]
fn shipped_rules_are_the_shipped_gates() {
    let gates = shipped_gates();
    check_generated(
        "rules.yml",
        &promql::alerting_rules(&gates, SHIPPED_INTERVAL),
    );
    check_generated("rules_test.yml", &rule_tests(&gates, SHIPPED_INTERVAL));
    let config = fs::read_to_string(prom_dir().join("prometheus.yml")).unwrap();
    assert!(
        config.contains("scrape_interval: 15s") && config.contains("evaluation_interval: 15s"),
        "rules.yml counts health checks in 15 s scrapes; prometheus.yml must scrape and evaluate every 15s"
    );
}

/// Every environment of environments.json is scraped, labelled with its name.
#[test]
fn scrape_config_covers_every_local_environment() {
    let topology = Topology::load(&root().join("environments.json")).unwrap();
    let config = fs::read_to_string(prom_dir().join("prometheus.yml")).unwrap();
    for (name, env) in &topology.environments {
        let target = env
            .metrics_url
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap()
            .to_string();
        let block = config
            .split("- targets:")
            .find(|b| b.contains(&format!("'{target}'")))
            .unwrap_or_else(|| panic!("prometheus.yml does not scrape {name}'s {target}"));
        assert!(
            block.contains(&format!("env: {name}\n")),
            "prometheus.yml scrapes {target} without the label env: {name}"
        );
    }
}

#[test]
fn promtool_passes_config_rules_and_rule_tests() {
    let promtool = need("promtool");
    let dir = prom_dir();
    run(Command::new(&promtool)
        .current_dir(&dir)
        .args(["check", "config", "prometheus.yml"]));
    run(Command::new(&promtool)
        .current_dir(&dir)
        .args(["check", "rules", "rules.yml"]));
    let out =
        run(Command::new(&promtool)
            .current_dir(&dir)
            .args(["test", "rules", "rules_test.yml"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SUCCESS"), "promtool test rules: {text}");
    // Each rule has a case where it fires and one where it stays silent.
    let tests = fs::read_to_string(dir.join("rules_test.yml")).unwrap();
    for (env, g) in &shipped_gates().environments {
        for gate in &g.gates {
            for case in ["violated", "holds"] {
                let name = format!("name: '{env} {} {case}'", gate.name);
                assert!(tests.contains(&name), "rules_test.yml lacks {name}");
            }
        }
    }
    let dashboard: Value =
        serde_json::from_str(&fs::read_to_string(dir.join("grafana-dashboard.json")).unwrap())
            .unwrap();
    let exprs = dashboard.to_string();
    for gate in [
        "dhash_extraction_failures_total",
        "dhash_hash_time_ms_bucket",
        "ALERTS",
    ] {
        assert!(exprs.contains(gate), "the dashboard does not chart {gate}");
    }
}

// ---- rules_test.yml: synthetic series per gate kind ------------------------

fn series_labels(env: &str) -> String {
    format!("job=\"dhash\",env=\"{env}\",instance=\"127.0.0.1:3000\"")
}

/// One promtool test group: the series, and whether the alert fires at
/// `at` (`Some`: with the series labels the alert keeps besides its own).
fn case(
    out: &mut String,
    rule: &promql::AlertRule,
    title: &str,
    interval: &str,
    series: &[(String, String)],
    at: &str,
    fires: Option<&[(&str, &str)]>,
) {
    let _ = writeln!(
        out,
        "  - name: '{title}'\n    interval: {interval}\n    input_series:"
    );
    for (s, v) in series {
        let _ = writeln!(out, "      - series: '{s}'\n        values: '{v}'");
    }
    let _ = writeln!(
        out,
        "    alert_rule_test:\n      - eval_time: {at}\n        alertname: {}",
        rule.alert
    );
    let Some(labels) = fires else {
        out.push_str("        exp_alerts: []\n");
        return;
    };
    out.push_str("        exp_alerts:\n          - exp_labels:\n");
    let rule_labels = rule.labels.iter().map(|(k, v)| (*k, v.as_str()));
    let extra = labels
        .iter()
        .copied()
        .filter(|(k, _)| !rule.labels.iter().any(|(r, _)| r == k));
    for (k, v) in extra.chain(rule_labels) {
        let _ = writeln!(out, "              {k}: '{v}'");
    }
    let _ = writeln!(
        out,
        "            exp_annotations:\n              summary: '{}'",
        rule.summary
    );
}

fn minutes(d: Duration) -> u64 {
    d.as_secs().div_ceil(60).max(1)
}

/// The series on which a gate is violated and on which it holds (its
/// threshold exactly: thresholds are strict), and when to look.
fn gate_cases(out: &mut String, env: &str, g: &GateSpec, interval: Duration) {
    let rule = promql::alert_rule(g, env, interval);
    let sel = series_labels(env);
    let t = g.threshold;
    let n = |x: f64| promql::num(x);
    let title = |c: &str| format!("{env} {} {c}", g.name);
    let env_label = [("env", env)];
    match g.kind {
        GateKind::Consecutive => {
            // up: one good scrape, then failures; "more than N in a row"
            // fires on failed scrape N+1 and not on scrape N.
            let k = t.floor() as u64;
            let s = vec![(format!("up{{{sel}}}"), format!("1 0x{}", k + 3))];
            let step = interval.as_secs();
            let full = [("job", "dhash"), ("instance", "127.0.0.1:3000")];
            let (fire_at, hold_at) = (format!("{}s", (k + 1) * step), format!("{}s", k * step));
            case(
                out,
                &rule,
                &title("violated"),
                &format!("{step}s"),
                &s,
                &fire_at,
                Some(&full),
            );
            case(
                out,
                &rule,
                &title("holds"),
                &format!("{step}s"),
                &s,
                &hold_at,
                None,
            );
        }
        GateKind::Ratio => {
            let (num, den) = (
                promql::metric_name(g.metric).unwrap(),
                promql::metric_name(g.denominator.unwrap()).unwrap(),
            );
            let m = minutes(g.window);
            let at = format!("{}m", 2 * m);
            let per = |pct: f64| {
                vec![
                    (
                        format!("{num}{{{sel}}}"),
                        format!("0+{}x{}", n(pct * 10.0), 2 * m),
                    ),
                    (format!("{den}{{{sel}}}"), format!("0+1000x{}", 2 * m)),
                ]
            };
            case(
                out,
                &rule,
                &title("violated"),
                "1m",
                &per(t + 1.0),
                &at,
                Some(&env_label),
            );
            case(out, &rule, &title("holds"), "1m", &per(t), &at, None);
        }
        GateKind::Percentile => {
            // Two buckets around the threshold: all observations above it
            // (p95 inside (t, 10t]) or all at or below it.
            let m = minutes(g.window);
            let at = format!("{}m", 2 * m);
            let b = |le: &str, v: &str| {
                (
                    format!("dhash_hash_time_ms_bucket{{{sel},le=\"{le}\"}}"),
                    v.to_string(),
                )
            };
            let grow = format!("0+10x{}", 2 * m);
            let flat = format!("0x{}", 2 * m);
            let (lo, hi) = (n(t), n(t * 10.0));
            let above = vec![b(&lo, &flat), b(&hi, &grow), b("+Inf", &grow)];
            let below = vec![b(&lo, &grow), b(&hi, &grow), b("+Inf", &grow)];
            case(
                out,
                &rule,
                &title("violated"),
                "1m",
                &above,
                &at,
                Some(&env_label),
            );
            case(out, &rule, &title("holds"), "1m", &below, &at, None);
        }
        GateKind::Instant => {
            let name = promql::metric_name(g.metric).unwrap();
            let s = |v: f64| vec![(format!("{name}{{{sel}}}"), format!("{}x5", n(v)))];
            case(
                out,
                &rule,
                &title("violated"),
                "1m",
                &s(t + 1.0),
                "2m",
                Some(&env_label),
            );
            case(out, &rule, &title("holds"), "1m", &s(t), "2m", None);
        }
        GateKind::Sustained => {
            // Above for the whole window fires; above for all but its last
            // minute does not.
            let name = promql::metric_name(g.metric).unwrap();
            let m = minutes(g.window);
            let at = format!("{m}m");
            let whole = vec![(
                format!("{name}{{{sel}}}"),
                format!("{}x{}", n(t + 1.0), 2 * m),
            )];
            let short = vec![(
                format!("{name}{{{sel}}}"),
                format!("{}x{} {}x{}", n(t + 1.0), m.saturating_sub(2), n(t), m + 1),
            )];
            case(
                out,
                &rule,
                &title("violated"),
                "1m",
                &whole,
                &at,
                Some(&env_label),
            );
            case(out, &rule, &title("holds"), "1m", &short, &at, None);
        }
    }
}

/// `deploy/prometheus/rules_test.yml` for `promtool test rules`.
fn rule_tests(gates: &GatesFile, interval: Duration) -> String {
    let mut out = format!(
        "# promtool test rules rules_test.yml: each rule of rules.yml fires on\n\
         # synthetic series where its gate is violated and stays silent where the\n\
         # gate holds (at its threshold exactly: thresholds are strict).\n\
         # Generated by gates-core/tests/prometheus.rs (UPDATE_PROMETHEUS_RULES=1).\n\
         rule_files:\n  - rules.yml\nevaluation_interval: {}\ntests:\n",
        promql::range(interval)
    );
    for (env, g) in &gates.environments {
        for gate in &g.gates {
            gate_cases(&mut out, env, gate, interval);
        }
    }
    out
}

// ---- a real Prometheus -----------------------------------------------------

/// A Prometheus started for one test, killed (by its pid) when dropped.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts Prometheus scraping `targets` (`(env, host:port)`) every second.
fn start_prometheus(targets: &[(&str, String)]) -> Prometheus {
    let bin = need("prometheus");
    let dir = tempfile::tempdir().unwrap();
    let mut config = String::from(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: dhash\n    params:\n      format: [prometheus]\n    static_configs:\n",
    );
    for (env, target) in targets {
        let _ = writeln!(
            config,
            "      - targets: ['{target}']\n        labels:\n          env: {env}"
        );
    }
    fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let port = testkit::free_port();
    let log = fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let child = Command::new(bin)
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting prometheus");
    let p = Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    let ready = format!("{}/-/ready", p.url);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !gates_core::probe::get(&ready, Duration::from_secs(1)).is_ok_and(|a| a.is_success()) {
        if Instant::now() > deadline {
            let log = fs::read_to_string(p._dir.path().join("prometheus.log")).unwrap_or_default();
            panic!("prometheus did not become ready within 20 s:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    p
}

fn client(p: &Prometheus) -> Client {
    Client::new(&p.url, Duration::from_secs(5))
}

/// Waits until `expr` returns `n` series (targets scraped).
fn wait_series(c: &Client, expr: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match c.query(expr, None) {
            Ok(v) if v.len() == n => return,
            other if Instant::now() > deadline => {
                panic!("{expr}: wanted {n} series, got {other:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn now_ms() -> i64 {
    gates_core::probe::now_ms()
}

/// Prometheus's own failures become the gate states `error` and `no-data`.
#[test]
fn prometheus_errors_map_to_gate_states() {
    let p = start_prometheus(&[]);
    let c = client(&p);
    // A query Prometheus refuses (bad_data, HTTP 400) is an error.
    let bad = c.figure("sum(rate(dhash_requests_total[5m]", None);
    assert!(
        matches!(&bad, Figure::Error(e) if e.contains("bad_data")),
        "{bad:?}"
    );
    // An empty vector (nothing matches) is no-data.
    let empty = c.figure("sum(dhash_requests_total{env=\"nowhere\"})", None);
    assert!(
        matches!(&empty, Figure::NoData(e) if e.contains("empty vector")),
        "{empty:?}"
    );
    // 0 / 0 (no traffic in the window) is no-data; a number is a value.
    assert!(matches!(
        c.figure("vector(0) / vector(0)", None),
        Figure::NoData(_)
    ));
    assert_eq!(c.figure("vector(6.5)", None), Figure::Value(6.5));
    // Two series where a gate needs one figure is an error.
    let two = c.figure(
        "vector(1) or label_replace(vector(2), \"x\", \"y\", \"\", \"\")",
        None,
    );
    assert!(
        matches!(&two, Figure::Error(e) if e.contains("2 series")),
        "{two:?}"
    );
    // query_range: one series, one point per step.
    let end = now_ms();
    let range = c
        .query_range("vector(3)", end - 10_000, end, Duration::from_secs(2))
        .unwrap();
    assert_eq!(range.len(), 1);
    assert_eq!(range[0].values.len(), 6, "{range:?}");
    assert!(range[0].values.iter().all(|(_, v)| *v == 3.0));

    // A server that accepts and never answers: an error after the timeout.
    let hang = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", hang.local_addr().unwrap());
    let started = Instant::now();
    let slow = Client::new(&url, Duration::from_millis(700)).figure("vector(1)", None);
    let took = started.elapsed();
    assert!(
        matches!(&slow, Figure::Error(e) if e.contains("no answer within")),
        "{slow:?}"
    );
    assert!(took < Duration::from_secs(3), "the timeout took {took:?}");
    drop(hang);
    // Nothing listening: an error naming the server.
    let refused = Client::new(&url, Duration::from_secs(1)).figure("vector(1)", None);
    assert!(
        matches!(&refused, Figure::Error(e) if e.contains("unreachable")),
        "{refused:?}"
    );
}

/// The monitor's figure of one gate from two /metrics samples `window` apart.
fn monitor_figure(g: &GateSpec, first: &Sample, last: &Sample) -> (Status, Option<f64>) {
    let mut ev = Evaluator::new(vec![g.clone()]);
    ev.observe(first);
    let d = ev.observe(last).remove(0);
    (d.status, d.value)
}

fn sample(metrics_url: &str, queue_url: &str) -> Sample {
    let t_ms = now_ms();
    let m = gates_core::probe::probe_metrics(metrics_url, queue_url, Duration::from_secs(2));
    Sample {
        t_ms,
        health: Health::Ok,
        metrics: Ok(m.unwrap()),
    }
}

fn gate(name: &str, window: &str) -> GateSpec {
    let text = format!(
        r#"{{"environments": {{"staging": {{"quality_gates": {{"{name}": {{"threshold": 1, "window_minutes": "{window}", "action": "alert", "source": "prometheus"}}}}}}}}}}"#
    );
    GatesFile::parse(Path::new("gates.json"), &text)
        .unwrap()
        .environments["staging"]
        .gates[0]
        .clone()
}

fn load(url: &str, mix: &str, rate: u32, secs: u32) -> Child {
    Command::new(testkit::bin_path("dhash-service"))
        .args(["load", "--url", url, "--mix", mix])
        .args([
            "--rate",
            &rate.to_string(),
            "--duration",
            &format!("{secs}s"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the load driver")
}

/// How far a figure read through PromQL may be from the monitor's, under a
/// steady load, when both cover the same window ending at the same instant.
/// Prometheus sees the counters at its scrapes (every second here), the
/// monitor at its polls: each window edge may be off by up to one scrape
/// interval of traffic. Both counters of a ratio are scraped together, so
/// `increase()`'s extrapolation cancels out; with the load driver's
/// deterministic mix (one failure in every N requests) the edges shift the
/// ratio by at most a couple of requests in the hundreds the window holds.
const RATIO_TOLERANCE_PP: f64 = 1.5;
/// A p95 from histogram buckets is known only to its bucket: both figures
/// interpolate linearly inside the bucket that holds the 95th percentile,
/// and the edge traffic moves that rank by a few requests, which inside a
/// bucket can move the interpolated value by a good part of its width (hash
/// times vary with the load of the machine). Allowed: the width of the
/// bucket that holds the monitor's p95.
fn p95_tolerance(s: &Sample, p95: f64) -> f64 {
    let les: Vec<f64> = s
        .metrics
        .as_ref()
        .unwrap()
        .hash_time_buckets
        .as_ref()
        .unwrap()
        .iter()
        .map(|b| b.le)
        .collect();
    let upper = les
        .iter()
        .copied()
        .find(|le| *le >= p95)
        .unwrap_or(f64::INFINITY);
    let lower = les
        .iter()
        .copied()
        .filter(|le| *le < p95)
        .fold(0.0, f64::max);
    upper - lower
}

#[test]
fn promql_figures_agree_with_metrics_under_load() {
    let tp = testkit::TestProject::new();
    let fast = tp.bundle("v1", &[]);
    let slow = tp.bundle("v1-slow", &[("hash_latency_ms", "30")]);
    let releases = [
        tp.install_and_start("production", &fast),
        tp.install_and_start("staging", &slow),
    ];
    let envs = ["production", "staging"];
    let targets: Vec<(&str, String)> = envs
        .iter()
        .map(|e| (*e, format!("127.0.0.1:{}", tp.port(e))))
        .collect();
    let p = start_prometheus(&targets);
    let c = client(&p);
    wait_series(&c, "up{job=\"dhash\"} == 1", 2);
    let configs = envs.map(|e| tp.env(e));
    let mixes = ["valid=80,low=10,bad=10", "valid=60,low=10,bad=30"];
    let loads: Vec<Child> = envs
        .iter()
        .zip(mixes)
        .map(|(e, mix)| load(&tp.base_url(e), mix, 40, 14))
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let first = configs
        .each_ref()
        .map(|e| sample(&e.metrics_url, &e.queue_url));
    std::thread::sleep(Duration::from_secs(10));
    let last = configs
        .each_ref()
        .map(|e| sample(&e.metrics_url, &e.queue_url));
    // The scrape before `last` must be stored before Prometheus is asked.
    std::thread::sleep(Duration::from_millis(1500));
    for (i, env) in envs.iter().enumerate() {
        let window = format!("{}ms", last[i].t_ms - first[i].t_ms);
        for name in ["extraction_failure_rate", "p95_hash_time"] {
            let g = gate(name, &window);
            let (status, mon) = monitor_figure(&g, &first[i], &last[i]);
            let expr = promql::gate_expr(&g, &Scope::env(env)).unwrap();
            let prom = c.figure(&expr, Some(last[i].t_ms));
            eprintln!("{env} {name}: /metrics {mon:?} ({status:?}), PromQL {prom:?} from {expr}");
            let (Some(mon), Figure::Value(prom)) = (mon, &prom) else {
                panic!("{env} {name}: no figure: /metrics {mon:?} {status:?}, PromQL {prom:?}");
            };
            let allowed = if name == "p95_hash_time" {
                p95_tolerance(&last[i], mon)
            } else {
                RATIO_TOLERANCE_PP
            };
            assert!(
                (prom - mon).abs() <= allowed,
                "{env} {name}: PromQL {prom} vs /metrics {mon} (allowed ±{allowed})"
            );
        }
    }
    // The canary split: one figure per (env, release), labelled with the
    // release each instance serves.
    let g = gate("extraction_failure_rate", "10s");
    let scope = Scope {
        matchers: "job=\"dhash\"".into(),
        split: Split::Release,
    };
    let expr = promql::gate_expr(&g, &scope).unwrap();
    let by_release = c.query(&expr, None).unwrap();
    let mut got: Vec<(String, String)> = by_release
        .iter()
        .map(|p| (p.labels["env"].clone(), p.labels["release"].clone()))
        .collect();
    got.sort();
    let want = vec![
        ("production".to_string(), releases[0].clone()),
        ("staging".to_string(), releases[1].clone()),
    ];
    assert_eq!(got, want, "{expr}");
    let per_instance = c
        .query(
            &promql::gate_expr(&g, &Scope::env("production").split(Split::Instance)).unwrap(),
            None,
        )
        .unwrap();
    assert_eq!(per_instance.len(), 1);
    assert_eq!(per_instance[0].labels["instance"], targets[0].1);
    for mut l in loads {
        let mut out = String::new();
        if let Some(mut s) = l.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        assert!(l.wait().unwrap().success(), "the load driver failed: {out}");
    }
}

/// What a real Prometheus answers becomes a gate decision through the same
/// evaluator as a polled figure: a value against the threshold, no-data
/// that never violates by itself, errors that violate after
/// `errors_to_violate` in a row.
#[test]
fn prometheus_figures_become_gate_decisions() {
    let p = start_prometheus(&[]);
    let c = client(&p);
    let g = gate("extraction_failure_rate", "10m");
    assert!(g
        .promql()
        .is_some_and(|q| q.contains("dhash_extraction_failures_total")));
    let mut ev = Evaluator::new(vec![g]);
    let t = now_ms();
    let mut decide = |expr: &str| {
        let d = ev.observe_figure(0, &c.figure(expr, None), t).unwrap();
        (d.status, d.value, d.reason.to_string())
    };
    let (status, value, reason) = decide("vector(6.5)");
    assert_eq!((status, value), (Status::Violated, Some(6.5)), "{reason}");
    assert!(reason.contains("above the threshold 1 %"), "{reason}");
    assert_eq!(
        decide("vector(1)").0,
        Status::Ok,
        "exactly the threshold holds"
    );
    let (status, _, reason) = decide("sum(dhash_requests_total{env=\"nowhere\"})");
    assert_eq!(status, Status::NoData, "{reason}");
    // The gate's errors_to_violate (5 by default) bad queries in a row.
    let runs: Vec<Status> = (0..5).map(|_| decide("sum(").0).collect();
    assert_eq!(runs[..4], [Status::Error; 4]);
    assert_eq!(runs[4], Status::Violated);
}

/// A watch's Prometheus gates are split from its probe gates, refused
/// without a server, and judged at each poll from the server's answers.
#[test]
fn prometheus_gates_are_split_and_polled() {
    let p = start_prometheus(&[]);
    let text = r#"{"environments": {"staging": {"quality_gates": {
        "error_rate": {"threshold": 3, "window_minutes": 5, "action": "alert"},
        "p95_hash_time": {"threshold": 2000, "window_minutes": 10, "action": "alert", "source": "prometheus", "promql": "vector(2500)"},
        "extraction_failure_rate": {"threshold": 10, "window_minutes": 5, "action": "alert", "source": "prometheus"}}}}}"#;
    let gates = GatesFile::parse(Path::new("gates.json"), text)
        .unwrap()
        .environments["staging"]
        .gates
        .clone();
    let topology = Topology::load(&root().join("environments.json")).unwrap();
    let mut env = topology.environments["staging"].clone();
    let refused = promql::PromGates::split(&env, gates.clone()).unwrap_err();
    assert!(refused.contains("names no Prometheus server"), "{refused}");
    env.prometheus = Some(client(&p));
    let (probe, mut prom) = promql::PromGates::split(&env, gates).unwrap();
    assert_eq!(probe.len(), 1);
    assert_eq!(probe[0].name, "error_rate");
    let got: Vec<(String, Status)> = prom
        .poll(now_ms())
        .into_iter()
        .map(|d| (d.gate, d.status))
        .collect();
    // The built-in ratio finds no series here (nothing scraped): no-data.
    assert_eq!(
        got,
        [
            ("extraction_failure_rate".to_string(), Status::NoData),
            ("p95_hash_time".to_string(), Status::Violated),
        ]
    );
}
