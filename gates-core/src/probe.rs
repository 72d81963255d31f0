//! Health / metrics / queue probes over HTTP.
//!
//! Every request carries one end-to-end deadline (connect, send, headers and
//! body), so an endpoint that accepts a connection and never answers costs at
//! most `timeout`. Nothing here panics or retries on its own: a probe returns
//! what it saw ([`Health`], [`Metrics`]) and callers decide.
//!
//! The metrics format is the reference service's JSON (SPEC "The reference
//! service"); a figure the service does not report is `None`, never 0.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::config::{EnvConfig, HealthPolicy};
use crate::event::{Emitter, Level};
use crate::sample::{Bucket, Health, Metrics, Sample};

/// The most a probe reads from one response body.
const BODY_LIMIT: u64 = 4 * 1024 * 1024;

/// An HTTP agent with one end-to-end deadline per request that hands back
/// every status (4xx/5xx are answers, not errors). Build one per probe: no
/// pooled connection outlives a service restart.
pub fn agent(timeout: Duration) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout.max(Duration::from_millis(1))))
        .build();
    ureq::Agent::new_with_config(config)
}

/// An HTTP answer: status code and body text.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Result<Value, String> {
        serde_json::from_str(&self.body).map_err(|e| {
            format!(
                "HTTP {}: body is not JSON ({e}): {}",
                self.status,
                snippet(&self.body)
            )
        })
    }
}

/// `GET url` asking for JSON. `Err` when there was no (readable) answer:
/// refused, timed out, not HTTP.
pub fn get(url: &str, timeout: Duration) -> Result<Answer, String> {
    let mut resp = agent(timeout)
        .get(url)
        .header("Accept", "application/json")
        .call()
        .map_err(|e| describe(url, timeout, &e))?;
    read_answer(url, timeout, &mut resp)
}

/// `POST url` with a body (an image for `/api/dhash/hash`).
pub fn post(
    url: &str,
    content_type: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<Answer, String> {
    let mut resp = agent(timeout)
        .post(url)
        .header("Accept", "application/json")
        .header("Content-Type", content_type)
        .send(body)
        .map_err(|e| describe(url, timeout, &e))?;
    read_answer(url, timeout, &mut resp)
}

fn read_answer(
    url: &str,
    timeout: Duration,
    resp: &mut ureq::http::Response<ureq::Body>,
) -> Result<Answer, String> {
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(BODY_LIMIT)
        .lossy_utf8(true)
        .read_to_string()
        .map_err(|e| describe(url, timeout, &e))?;
    Ok(Answer { status, body })
}

fn describe(url: &str, timeout: Duration, e: &ureq::Error) -> String {
    match e {
        ureq::Error::Timeout(_) => {
            format!(
                "{url}: no answer within {}",
                crate::duration::human(timeout)
            )
        }
        other => format!("{url}: {other}"),
    }
}

fn snippet(text: &str) -> String {
    let t = text.trim();
    if t.chars().count() > 200 {
        format!("{}…", t.chars().take(200).collect::<String>())
    } else {
        t.to_string()
    }
}

/// One health check: 2xx with JSON `"status":"ok"` → [`Health::Ok`]; any other
/// answer → [`Health::NotOk`]; no answer (refused, timeout, not HTTP) →
/// [`Health::Error`].
pub fn probe_health(url: &str, timeout: Duration) -> Health {
    match get(url, timeout) {
        Err(detail) => Health::Error { detail },
        Ok(answer) => classify_health(&answer),
    }
}

/// Classifies a health answer (see [`probe_health`]).
pub fn classify_health(answer: &Answer) -> Health {
    let parsed: Option<Value> = serde_json::from_str(&answer.body).ok();
    let status = parsed
        .as_ref()
        .and_then(|v| v.get("status"))
        .and_then(Value::as_str);
    if answer.is_success() && status == Some("ok") {
        return Health::Ok;
    }
    let why = parsed
        .as_ref()
        .and_then(|v| {
            v.get("reason")
                .or_else(|| v.get("error"))
                .or_else(|| v.get("message"))
        })
        .and_then(Value::as_str);
    let detail = match (status, why) {
        (Some(s), Some(r)) => format!("HTTP {}: status {s:?}: {r}", answer.status),
        (Some(s), None) => format!("HTTP {}: status {s:?}", answer.status),
        (None, _) if parsed.is_none() => {
            format!(
                "HTTP {}: body is not JSON: {}",
                answer.status,
                snippet(&answer.body)
            )
        }
        (None, _) => format!("HTTP {}: no \"status\" field", answer.status),
    };
    Health::NotOk { detail }
}

/// The queue endpoint's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueStatus {
    pub length: f64,
    pub oldest_age_seconds: Option<f64>,
}

