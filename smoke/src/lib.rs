//! Smoke tests against an environment's running dhash service, and the
//! logging validation (`validate_logging`, see [`logging`]).
//!
//! Checks, in order (a failed health check stops the run: nothing after it
//! could pass):
//!
//! | check                | modes                         | passes when |
//! |----------------------|-------------------------------|-------------|
//! | `health`             | quick, post-deploy, full      | `/health` answers 2xx `{"status":"ok"}` |
//! | `health_consecutive` | post-rollback (instead of `health`) | N ≥ 3 consecutive OK checks, `health.interval` apart, within `health.timeout` |
//! | `release`            | all but quick                 | the release `/health` reports is the one `current` points at |
//! | `metrics_schema`     | all but quick                 | `/metrics` has every documented field with the right type |
//! | `queue_status`       | all but quick                 | the queue endpoint answers `{"length": n ≥ 0, "oldest_age_seconds": x \| null}` |
//! | `golden:<image>`     | all but quick                 | POSTing each golden image of the deployed release to `/api/dhash/hash` yields its expected dHash |
//!
//! Every check is a `smoke.check` event and a line in
//! `<log_dir>/smoke_tests_<UTC timestamp>.log`; the run ends with
//! `smoke.passed` or `smoke.failed`. `--dry-run` lists the checks
//! (`smoke.planned` events) and contacts nothing.

pub mod cli;
pub mod logging;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gates_core::config::{EnvConfig, HealthPolicy};
use gates_core::install::current_release_id;
use gates_core::probe;
use gates_core::project::Project;
use gates_core::sample::Health;
use gates_core::{Emitter, Level};
use serde::Serialize;
use serde_json::{json, Value};

/// Which checks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SmokeMode {
    /// Health only.
    Quick,
    /// Everything (the seeds' "comprehensive smoke tests" after a deploy).
    PostDeploy,
    /// Three (or `health.checks_required`, if more) consecutive OK health checks first, then everything.
    PostRollback,
    /// Everything (no flag).
    Full,
}

impl SmokeMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SmokeMode::Quick => "quick",
            SmokeMode::PostDeploy => "post-deploy",
            SmokeMode::PostRollback => "post-rollback",
            SmokeMode::Full => "full",
        }
    }
}

#[derive(Debug, Clone)]
pub struct SmokeOptions {
    pub mode: SmokeMode,
    pub dry_run: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SmokeReport {
    pub passed: bool,
    pub checks: Vec<Check>,
    /// The log written (none on a dry run).
    pub log: Option<PathBuf>,
}

impl SmokeReport {
    /// The checks that failed.
    pub fn failed(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.ok)
    }
}

/// Health checks `--post-rollback` requires in a row (seed runbooks: 3).
pub const POST_ROLLBACK_CHECKS: u32 = 3;

/// The most one golden-image request may take (a slow release still
/// answers; the quality gates, not the smoke test, judge latency).
const GOLDEN_TIMEOUT_MIN: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
enum Planned {
    Health,
    HealthConsecutive(u32),
    Release,
    MetricsSchema,
    QueueStatus,
    /// The golden manifest could not be read: this check reports why.
    GoldenManifest(String),
    Golden(GoldenImage),
}

#[derive(Debug, Clone)]
struct GoldenImage {
    file: String,
    dhash: String,
}

impl Planned {
    fn name(&self) -> String {
        match self {
            Planned::Health => "health".into(),
            Planned::HealthConsecutive(_) => "health_consecutive".into(),
            Planned::Release => "release".into(),
            Planned::MetricsSchema => "metrics_schema".into(),
            Planned::QueueStatus => "queue_status".into(),
            Planned::GoldenManifest(_) => "golden_images".into(),
            Planned::Golden(g) => format!(
                "golden:{}",
                Path::new(&g.file)
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default()
            ),
        }
    }

