//! Prometheus as a metrics source (issue 17): the PromQL equivalents of the
//! built-in gates, and a client of the Prometheus HTTP API (`/api/v1/query`,
//! `/api/v1/query_range`) whose failures map to the gate states that already
//! exist.
//!
//! Error mapping, so a gate read through Prometheus is judged like one read
//! from `/metrics`:
//! - Prometheus unreachable, no answer within the timeout, a query it refuses
//!   (`bad_data`, a syntax error), a query it could not run (`execution`,
//!   `timeout`, `canceled`), a body that is not its JSON, or a vector of more
//!   than one series where a gate wants one figure → [`Figure::Error`]
//!   (gate state `error`, counted by `errors_to_violate`);
//! - an empty vector (nothing scraped matches) or a value that is not a
//!   number (`NaN` from `0 / 0`: no traffic in the window) →
//!   [`Figure::NoData`] (gate state `no-data`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::config::{GateKind, GateSpec, Metric};

/// The job name the shipped scrape configuration gives the service's targets.
pub const JOB: &str = "dhash";

/// The most a Prometheus answer may hold (a wide `query_range`).
const BODY_LIMIT: u64 = 16 * 1024 * 1024;

/// The name under which the reference service exports a figure in the
/// Prometheus text format (`/metrics?format=prometheus`).
pub fn metric_name(m: Metric) -> Option<&'static str> {
    Some(match m {
        Metric::RequestsTotal => "dhash_requests_total",
        Metric::HashRequestsTotal => "dhash_hash_requests_total",
        Metric::ExtractionFailuresTotal => "dhash_extraction_failures_total",
        Metric::ErrorsTotal => "dhash_errors_total",
        Metric::HashTimeMs => "dhash_hash_time_ms_bucket",
        Metric::LowConfidenceQueue => "dhash_low_confidence_queue",
        Metric::MemoryPercent => "dhash_process_memory_percent",
        Metric::CpuPercent => "dhash_process_cpu_percent",
        Metric::DiskPercent => "dhash_disk_percent",
        // /health is not a metric: Prometheus sees only `up`.
        Metric::Health => return None,
    })
}

/// How a figure is split: one per environment (what a gate judges), one per
/// instance, or one per release (the canary against the baseline while a
/// fleet is mixed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Env,
    Instance,
    /// Joined on `dhash_build_info{release}` as it is at the query's time:
    /// an instance switched inside the window counts wholly for its new
    /// release (the window of a wave's gates starts after its switch).
    Release,
}

impl Split {
    fn by(self) -> &'static str {
        match self {
            Split::Env => "env",
            Split::Instance => "env, instance",
            Split::Release => "env, release",
        }
    }
}

/// Which series a query reads: label matchers (`job="dhash",env="fleet"`,
/// any extra such as `instance=~"127.0.0.1:301[01]"`) and the split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub matchers: String,
    pub split: Split,
}

impl Scope {
    /// Every target of one environment of the shipped scrape configuration.
    pub fn env(env: &str) -> Scope {
        Scope {
            matchers: format!("job=\"{JOB}\",env=\"{}\"", escape_label(env)),
            split: Split::Env,
        }
    }

    /// The same scope with another split.
    pub fn split(mut self, split: Split) -> Scope {
        self.split = split;
        self
    }

    /// One series selector, joined on the release label when split by release.
    fn series(&self, inner: String) -> String {
        match self.split {
            Split::Release => format!(
                "({inner} * on (job, instance) group_left (release) dhash_build_info{{{}}})",
                self.matchers
            ),
            _ => inner,
        }
    }
}

/// A label value inside double quotes.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"")
}

