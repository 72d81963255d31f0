//! Counters, the hash-time histogram and their two renderings (JSON for jq
//! and the monitor, Prometheus text exposition format 0.0.4).
//!
//! What is counted (all cumulative since the service started):
//! - `requests_total`: every request to an `/api/` endpoint (hash and queue
//!   status), whatever its outcome; `/health` and `/metrics` are not counted,
//!   so probes do not dilute the error rate.
//! - `hash_requests_total`: `POST /api/dhash/hash` requests that got an answer
//!   from the hashing pipeline (200, 422 or 500); a body over the limit (413)
//!   or a full work queue (503) is not a hash attempt.
//! - `extraction_failures_total`: 422 answers (undecodable or empty input,
//!   and the `failure_fraction` fault).
//! - `errors_total`: 5xx answers on `/api/` endpoints (database errors, the
//!   `error_fraction` fault, a full work queue).
//! - `rejected_total`: 413 answers (body over the limit, or an image over the pixel limit).
//! - `low_confidence_total`: hashes that joined the low-confidence queue.
//! - `hash_time_ms`: the time of each hash attempt (200 and 422), from the
//!   moment a hash worker takes the received body to the answer, injected
//!   latency included (a slow upload is not hash time).
//! - `client_timeouts_total`: a request head or body that did not arrive
//!   within its deadline (connection closed, or 408 for a body); a
//!   kept-alive connection closed after idling that long is not counted.
//! - `head_rejected_total`: request heads refused before routing: too large
//!   or too many header lines (431), target too long (414), malformed (400).
//! - `connections_refused_total`: connections over `max_connections` (503).
//!
//! Gauges of the serving machinery (`hashing`, `connections` in JSON):
//! hash workers and how many are busy, hash requests waiting for one, how
//! long every worker has been busy without finishing a hash (the stall that
//! turns `/health` to 503), open connections and bodies being received.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde_json::{json, Value};

/// Upper bounds (ms) of the hash-time histogram; +Inf follows.
pub const BUCKETS_MS: [f64; 10] = [
    5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0,
];

#[derive(Default)]
struct Hist {
    /// Non-cumulative counts per bucket; index 10 is +Inf.
    counts: [u64; 11],
    count: u64,
    sum_ms: f64,
}

#[derive(Default)]
pub struct Metrics {
    pub requests_total: AtomicU64,
    pub hash_requests_total: AtomicU64,
    pub extraction_failures_total: AtomicU64,
    pub errors_total: AtomicU64,
    pub rejected_total: AtomicU64,
    pub low_confidence_total: AtomicU64,
    pub client_timeouts_total: AtomicU64,
    pub head_rejected_total: AtomicU64,
    pub connections_refused_total: AtomicU64,
    hist: Mutex<Hist>,
}

/// A consistent copy of the counters and the histogram.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub requests_total: u64,
    pub hash_requests_total: u64,
    pub extraction_failures_total: u64,
    pub errors_total: u64,
    pub rejected_total: u64,
    pub low_confidence_total: u64,
    pub client_timeouts_total: u64,
    pub head_rejected_total: u64,
    pub connections_refused_total: u64,
    /// Cumulative counts per bound of [`BUCKETS_MS`], then +Inf.
    pub cumulative: [u64; 11],
    pub count: u64,
    pub sum_ms: f64,
}

/// Figures read at render time.
#[derive(Debug, Clone, PartialEq)]
pub struct Gauges {
    pub release: String,
    pub schema_version: i64,
    pub uptime_seconds: f64,
    pub low_confidence_queue: Option<i64>,
    pub oldest_age_seconds: Option<f64>,
    pub cpu_percent: Option<f64>,
    pub memory_rss_bytes: Option<u64>,
    pub memory_percent: Option<f64>,
    pub data_dir_bytes: u64,
    pub disk_percent: Option<f64>,
    pub faults: Vec<&'static str>,
    pub load: Load,
}

/// The serving machinery at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Load {
    pub hash_workers: u64,
    pub hash_workers_busy: u64,
    pub hash_queue_length: u64,
    /// Seconds every worker has been busy without a hash finishing (0 when
    /// a worker is free).
    pub hash_stalled_seconds: f64,
    pub connections_open: u64,
    pub bodies_receiving: u64,
    /// Request body bytes held in memory (received, not yet hashed), in
    /// whole KiB.
    pub bodies_bytes: u64,
}

pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one hash time.
    pub fn observe_ms(&self, ms: f64) {
        let idx = BUCKETS_MS
            .iter()
            .position(|&le| ms <= le)
            .unwrap_or(BUCKETS_MS.len());
        if let Ok(mut h) = self.hist.lock() {
            h.counts[idx] += 1;
            h.count += 1;
            h.sum_ms += ms;
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let (counts, count, sum_ms) = match self.hist.lock() {
            Ok(h) => (h.counts, h.count, h.sum_ms),
            Err(_) => ([0; 11], 0, 0.0),
        };
        let mut cumulative = [0u64; 11];
        let mut acc = 0;
        for (i, c) in counts.iter().enumerate() {
            acc += c;
            cumulative[i] = acc;
        }
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            requests_total: g(&self.requests_total),
            hash_requests_total: g(&self.hash_requests_total),
            extraction_failures_total: g(&self.extraction_failures_total),
            errors_total: g(&self.errors_total),
            rejected_total: g(&self.rejected_total),
            low_confidence_total: g(&self.low_confidence_total),
            client_timeouts_total: g(&self.client_timeouts_total),
            head_rejected_total: g(&self.head_rejected_total),
            connections_refused_total: g(&self.connections_refused_total),
            cumulative,
            count,
            sum_ms,
        }
    }
}

fn r3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// The JSON document of `GET /metrics`.
pub fn render_json(s: &Snapshot, g: &Gauges) -> Value {
    let mut buckets: Vec<Value> = BUCKETS_MS
        .iter()
        .zip(s.cumulative.iter())
        .map(|(le, c)| json!({"le": *le as u64, "count": c}))
        .collect();
    buckets.push(json!({"le": "+Inf", "count": s.cumulative[10]}));
    json!({
        "release": g.release,
        "schema_version": g.schema_version,
        "uptime_seconds": r3(g.uptime_seconds),
        "requests_total": s.requests_total,
        "hash_requests_total": s.hash_requests_total,
        "extraction_failures_total": s.extraction_failures_total,
        "errors_total": s.errors_total,
        "rejected_total": s.rejected_total,
        "low_confidence_total": s.low_confidence_total,
        "client_timeouts_total": s.client_timeouts_total,
        "head_rejected_total": s.head_rejected_total,
        "connections_refused_total": s.connections_refused_total,
        "hashing": {
            "workers": g.load.hash_workers,
            "busy": g.load.hash_workers_busy,
            "queued": g.load.hash_queue_length,
            "stalled_seconds": r3(g.load.hash_stalled_seconds),
        },
        "connections": {
            "open": g.load.connections_open,
            "bodies_receiving": g.load.bodies_receiving,
            "bodies_bytes": g.load.bodies_bytes,
        },
        "hash_time_ms": {"buckets": buckets, "count": s.count, "sum": r3(s.sum_ms)},
        "low_confidence_queue": g.low_confidence_queue,
        "process": {
            "cpu_percent": g.cpu_percent,
            "memory_rss_bytes": g.memory_rss_bytes,
            "memory_percent": g.memory_percent,
        },
        "disk": {"data_dir_bytes": g.data_dir_bytes, "disk_percent": g.disk_percent},
        "faults": g.faults,
    })
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The Prometheus type of a scalar metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MetricType {
    Counter,
    Gauge,
}

impl MetricType {
    fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
        }
    }
}

/// One scalar metric of the exposition: its name, type, help and where its
/// value comes from (`None`: not known, and left out of the text).
struct Descriptor {
    name: &'static str,
    kind: MetricType,
    help: &'static str,
    value: Read,
}

/// Where a scalar metric's value comes from.
type Read = fn(&Snapshot, &Gauges) -> Option<f64>;

const fn metric(
    kind: MetricType,
    name: &'static str,
    help: &'static str,
    value: Read,
) -> Descriptor {
    Descriptor {
        name,
        kind,
        help,
        value,
    }
}