    fn describe(&self, env: &EnvConfig) -> String {
        match self {
            Planned::Health => format!("GET {} answers status ok", env.health_url),
            Planned::HealthConsecutive(n) => format!(
                "GET {} answers ok {n} times in a row, {} apart, within {}",
                env.health_url,
                gates_core::duration::human(env.health.interval),
                gates_core::duration::human(env.health.timeout)
            ),
            Planned::Release => format!(
                "the release /health reports is the one {} points at",
                env.current_link().display()
            ),
            Planned::MetricsSchema => format!("GET {} has every documented field", env.metrics_url),
            Planned::QueueStatus => format!("GET {} answers length and oldest age", env.queue_url),
            Planned::GoldenManifest(why) => {
                format!("golden images of the deployed release ({why})")
            }
            Planned::Golden(g) => format!(
                "POST {} to {} yields dhash {}",
                g.file,
                hash_url(env),
                g.dhash
            ),
        }
    }
}

/// Runs the smoke checks of `opts.mode` against `env` (see the crate docs).
/// `Ok` with `passed: false` when a check failed; `Err` only when the run
/// itself could not happen (the log folder is not writable, say).
pub fn run(
    project: &Project,
    env: &EnvConfig,
    opts: &SmokeOptions,
    em: &Emitter,
) -> anyhow::Result<SmokeReport> {
    let _ = project;
    let plan = plan(env, opts.mode);
    if opts.dry_run {
        return Ok(dry_run(&plan, env, opts.mode, em));
    }
    let log = start_log(&plan, env, opts.mode, em)?;
    let checks = run_checks(&plan, env, &log, em)?;
    conclude(checks, env, opts.mode, log, em)
}

/// `--dry-run`: one `smoke.planned` event a check; nothing is contacted.
fn dry_run(plan: &[Planned], env: &EnvConfig, mode: SmokeMode, em: &Emitter) -> SmokeReport {
    let mut checks = Vec::new();
    for p in plan {
        let detail = format!("would check: {}", p.describe(env));
        em.emit(
            "smoke.planned",
            Level::Info,
            format!("{}: {detail}", p.name()),
            json!({"check": p.name(), "mode": mode.as_str(), "dry_run": true}),
        );
        checks.push(Check {
            name: p.name(),
            ok: true,
            detail,
        });
    }
    em.human(&format!(
        "dry run: {} check(s) planned for {} ({}); nothing contacted",
        checks.len(),
        env.name,
        mode.as_str()
    ));
    SmokeReport {
        passed: true,
        checks,
        log: None,
    }
}

/// Opens this run's log with its header line and emits `smoke.started`.
fn start_log(
    plan: &[Planned],
    env: &EnvConfig,
    mode: SmokeMode,
    em: &Emitter,
) -> anyhow::Result<PathBuf> {
    let log = env.log_dir.join(format!(
        "smoke_tests_{}.log",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%3fZ")
    ));
    log_line(
        &log,
        &format!(
            "# smoke_tests env={} mode={} health={} release={}",
            env.name,
            mode.as_str(),
            env.health_url,
            current_release_id(env).as_deref().unwrap_or("-")
        ),
    )?;
    em.emit(
        "smoke.started",
        Level::Info,
        format!(
            "smoke tests ({}) against {}: {} check(s)",
            mode.as_str(),
            env.name,
            plan.len()
        ),
        json!({"mode": mode.as_str(), "checks": plan.iter().map(Planned::name).collect::<Vec<_>>(),
               "log": log}),
    );
    Ok(log)
}