/// A PromQL range (`10m`, `90s`, `1h30m`, `1500ms`).
pub fn range(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    let (h, m, s) = (s / 3600, s % 3600 / 60, s % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// The PromQL expression whose value is the gate's figure (no comparison),
/// the same figure the monitor computes from `/metrics`:
/// - ratio: percent of counter increases over the window;
/// - percentile: `histogram_quantile` of bucket increases over the window;
/// - instant: the gauge now (the highest of the scope's instances);
/// - sustained: the gauge's lowest value over the window (above the
///   threshold only if every sample was: the `for:` of an alert).
///
/// `None` for a consecutive (health) gate: Prometheus sees only whether a
/// scrape answered (`up`), not `/health`'s verdict.
pub fn gate_expr(g: &GateSpec, scope: &Scope) -> Option<String> {
    let by = scope.split.by();
    let sel = &scope.matchers;
    let w = range(g.window);
    let name = metric_name(g.metric)?;
    Some(match g.kind {
        GateKind::Consecutive => return None,
        GateKind::Ratio => {
            let den = metric_name(g.denominator?)?;
            let inc = |m: &str| scope.series(format!("increase({m}{{{sel}}}[{w}])"));
            format!(
                "sum by ({by}) ({}) / sum by ({by}) ({}) * 100",
                inc(name),
                inc(den)
            )
        }
        GateKind::Percentile => format!(
            "histogram_quantile({}, sum by ({by}, le) ({}))",
            num(g.quantile),
            scope.series(format!("increase({name}{{{sel}}}[{w}])"))
        ),
        GateKind::Instant => format!(
            "max by ({by}) ({})",
            scope.series(format!("{name}{{{sel}}}"))
        ),
        GateKind::Sustained => format!(
            "max by ({by}) ({})",
            scope.series(format!("min_over_time({name}{{{sel}}}[{w}])"))
        ),
    })
}

/// The expression of a health gate's alert: each instance whose scrape
/// failed (`up == 0`), one alert per instance; the rule's `for:` makes it
/// "in a row".
pub fn health_expr(scope: &Scope) -> String {
    format!("{} == 0", scope.series(format!("up{{{}}}", scope.matchers)))
}

/// A number as PromQL and the rules files write it (`5`, `0.95`, `2000`).
pub fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// The alert a gate becomes in `deploy/prometheus/rules.yml`.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRule {
    pub alert: String,
    pub expr: String,
    /// The rule's `for:` (a health gate's run of failed scrapes, a
    /// sustained gate's window); zero when the window is in the expression.
    pub for_: Duration,
    pub labels: Vec<(&'static str, String)>,
    pub summary: String,
}

/// `extraction_failure_rate` → `DhashExtractionFailureRate`.
pub fn alert_name(gate: &str) -> String {
    let mut out = String::from("Dhash");
    for word in gate.split(|c: char| !c.is_ascii_alphanumeric()) {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            out.push(first.to_ascii_uppercase());
            out.extend(chars);
        }
    }
    out
}

/// The alerting rule equivalent to a gate of one environment: it fires
/// exactly when the gate would be violated, given targets scraped every
/// `scrape_interval` and rules evaluated as often. A health gate's
/// "more than N failed checks in a row" is N+1 failed scrapes in a row:
/// `up == 0` held for N intervals.
pub fn alert_rule(g: &GateSpec, env: &str, scrape_interval: Duration) -> AlertRule {
    let scope = Scope::env(env);
    let t = num(g.threshold);
    let (expr, for_) = match g.kind {
        GateKind::Consecutive => (
            health_expr(&scope),
            scrape_interval * (g.threshold.max(0.0).floor() as u32),
        ),
        GateKind::Sustained => {
            let name = metric_name(g.metric).unwrap_or("up");
            let by = scope.split.by();
            let sel = &scope.matchers;
            (format!("max by ({by}) ({name}{{{sel}}}) > {t}"), g.window)
        }
        _ => (
            format!("{} > {t}", gate_expr(g, &scope).unwrap_or_default()),
            Duration::ZERO,
        ),
    };
    let severity = match g.action {
        crate::config::Action::AutoRollback => "critical",
        crate::config::Action::Alert => "warning",
        crate::config::Action::Shadow => "info",
    };
    let what = g
        .description
        .clone()
        .unwrap_or_else(|| format!("{} above {t} {}", g.name, g.unit));
    AlertRule {
        alert: alert_name(&g.name),
        expr,
        for_,
        labels: vec![
            ("env", env.to_string()),
            ("gate", g.name.clone()),
            ("action", g.action.as_str().to_string()),
            ("severity", severity.to_string()),
        ],
        summary: format!("{env}: {what}"),
    }
}

/// A YAML single-quoted scalar.
fn yaml_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `deploy/prometheus/rules.yml`: one group per environment of the gates
/// file, one alert per gate, in the file's order.
pub fn alerting_rules(gates: &crate::config::GatesFile, scrape_interval: Duration) -> String {
    let mut out = String::from(
        "# The shipped quality gates (quality-gates-config.json) as Prometheus alerting\n\
         # rules: each fires exactly when its gate would be violated, so a team that\n\
         # runs Alertmanager gets the same alerts with no monitor running.\n\
         # Generated by gates_core::promql::alerting_rules; a test fails when this\n\
         # file and the gates differ (UPDATE_PROMETHEUS_RULES=1 rewrites it).\n\
         groups:\n",
    );
    for (env, g) in &gates.environments {
        out.push_str(&format!(
            "  - name: dhash-quality-gates-{env}\n    rules:\n"
        ));
        for gate in &g.gates {
            let r = alert_rule(gate, env, scrape_interval);
            out.push_str(&format!("      - alert: {}\n", r.alert));
            out.push_str(&format!("        expr: {}\n", yaml_str(&r.expr)));
            if !r.for_.is_zero() {
                out.push_str(&format!("        for: {}\n", range(r.for_)));
            }
            out.push_str("        labels:\n");
            for (k, v) in &r.labels {
                out.push_str(&format!("          {k}: {}\n", yaml_str(v)));
            }
            out.push_str("        annotations:\n");
            out.push_str(&format!("          summary: {}\n", yaml_str(&r.summary)));
        }
    }
    out
}

/// A Prometheus server as the topology names it.
#[derive(Debug, Clone, PartialEq)]
pub struct Client {
    /// Base URL, e.g. `http://127.0.0.1:9090` (no trailing slash).
    pub url: String,
    /// The most one query may take, end to end; also sent as the query's
    /// own `timeout` so Prometheus gives up at the same time.
    pub timeout: Duration,
}

/// `environments.<env>.prometheus` as written: `{"url": "http://127.0.0.1:9090", "timeout": "5s"}`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub url: String,
    #[serde(default)]
    pub timeout: Option<Value>,
}