/// `GET queue_url` → `{"length": n, "oldest_age_seconds": x|null}`.
pub fn probe_queue(queue_url: &str, timeout: Duration) -> Result<QueueStatus, String> {
    let answer = get(queue_url, timeout)?;
    if !answer.is_success() {
        return Err(format!(
            "{queue_url}: HTTP {}: {}",
            answer.status,
            snippet(&answer.body)
        ));
    }
    let v = answer.json().map_err(|e| format!("{queue_url}: {e}"))?;
    let length = number(v.get("length")).ok_or_else(|| {
        format!(
            "{queue_url}: no numeric \"length\" in {}",
            snippet(&answer.body)
        )
    })?;
    Ok(QueueStatus {
        length,
        oldest_age_seconds: number(v.get("oldest_age_seconds")),
    })
}

/// Reads `/metrics` (JSON) and, when it lacks the low-confidence queue
/// length, the queue endpoint. `Err` when `/metrics` gave no usable answer;
/// a failed queue probe only leaves `low_confidence_queue` at `None`.
pub fn probe_metrics(
    metrics_url: &str,
    queue_url: &str,
    timeout: Duration,
) -> Result<Metrics, String> {
    let started = Instant::now();
    let answer = get(metrics_url, timeout)?;
    if !answer.is_success() {
        return Err(format!(
            "{metrics_url}: HTTP {}: {}",
            answer.status,
            snippet(&answer.body)
        ));
    }
    let v = answer.json().map_err(|e| format!("{metrics_url}: {e}"))?;
    let mut m = parse_metrics(&v).map_err(|e| format!("{metrics_url}: {e}"))?;
    if m.low_confidence_queue.is_none() {
        let left = timeout
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(200));
        if let Ok(q) = probe_queue(queue_url, left) {
            m.low_confidence_queue = Some(q.length);
        }
    }
    Ok(m)
}

/// A number, or a numeric string (some exporters quote large counters).
fn number(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) => n.as_f64().filter(|x| x.is_finite()),
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|x| x.is_finite()),
        _ => None,
    }
}

/// The first of several JSON paths (`"process.memory_percent"`) that holds a number.
fn first_number(v: &Value, paths: &[&str]) -> Option<f64> {
    paths
        .iter()
        .find_map(|p| number(v.pointer(&format!("/{}", p.replace('.', "/")))))
}

/// A histogram bound: a number, or `"+Inf"` / `"Inf"` / `"inf"`.
fn bound(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::String(s) if matches!(s.trim().to_ascii_lowercase().as_str(), "+inf" | "inf") => {
            Some(f64::INFINITY)
        }
        other => number(Some(other)),
    }
}

/// Parses the JSON metrics document (SPEC "The reference service") into
/// [`Metrics`]. Absent or non-numeric figures are `None`. `Err` only when the
/// document is not an object or the histogram is malformed.
pub fn parse_metrics(v: &Value) -> Result<Metrics, String> {
    if !v.is_object() {
        return Err(format!(
            "expected a JSON object, found {}",
            snippet(&v.to_string())
        ));
    }
    let mut m = Metrics {
        requests_total: first_number(v, &["requests_total"]),
        hash_requests_total: first_number(v, &["hash_requests_total"]),
        extraction_failures_total: first_number(v, &["extraction_failures_total"]),
        errors_total: first_number(v, &["errors_total"]),
        low_confidence_queue: first_number(
            v,
            &["low_confidence_queue", "low_confidence_queue.length"],
        ),
        memory_percent: first_number(v, &["process.memory_percent", "memory_percent"]),
        cpu_percent: first_number(v, &["process.cpu_percent", "cpu_percent"]),
        disk_percent: first_number(v, &["disk.disk_percent", "disk_percent"]),
        ..Metrics::default()
    };
    match v.get("hash_time_ms") {
        None | Some(Value::Null) => {}
        Some(Value::Array(raw)) => {
            // Raw observations (a service without a histogram).
            m.hash_time_ms = Some(raw.iter().filter_map(|x| number(Some(x))).collect());
        }
        Some(h @ Value::Object(_)) => m.hash_time_buckets = parse_histogram(h)?,
        Some(other) => {
            return Err(format!(
                "hash_time_ms: expected an object with buckets, found {other}"
            ))
        }
    }
    Ok(m)
}