/// Runs the checks in order, each logged and a `smoke.check` event; a failed
/// health check ends the run (nothing after it could pass).
fn run_checks(
    plan: &[Planned],
    env: &EnvConfig,
    log: &Path,
    em: &Emitter,
) -> anyhow::Result<Vec<Check>> {
    let mut checks = Vec::new();
    for p in plan {
        let t0 = Instant::now();
        let (ok, detail) = match run_check(p, env, em) {
            Ok(detail) => (true, detail),
            Err(detail) => (false, detail),
        };
        let seconds = (t0.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
        let name = p.name();
        log_line(
            log,
            &format!(
                "{} {} {name}: {detail} ({seconds}s)",
                gates_core::event::now_rfc3339(),
                if ok { "PASS" } else { "FAIL" }
            ),
        )?;
        em.emit(
            "smoke.check",
            if ok { Level::Info } else { Level::Error },
            format!("{name}: {} — {detail}", if ok { "ok" } else { "FAILED" }),
            json!({"check": name, "ok": ok, "detail": detail, "seconds": seconds}),
        );
        let stop = !ok && matches!(p, Planned::Health | Planned::HealthConsecutive(_));
        checks.push(Check { name, ok, detail });
        if stop {
            em.debug("health failed: the remaining checks are skipped");
            break;
        }
    }
    Ok(checks)
}

/// The result line of the log and `smoke.passed` or `smoke.failed`.
fn conclude(
    checks: Vec<Check>,
    env: &EnvConfig,
    mode: SmokeMode,
    log: PathBuf,
    em: &Emitter,
) -> anyhow::Result<SmokeReport> {
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.name.as_str())
        .collect();
    let passed = failed.is_empty();
    log_line(
        &log,
        &format!(
            "{} RESULT {}",
            gates_core::event::now_rfc3339(),
            if passed {
                "passed".to_string()
            } else {
                format!("failed: {}", failed.join(", "))
            }
        ),
    )?;
    if passed {
        em.emit(
            "smoke.passed",
            Level::Info,
            format!("all {} smoke check(s) passed on {}", checks.len(), env.name),
            json!({"mode": mode.as_str(), "checks": checks.len(), "log": log}),
        );
    } else {
        em.emit(
            "smoke.failed",
            Level::Error,
            format!(
                "smoke check(s) failed on {}: {}",
                env.name,
                failed.join(", ")
            ),
            json!({"mode": mode.as_str(), "checks": checks.len(), "failed": failed, "log": log}),
        );
    }
    Ok(SmokeReport {
        passed,
        checks,
        log: Some(log),
    })
}

fn log_line(path: &Path, line: &str) -> anyhow::Result<()> {
    gates_core::fsutil::append_line(path, &gates_core::redact::global().redact(line), false)
}

fn plan(env: &EnvConfig, mode: SmokeMode) -> Vec<Planned> {
    let mut plan = vec![match mode {
        SmokeMode::PostRollback => {
            Planned::HealthConsecutive(env.health.checks_required.max(POST_ROLLBACK_CHECKS))
        }
        _ => Planned::Health,
    }];
    if mode == SmokeMode::Quick {
        return plan;
    }
    plan.extend([
        Planned::Release,
        Planned::MetricsSchema,
        Planned::QueueStatus,
    ]);
    match golden_manifest(env) {
        Ok(images) if images.is_empty() => plan.push(Planned::GoldenManifest(
            "the manifest lists no images".into(),
        )),
        Ok(images) => plan.extend(images.into_iter().map(Planned::Golden)),
        Err(why) => plan.push(Planned::GoldenManifest(why)),
    }
    plan
}

/// The golden manifest of the deployed release.
fn golden_manifest(env: &EnvConfig) -> Result<Vec<GoldenImage>, String> {
    let path = env.current_link().join("golden").join("manifest.json");
    let text =
        fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let v: Value =
        serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
    let images = v["images"]
        .as_array()
        .ok_or_else(|| format!("{}: no \"images\" array", path.display()))?;
    images
        .iter()
        .enumerate()
        .map(|(i, img)| {
            let file = img["file"].as_str();
            let dhash = img["dhash"].as_str();
            match (file, dhash) {
                (Some(f), Some(d)) => Ok(GoldenImage {
                    file: f.to_string(),
                    dhash: d.to_string(),
                }),
                _ => Err(format!(
                    "{}: images[{i}] needs \"file\" and \"dhash\" strings",
                    path.display()
                )),
            }
        })
        .collect()
}

/// The hash endpoint: the queue URL's sibling (`.../api/dhash/hash`), or
/// `/api/dhash/hash` on the health URL's origin.
pub fn hash_url(env: &EnvConfig) -> String {
    if let Some(base) = env.queue_url.strip_suffix("/queue/status") {
        return format!("{base}/hash");
    }
    let url = &env.health_url;
    let origin_end = url
        .find("://")
        .and_then(|i| url[i + 3..].find('/').map(|j| i + 3 + j))
        .unwrap_or(url.len());
    format!("{}/api/dhash/hash", &url[..origin_end])
}