/// Every scalar metric, in the order of the exposition (the monitor and
/// dashboards read these names: renaming one is a breaking change).
const SCALARS: &[Descriptor] = {
    use MetricType::{Counter, Gauge};
    &[
        metric(
            Counter,
            "dhash_requests_total",
            "Requests to /api/ endpoints.",
            |s, _| Some(s.requests_total as f64),
        ),
        metric(
            Counter,
            "dhash_hash_requests_total",
            "Hash attempts.",
            |s, _| Some(s.hash_requests_total as f64),
        ),
        metric(
            Counter,
            "dhash_extraction_failures_total",
            "Hash requests whose input could not be decoded (422).",
            |s, _| Some(s.extraction_failures_total as f64),
        ),
        metric(
            Counter,
            "dhash_errors_total",
            "5xx answers on /api/ endpoints.",
            |s, _| Some(s.errors_total as f64),
        ),
        metric(
            Counter,
            "dhash_rejected_total",
            "Bodies over the size limit (413).",
            |s, _| Some(s.rejected_total as f64),
        ),
        metric(
            Counter,
            "dhash_low_confidence_total",
            "Hashes that joined the low-confidence queue.",
            |s, _| Some(s.low_confidence_total as f64),
        ),
        metric(
            Counter,
            "dhash_client_timeouts_total",
            "Request heads or bodies that missed their deadline.",
            |s, _| Some(s.client_timeouts_total as f64),
        ),
        metric(
            Counter,
            "dhash_head_rejected_total",
            "Request heads refused: too large (431), target too long (414), malformed (400).",
            |s, _| Some(s.head_rejected_total as f64),
        ),
        metric(
            Counter,
            "dhash_connections_refused_total",
            "Connections over the connection limit (503).",
            |s, _| Some(s.connections_refused_total as f64),
        ),
        metric(
            Gauge,
            "dhash_hash_workers",
            "Hash worker threads.",
            |_, g| Some(g.load.hash_workers as f64),
        ),
        metric(
            Gauge,
            "dhash_hash_workers_busy",
            "Hash workers hashing now.",
            |_, g| Some(g.load.hash_workers_busy as f64),
        ),
        metric(
            Gauge,
            "dhash_hash_queue_length",
            "Received hash requests waiting for a worker.",
            |_, g| Some(g.load.hash_queue_length as f64),
        ),
        metric(
            Gauge,
            "dhash_hash_stalled_seconds",
            "Seconds every hash worker has been busy without a hash finishing.",
            |_, g| Some(r3(g.load.hash_stalled_seconds)),
        ),
        metric(
            Gauge,
            "dhash_connections_open",
            "Open client connections.",
            |_, g| Some(g.load.connections_open as f64),
        ),
        metric(
            Gauge,
            "dhash_bodies_receiving",
            "Request bodies being received.",
            |_, g| Some(g.load.bodies_receiving as f64),
        ),
        metric(
            Gauge,
            "dhash_bodies_bytes",
            "Request body bytes held in memory until hashed.",
            |_, g| Some(g.load.bodies_bytes as f64),
        ),
        metric(
            Gauge,
            "dhash_low_confidence_queue",
            "Items in the low-confidence review queue.",
            |_, g| g.low_confidence_queue.map(|v| v as f64),
        ),
        metric(
            Gauge,
            "dhash_uptime_seconds",
            "Seconds since the service started.",
            |_, g| Some(r3(g.uptime_seconds)),
        ),
        metric(
            Gauge,
            "dhash_process_cpu_percent",
            "Process CPU use (100 = one core).",
            |_, g| g.cpu_percent,
        ),
        metric(
            Gauge,
            "dhash_process_memory_rss_bytes",
            "Resident memory of the process.",
            |_, g| g.memory_rss_bytes.map(|v| v as f64),
        ),
        metric(
            Gauge,
            "dhash_process_memory_percent",
            "Resident memory as % of RAM.",
            |_, g| g.memory_percent,
        ),
        metric(
            Gauge,
            "dhash_data_dir_bytes",
            "Bytes of files in the data dir.",
            |_, g| Some(g.data_dir_bytes as f64),
        ),
        metric(
            Gauge,
            "dhash_disk_percent",
            "Used % of the data dir's file system.",
            |_, g| g.disk_percent,
        ),
    ]
};

/// The same figures in the Prometheus text exposition format (0.0.4).
pub fn render_prometheus(s: &Snapshot, g: &Gauges) -> String {
    let mut out = String::new();
    for d in SCALARS {
        if let Some(v) = (d.value)(s, g) {
            let (name, kind, help) = (d.name, d.kind.as_str(), d.help);
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
            ));
        }
    }
    render_histogram(&mut out, s);
    render_build_info(&mut out, g);
    out
}