/// The default query timeout: the probes' own default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Validates an environment's `prometheus` (absent: no Prometheus source).
pub fn resolve_server(
    file: &std::path::Path,
    path: &str,
    raw: &Option<RawServer>,
) -> Result<Option<Client>, crate::config::ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let url = raw.url.trim();
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
        return Err(crate::config::ConfigError::new(
            file,
            format!("{path}.url"),
            format!("expected an http:// or https:// URL of a Prometheus server, found {url:?}"),
        ));
    }
    let timeout = match &raw.timeout {
        None | Some(Value::Null) => DEFAULT_TIMEOUT,
        Some(v) => crate::config::duration_in(
            file,
            &format!("{path}.timeout"),
            v,
            1.0,
            "seconds",
            crate::config::limits::PROBE_TIMEOUT,
        )?,
    };
    Ok(Some(Client::new(url, timeout)))
}

/// Shown as its URL without credentials (an environment's settings are
/// printed in plans and events).
impl serde::Serialize for Client {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Client", 2)?;
        st.serialize_field("url", &self.shown_url())?;
        st.serialize_field("timeout", &crate::duration::human(self.timeout))?;
        st.end()
    }
}

/// Why a query gave no figure.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PromError {
    /// Refused connection, DNS, TLS: no answer at all.
    #[error("Prometheus at {url} unreachable: {detail}")]
    Unreachable { url: String, detail: String },
    /// No answer within the client's timeout.
    #[error("Prometheus at {url}: no answer within {}", crate::duration::human(*.timeout))]
    Timeout { url: String, timeout: Duration },
    /// Prometheus answered with an error (`bad_data`: the query does not
    /// parse; `execution`, `timeout`, `canceled`: it could not run it).
    #[error("Prometheus refused the query ({error_type}, HTTP {status}): {error}")]
    Query {
        status: u16,
        error_type: String,
        error: String,
    },
    /// An answer that is not Prometheus's API JSON.
    #[error("Prometheus at {url}: unexpected answer (HTTP {status}): {detail}")]
    Malformed {
        url: String,
        status: u16,
        detail: String,
    },
}

/// One series of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub labels: BTreeMap<String, String>,
    pub t_ms: i64,
    pub value: f64,
}

/// One series of a range query.
#[derive(Debug, Clone, PartialEq)]
pub struct RangeSeries {
    pub labels: BTreeMap<String, String>,
    /// (milliseconds since the epoch, value), oldest first.
    pub values: Vec<(i64, f64)>,
}

/// A gate figure read through PromQL, in the states the evaluator knows.
#[derive(Debug, Clone, PartialEq)]
pub enum Figure {
    Value(f64),
    NoData(String),
    Error(String),
}