fn run_check(p: &Planned, env: &EnvConfig, em: &Emitter) -> Result<String, String> {
    match p {
        Planned::Health => {
            let answer = probe::get(&env.health_url, env.monitor.probe_timeout)?;
            match probe::classify_health(&answer) {
                Health::Ok => Ok(health_summary(&answer.body)),
                Health::NotOk { detail } | Health::Error { detail } => Err(detail),
            }
        }
        Planned::HealthConsecutive(n) => {
            let policy = HealthPolicy {
                checks_required: *n,
                ..env.health.clone()
            };
            probe::wait_healthy(env, &policy, em)
                .map(|checks| format!("{n} consecutive OK checks ({checks} made)"))
                .map_err(|e| format!("{e:#}"))
        }
        Planned::Release => check_release(env),
        Planned::MetricsSchema => check_metrics_schema(env),
        Planned::QueueStatus => check_queue_status(env),
        Planned::GoldenManifest(why) => Err(why.clone()),
        Planned::Golden(g) => check_golden(env, g),
    }
}

/// The release `/health` reports is the one `current` points at.
fn check_release(env: &EnvConfig) -> Result<String, String> {
    let expected = current_release_id(env).ok_or_else(|| {
        format!(
            "no release installed: {} does not exist",
            env.current_link().display()
        )
    })?;
    let answer = probe::get(&env.health_url, env.monitor.probe_timeout)?;
    let v = answer.json()?;
    match v.get("release").and_then(Value::as_str) {
        Some(r) if r == expected => Ok(format!("serving {r}")),
        Some(r) => Err(format!(
            "serving {r}, but {} is {expected}",
            env.current_link().display()
        )),
        None => Err(format!("{} reports no \"release\"", env.health_url)),
    }
}

fn check_metrics_schema(env: &EnvConfig) -> Result<String, String> {
    let answer = probe::get(&env.metrics_url, env.monitor.probe_timeout)?;
    if !answer.is_success() {
        return Err(format!("{}: HTTP {}", env.metrics_url, answer.status));
    }
    let v = answer.json()?;
    let problems = metrics_schema_problems(&v);
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    probe::parse_metrics(&v)?;
    Ok(format!(
        "all fields present ({} hash requests, {} extraction failures)",
        v["hash_requests_total"], v["extraction_failures_total"]
    ))
}

fn check_queue_status(env: &EnvConfig) -> Result<String, String> {
    let answer = probe::get(&env.queue_url, env.monitor.probe_timeout)?;
    if !answer.is_success() {
        return Err(format!("{}: HTTP {}", env.queue_url, answer.status));
    }
    let v = answer.json()?;
    let mut problems = Vec::new();
    if !v.is_object() {
        problems.push("expected a JSON object".to_string());
    }
    match v.get("length") {
        Some(l) if l.as_u64().is_some() => {}
        Some(l) => problems.push(format!("length: expected an integer ≥ 0, found {l}")),
        None => problems.push("missing length".into()),
    }
    match v.get("oldest_age_seconds") {
        Some(a) if a.is_null() || a.as_f64().is_some_and(|x| x >= 0.0) => {}
        Some(a) => problems.push(format!(
            "oldest_age_seconds: expected a number ≥ 0 or null, found {a}"
        )),
        None => problems.push("missing oldest_age_seconds".into()),
    }
    if problems.is_empty() {
        Ok(format!(
            "length {}, oldest {}s",
            v["length"], v["oldest_age_seconds"]
        ))
    } else {
        Err(problems.join("; "))
    }
}

fn health_summary(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let mut parts = vec!["status ok".to_string()];
    if let Some(r) = v.get("release").and_then(Value::as_str) {
        parts.push(format!("release {r}"));
    }
    if let Some(s) = v.get("schema_version") {
        parts.push(format!("schema {s}"));
    }
    parts.join(", ")
}