fn render_histogram(out: &mut String, s: &Snapshot) {
    out.push_str("# HELP dhash_hash_time_ms Time to answer a hash request (ms).\n");
    out.push_str("# TYPE dhash_hash_time_ms histogram\n");
    for (le, c) in BUCKETS_MS.iter().zip(s.cumulative.iter()) {
        out.push_str(&format!("dhash_hash_time_ms_bucket{{le=\"{le}\"}} {c}\n"));
    }
    out.push_str(&format!(
        "dhash_hash_time_ms_bucket{{le=\"+Inf\"}} {}\n",
        s.cumulative[10]
    ));
    out.push_str(&format!("dhash_hash_time_ms_sum {}\n", r3(s.sum_ms)));
    out.push_str(&format!("dhash_hash_time_ms_count {}\n", s.count));
}

fn render_build_info(out: &mut String, g: &Gauges) {
    out.push_str("# HELP dhash_build_info The serving release.\n# TYPE dhash_build_info gauge\n");
    out.push_str(&format!(
        "dhash_build_info{{release=\"{}\",schema_version=\"{}\"}} 1\n",
        esc(&g.release),
        g.schema_version
    ));
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn gauges() -> Gauges {
        Gauges {
            release: "v1-abcdef01".into(),
            schema_version: 2,
            uptime_seconds: 1.5,
            low_confidence_queue: Some(3),
            oldest_age_seconds: None,
            cpu_percent: Some(1.0),
            memory_rss_bytes: Some(1000),
            memory_percent: Some(0.1),
            data_dir_bytes: 10,
            disk_percent: Some(50.0),
            faults: vec![],
            load: Load {
                hash_workers: 8,
                hash_workers_busy: 8,
                hash_queue_length: 3,
                hash_stalled_seconds: 1.25,
                connections_open: 12,
                bodies_receiving: 2,
                bodies_bytes: 4096,
            },
        }
    }

    #[test]
    fn histogram_is_cumulative_and_ends_at_inf() {
        let m = Metrics::new();
        for ms in [1.0, 5.0, 7.0, 300.0, 9000.0] {
            m.observe_ms(ms);
        }
        let s = m.snapshot();
        assert_eq!(s.cumulative[0], 2, "1 and 5 are ≤ 5");
        assert_eq!(s.cumulative[1], 3);
        assert_eq!(s.cumulative[6], 4, "300 ≤ 500");
        assert_eq!(s.cumulative[10], 5);
        let j = render_json(&s, &gauges());
        let b = j["hash_time_ms"]["buckets"].as_array().unwrap();
        assert_eq!(b.len(), 11);
        assert_eq!(b[0], json!({"le": 5, "count": 2}));
        assert_eq!(b[10], json!({"le": "+Inf", "count": 5}));
        assert_eq!(j["hash_time_ms"]["count"], 5);
        assert_eq!(j["hash_time_ms"]["sum"], 9313.0);
    }

    #[test]
    fn prometheus_text_has_types_and_buckets() {
        let m = Metrics::new();
        m.observe_ms(12.0);
        inc(&m.requests_total);
        let t = render_prometheus(&m.snapshot(), &gauges());
        assert!(
            t.contains("# TYPE dhash_requests_total counter\ndhash_requests_total 1\n"),
            "{t}"
        );
        assert!(
            t.contains("dhash_hash_time_ms_bucket{le=\"25\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains("dhash_hash_time_ms_bucket{le=\"+Inf\"} 1\n"),
            "{t}"
        );
        assert!(t.contains("dhash_low_confidence_queue 3\n"), "{t}");
        assert!(t.contains("dhash_hash_workers_busy 8\n"), "{t}");
        assert!(t.contains("dhash_hash_stalled_seconds 1.25\n"), "{t}");
        assert!(
            t.contains("# TYPE dhash_client_timeouts_total counter\n"),
            "{t}"
        );
        let j = render_json(&m.snapshot(), &gauges());
        assert_eq!(j["hashing"]["queued"], 3);
        assert_eq!(j["connections"]["bodies_receiving"], 2);
        assert_eq!(j["connections"]["bodies_bytes"], 4096);
        assert_eq!(j["head_rejected_total"], 0);
        assert!(
            t.contains("dhash_build_info{release=\"v1-abcdef01\",schema_version=\"2\"} 1"),
            "{t}"
        );
    }
}