impl Client {
    pub fn new(url: &str, timeout: Duration) -> Client {
        Client {
            url: url.trim_end_matches('/').to_string(),
            timeout,
        }
    }

    /// `GET /api/v1/query` at `at_ms` (now when `None`): the instant vector
    /// (a scalar result is one series without labels).
    pub fn query(&self, expr: &str, at_ms: Option<i64>) -> Result<Vec<Point>, PromError> {
        let mut params = vec![("query", expr.to_string())];
        if let Some(t) = at_ms {
            params.push(("time", seconds(t)));
        }
        let data = self.call("query", &params)?;
        parse_instant(&data).map_err(|detail| self.malformed(200, detail))
    }

    /// `GET /api/v1/query_range` from `start_ms` to `end_ms` every `step`
    /// (replay and reports).
    pub fn query_range(
        &self,
        expr: &str,
        start_ms: i64,
        end_ms: i64,
        step: Duration,
    ) -> Result<Vec<RangeSeries>, PromError> {
        let step = step.max(Duration::from_millis(1)).as_secs_f64();
        let params = [
            ("query", expr.to_string()),
            ("start", seconds(start_ms)),
            ("end", seconds(end_ms)),
            ("step", format!("{step}")),
        ];
        let data = self.call("query_range", &params)?;
        parse_matrix(&data).map_err(|detail| self.malformed(200, detail))
    }

    /// One gate figure: the query's single series, mapped to a state
    /// (see the module's error mapping).
    pub fn figure(&self, expr: &str, at_ms: Option<i64>) -> Figure {
        match self.query(expr, at_ms) {
            Err(e) => Figure::Error(e.to_string()),
            Ok(points) => figure_of(&points),
        }
    }

    /// The URL as it may be shown: without `user:password@`.
    pub fn shown_url(&self) -> String {
        let Some((scheme, rest)) = self.url.split_once("://") else {
            return self.url.clone();
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        match authority.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://{host}{path}"),
            None => self.url.clone(),
        }
    }

    fn malformed(&self, status: u16, detail: String) -> PromError {
        PromError::Malformed {
            url: self.shown_url(),
            status,
            detail,
        }
    }

    /// Calls `/api/v1/<endpoint>` and returns its `data`, or the error the
    /// answer names.
    fn call(&self, endpoint: &str, params: &[(&str, String)]) -> Result<Value, PromError> {
        let url = format!("{}/api/v1/{endpoint}", self.url);
        let mut req = crate::probe::agent(self.timeout)
            .get(&url)
            .header("Accept", "application/json")
            .query("timeout", format!("{}ms", self.timeout.as_millis().max(1)));
        for (k, v) in params {
            req = req.query(*k, v);
        }
        let mut resp = req.call().map_err(|e| self.transport(&e))?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(BODY_LIMIT)
            .lossy_utf8(true)
            .read_to_string()
            .map_err(|e| self.transport(&e))?;
        answer(status, &body).map_err(|e| match e {
            AnswerError::Query(q) => q,
            AnswerError::Malformed(detail) => self.malformed(status, detail),
        })
    }

    fn transport(&self, e: &ureq::Error) -> PromError {
        match e {
            ureq::Error::Timeout(_) => PromError::Timeout {
                url: self.shown_url(),
                timeout: self.timeout,
            },
            other => PromError::Unreachable {
                url: self.shown_url(),
                detail: other.to_string(),
            },
        }
    }
}

/// The gates of a watch that read their figure through Prometheus, judged
/// apart from the polled ones: a watch keeps its usual [`Evaluator`] for
/// the probe gates (from [`PromGates::split`]) and asks this one at each
/// poll, so each gate's runs of errors and no-data count once.
///
/// [`Evaluator`]: crate::gates::Evaluator
#[derive(Debug, Clone)]
pub struct PromGates {
    evaluator: crate::gates::Evaluator,
    client: Option<Client>,
}