fn check_golden(env: &EnvConfig, g: &GoldenImage) -> Result<String, String> {
    let release_dir = env.current_link();
    let path = release_dir.join(&g.file);
    if Path::new(&g.file)
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(format!("unsafe image path {:?} in the manifest", g.file));
    }
    let bytes = fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let lower = g.file.to_ascii_lowercase();
    let content_type = if lower.ends_with(".jpg") || lower.ends_with(".jpeg") {
        "image/jpeg"
    } else {
        "image/png"
    };
    let url = hash_url(env);
    let timeout = env.monitor.probe_timeout.max(GOLDEN_TIMEOUT_MIN);
    let answer = probe::post(&url, content_type, &bytes, timeout)?;
    if !answer.is_success() {
        return Err(format!(
            "POST {url}: HTTP {}: {}",
            answer.status,
            answer.body.trim()
        ));
    }
    let v = answer.json()?;
    let got = v
        .get("dhash")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("POST {url}: no \"dhash\" in the answer"))?;
    if got.eq_ignore_ascii_case(&g.dhash) {
        Ok(format!("dhash {got} as expected"))
    } else {
        Err(format!("{}: expected dhash {}, got {got}", g.file, g.dhash))
    }
}

/// Every way a `/metrics` document differs from the documented schema
/// (empty when it conforms). Counters must be numbers ≥ 0; measured gauges
/// (process, disk, queue) may be `null` when the service cannot measure them,
/// but must be present.
pub fn metrics_schema_problems(v: &Value) -> Vec<String> {
    let mut p = Vec::new();
    if !v.is_object() {
        return vec!["expected a JSON object".into()];
    }
    let get = |path: &str| v.pointer(&format!("/{}", path.replace('.', "/")));
    match get("release") {
        Some(Value::String(_)) => {}
        Some(x) => p.push(format!("release: expected a string, found {x}")),
        None => p.push("missing release".into()),
    }
    let counters = [
        "uptime_seconds",
        "requests_total",
        "hash_requests_total",
        "extraction_failures_total",
        "errors_total",
        "hash_time_ms.count",
        "hash_time_ms.sum",
    ];
    for f in counters {
        match get(f) {
            Some(x) if x.as_f64().is_some_and(|n| n >= 0.0) => {}
            Some(x) => p.push(format!("{f}: expected a number ≥ 0, found {x}")),
            None => p.push(format!("missing {f}")),
        }
    }
    let gauges = [
        "low_confidence_queue",
        "process.cpu_percent",
        "process.memory_rss_bytes",
        "process.memory_percent",
        "disk.data_dir_bytes",
        "disk.disk_percent",
    ];
    for f in gauges {
        match get(f) {
            Some(Value::Null) => {}
            Some(x) if x.as_f64().is_some_and(|n| n >= 0.0) => {}
            Some(x) => p.push(format!("{f}: expected a number ≥ 0 or null, found {x}")),
            None => p.push(format!("missing {f}")),
        }
    }
    match get("hash_time_ms.buckets") {
        None => p.push("missing hash_time_ms.buckets".into()),
        Some(Value::Array(b)) if b.is_empty() => p.push("hash_time_ms.buckets is empty".into()),
        Some(Value::Array(b)) => bucket_problems(b, &mut p),
        Some(x) => p.push(format!(
            "hash_time_ms.buckets: expected an array, found {x}"
        )),
    }
    p
}

/// The histogram buckets: bounds ascending up to "+Inf", cumulative counts.
fn bucket_problems(b: &[Value], p: &mut Vec<String>) {
    let mut prev_le = f64::NEG_INFINITY;
    let mut prev_count = 0.0;
    for (i, bucket) in b.iter().enumerate() {
        let le = match &bucket["le"] {
            Value::String(s) if s == "+Inf" => f64::INFINITY,
            x => {
                match x.as_f64() {
                    Some(n) => n,
                    None => {
                        p.push(format!("hash_time_ms.buckets[{i}].le: expected a number or \"+Inf\", found {x}"));
                        continue;
                    }
                }
            }
        };
        let Some(count) = bucket["count"].as_f64().filter(|c| *c >= 0.0) else {
            p.push(format!(
                "hash_time_ms.buckets[{i}].count: expected a number ≥ 0, found {}",
                bucket["count"]
            ));
            continue;
        };
        if le <= prev_le {
            p.push(format!("hash_time_ms.buckets[{i}].le: bounds must ascend"));
        }
        if count < prev_count {
            p.push(format!(
                "hash_time_ms.buckets[{i}].count: cumulative counts must not decrease"
            ));
        }
        prev_le = le;
        prev_count = count;
    }
    if prev_le != f64::INFINITY {
        p.push("hash_time_ms.buckets: the last bucket must be \"+Inf\"".into());
    }
}