/// `{"buckets": [{"le": 5, "count": c}, ..., {"le": "+Inf", "count": c}], "count": n, "sum": s}`
/// → buckets sorted by `le`, ending at +Inf (taken from `count` when the
/// list lacks it). `None` when there are no buckets.
fn parse_histogram(h: &Value) -> Result<Option<Vec<Bucket>>, String> {
    let Some(list) = h.get("buckets") else {
        return Ok(None);
    };
    let Some(list) = list.as_array() else {
        return Err("hash_time_ms.buckets: expected an array".into());
    };
    let mut buckets = Vec::with_capacity(list.len() + 1);
    for (i, b) in list.iter().enumerate() {
        let le = bound(b.get("le")).ok_or_else(|| {
            format!("hash_time_ms.buckets[{i}].le: expected a number or \"+Inf\"")
        })?;
        let count = number(b.get("count"))
            .ok_or_else(|| format!("hash_time_ms.buckets[{i}].count: expected a number"))?;
        buckets.push(Bucket { le, count });
    }
    if buckets.is_empty() {
        return Ok(None);
    }
    buckets.sort_by(|a, b| a.le.total_cmp(&b.le));
    if buckets.last().is_some_and(|b| b.le.is_finite()) {
        if let Some(total) = number(h.get("count")) {
            buckets.push(Bucket {
                le: f64::INFINITY,
                count: total,
            });
        }
    }
    Ok(Some(buckets))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// One poll of an environment: health and metrics, probed side by side so
/// a poll costs at most about one `monitor.probe_timeout`.
pub fn poll(env: &EnvConfig) -> Sample {
    let t_ms = now_ms();
    let timeout = env.monitor.probe_timeout;
    let (health, metrics) = std::thread::scope(|s| {
        let m = s.spawn(|| probe_metrics(&env.metrics_url, &env.queue_url, timeout));
        let health = probe_health(&env.health_url, timeout);
        let metrics = m
            .join()
            .unwrap_or_else(|_| Err("the metrics probe panicked".to_string()));
        (health, metrics)
    });
    Sample {
        t_ms,
        health,
        metrics,
    }
}

/// Waits until `policy.checks_required` health checks in a row are OK,
/// `policy.interval` apart, within `policy.timeout`. A failed check resets
/// the count. Each check is a `health.checked` debug event. Returns the
/// number of checks made (the last `checks_required` of them OK).
pub fn wait_healthy(env: &EnvConfig, policy: &HealthPolicy, em: &Emitter) -> anyhow::Result<u32> {
    let required = policy.checks_required.max(1);
    let started = Instant::now();
    let deadline = started + policy.timeout;
    let mut checks = 0u32;
    let mut consecutive = 0u32;
    let mut last: Health;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = env
            .monitor
            .probe_timeout
            .min(left)
            .max(Duration::from_millis(200));
        last = probe_health(&env.health_url, timeout);
        checks += 1;
        if last.is_ok() {
            consecutive += 1;
        } else {
            consecutive = 0;
        }
        let detail = match &last {
            Health::Ok => String::new(),
            Health::NotOk { detail } | Health::Error { detail } => detail.clone(),
        };
        em.emit(
            "health.checked",
            Level::Debug,
            format!(
                "health check {checks}: {} ({consecutive}/{required} in a row)",
                last.label()
            ),
            json!({
                "url": env.health_url, "check": checks, "state": last.label(), "detail": detail,
                "consecutive_ok": consecutive, "required": required,
            }),
        );
        if consecutive >= required {
            return Ok(checks);
        }
        if Instant::now() + policy.interval > deadline {
            break;
        }
        std::thread::sleep(policy.interval);
    }
    let why = match &last {
        Health::Ok => "ok".to_string(),
        Health::NotOk { detail } => format!("not ok: {detail}"),
        Health::Error { detail } => format!("no answer: {detail}"),
    };
    anyhow::bail!(
        "{} not healthy within {}: {consecutive} of {required} consecutive OK checks after {checks} checks; last check {why}",
        env.health_url,
        crate::duration::human(policy.timeout),
    )
}