impl PromGates {
    /// Splits `gates` into the probe gates and the Prometheus ones. A
    /// Prometheus gate in an environment that names no server is refused
    /// here, before the watch starts (it could never be judged).
    pub fn split(
        env: &crate::config::EnvConfig,
        gates: Vec<GateSpec>,
    ) -> Result<(Vec<GateSpec>, PromGates), String> {
        let (prom, probe): (Vec<GateSpec>, Vec<GateSpec>) =
            gates.into_iter().partition(|g| g.promql().is_some());
        if let (Some(g), None) = (prom.first(), &env.prometheus) {
            return Err(format!(
                "gate {:?} reads \"source\": \"prometheus\" but environment {:?} names no Prometheus server: add environments.{}.prometheus {{\"url\": ...}} to environments.json",
                g.name, env.name, env.name
            ));
        }
        let client = if prom.is_empty() {
            None
        } else {
            env.prometheus.clone()
        };
        let evaluator = crate::gates::Evaluator::new(prom);
        Ok((probe, PromGates { evaluator, client }))
    }

    pub fn is_empty(&self) -> bool {
        self.evaluator.gates().is_empty()
    }

    pub fn gates(&self) -> &[GateSpec] {
        self.evaluator.gates()
    }

    /// Queries every Prometheus gate at `t_ms` and judges its figure.
    pub fn poll(&mut self, t_ms: i64) -> Vec<crate::gates::Decision> {
        let Some(client) = self.client.clone() else {
            return Vec::new();
        };
        let queries: Vec<String> = self
            .evaluator
            .gates()
            .iter()
            .map(|g| g.promql().unwrap_or_default().to_string())
            .collect();
        queries
            .iter()
            .enumerate()
            .filter_map(|(i, q)| {
                let figure = client.figure(q, Some(t_ms));
                self.evaluator.observe_figure(i, &figure, t_ms)
            })
            .collect()
    }
}

/// The `source` field of a gate decision's event: `"prometheus"` for a
/// figure read through PromQL (only [`crate::gates::Evaluator::observe_figure`]
/// gives a [`crate::gates::Reason::Figure`]), `"probe"` for one judged from
/// the service's `/health` and `/metrics`.
pub fn decision_source(d: &crate::gates::Decision) -> &'static str {
    use crate::gates::Reason;
    let mut reason = &d.reason;
    // A run of errors or no-data wraps the figure's own reason.
    while let Reason::InARow { inner, .. } = reason {
        reason = inner;
    }
    match reason {
        Reason::Figure(_) => "prometheus",
        _ => "probe",
    }
}

/// `--replay` and `--sweep` judge recorded `/metrics` samples; a recording
/// holds no Prometheus figures, so a gate that reads Prometheus cannot be
/// replayed. It is refused by name (a usage error), never silently judged
/// from the recorded `/metrics` instead.
pub fn refuse_replay(gates: &[GateSpec]) -> Result<(), String> {
    let prom: Vec<&str> = gates
        .iter()
        .filter(|g| g.promql().is_some())
        .map(|g| g.name.as_str())
        .collect();
    match prom.as_slice() {
        [] => Ok(()),
        names => Err(format!(
            "gate(s) {} read \"source\": \"prometheus\", whose figures a recording does not hold: a replay cannot judge them (and will not judge them from the recorded /metrics instead); replay a gates file without them (--config)",
            names.join(", ")
        )),
    }
}

enum AnswerError {
    Query(PromError),
    Malformed(String),
}

/// The `data` of a `{"status":"success"}` answer, or the error of a
/// `{"status":"error","errorType":…,"error":…}` one.
fn answer(status: u16, body: &str) -> Result<Value, AnswerError> {
    let v: Value = serde_json::from_str(body)
        .map_err(|e| AnswerError::Malformed(format!("not JSON ({e}): {}", snippet(body))))?;
    match v.get("status").and_then(Value::as_str) {
        Some("success") => v
            .get("data")
            .cloned()
            .ok_or_else(|| AnswerError::Malformed("success without data".into())),
        Some("error") => {
            let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            Err(AnswerError::Query(PromError::Query {
                status,
                error_type: text("errorType"),
                error: text("error"),
            }))
        }
        _ => Err(AnswerError::Malformed(format!(
            "no \"status\": {}",
            snippet(body)
        ))),
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

/// Milliseconds since the epoch as the API's seconds.
fn seconds(t_ms: i64) -> String {
    format!("{}.{:03}", t_ms.div_euclid(1000), t_ms.rem_euclid(1000))
}

/// `[<seconds>, "<value>"]` → (ms, value); the value may be `NaN`, `+Inf`.
fn sample_pair(v: &Value) -> Result<(i64, f64), String> {
    let pair = v.as_array().filter(|a| a.len() == 2);
    let (t, x) = match pair {
        Some(a) => (a[0].as_f64(), a[1].as_str()),
        None => (None, None),
    };
    let (Some(t), Some(x)) = (t, x) else {
        return Err(format!("expected [time, \"value\"], found {v}"));
    };
    let value = x
        .parse::<f64>()
        .map_err(|_| format!("value {x:?} is not a number"))?;
    Ok(((t * 1000.0).round() as i64, value))
}

fn labels(v: &Value) -> BTreeMap<String, String> {
    v.get("metric")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn parse_instant(data: &Value) -> Result<Vec<Point>, String> {
    let kind = data.get("resultType").and_then(Value::as_str);
    let result = data.get("result");
    match (kind, result) {
        (Some("vector"), Some(Value::Array(items))) => items
            .iter()
            .map(|item| {
                let (t_ms, value) = sample_pair(item.get("value").unwrap_or(&Value::Null))?;
                Ok(Point {
                    labels: labels(item),
                    t_ms,
                    value,
                })
            })
            .collect(),
        (Some("scalar"), Some(pair)) => {
            let (t_ms, value) = sample_pair(pair)?;
            Ok(vec![Point {
                labels: BTreeMap::new(),
                t_ms,
                value,
            }])
        }
        _ => Err(format!(
            "expected an instant vector or a scalar, found resultType {kind:?}"
        )),
    }
}

fn parse_matrix(data: &Value) -> Result<Vec<RangeSeries>, String> {
    let kind = data.get("resultType").and_then(Value::as_str);
    let Some(Value::Array(items)) = data.get("result").filter(|_| kind == Some("matrix")) else {
        return Err(format!("expected a matrix, found resultType {kind:?}"));
    };
    items
        .iter()
        .map(|item| {
            let values = item
                .get("values")
                .and_then(Value::as_array)
                .map(|vs| vs.iter().map(sample_pair).collect::<Result<Vec<_>, _>>())
                .unwrap_or_else(|| Ok(Vec::new()))?;
            Ok(RangeSeries {
                labels: labels(item),
                values,
            })
        })
        .collect()
}

/// A gate wants one figure: one series with a number.
pub fn figure_of(points: &[Point]) -> Figure {
    match points {
        [] => Figure::NoData("the query returned an empty vector (no series matched)".into()),
        [p] if p.value.is_finite() => Figure::Value(p.value),
        [p] => Figure::NoData(format!(
            "the query's value is {} (no traffic in the window)",
            p.value
        )),
        many => Figure::Error(format!(
            "the query returned {} series where a gate needs one; aggregate it (sum by, max by)",
            many.len()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_read_as_promql_durations() {
        let got: Vec<String> = [600, 90, 5400, 0, 3600]
            .iter()
            .map(|s| range(Duration::from_secs(*s)))
            .chain([range(Duration::from_millis(1500))])
            .collect();
        assert_eq!(got, ["10m", "1m30s", "1h30m", "0s", "1h", "1500ms"]);
    }

    #[test]
    fn answers_map_to_figures() {
        let ok = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"env":"x"},"value":[1700000000.5,"6.25"]}]}}"#;
        let data = answer(200, ok).ok().expect("a success answer");
        let points = parse_instant(&data).expect("a vector");
        assert_eq!(points[0].t_ms, 1_700_000_000_500);
        assert_eq!(figure_of(&points), Figure::Value(6.25));
        let nan = r#"{"resultType":"vector","result":[{"metric":{},"value":[1,"NaN"]}]}"#;
        let nan: Value = serde_json::from_str(nan).expect("json");
        let f = figure_of(&parse_instant(&nan).expect("a vector"));
        assert!(matches!(f, Figure::NoData(_)), "{f:?}");
        assert!(matches!(figure_of(&[]), Figure::NoData(_)));
        let bad = r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        assert!(matches!(
            answer(400, bad),
            Err(AnswerError::Query(PromError::Query { status: 400, .. }))
        ));
        assert!(matches!(
            answer(502, "<html>bad gateway</html>"),
            Err(AnswerError::Malformed(_))
        ));
    }

    #[test]
    fn shown_url_drops_credentials() {
        let c = Client::new(
            "https://user:s3cret@prom.example:9090/",
            Duration::from_secs(1),
        );
        assert_eq!(c.shown_url(), "https://prom.example:9090");
        assert_eq!(c.url, "https://user:s3cret@prom.example:9090");
    }
}
