//! Telemetry samples: what one poll of an environment read. Gate evaluation
//! takes these in; the monitor produces them live, replay reads them back.

use serde::{Deserialize, Serialize};

use crate::config::Metric;

/// The outcome of the health probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum Health {
    /// 2xx with `"status":"ok"`.
    Ok,
    /// The service answered, but not OK (non-2xx, or a status other than ok).
    NotOk { detail: String },
    /// No answer: refused, timed out, unreadable. Counts as a failed check.
    Error { detail: String },
}

impl Health {
    pub fn is_ok(&self) -> bool {
        matches!(self, Health::Ok)
    }
    pub fn label(&self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::NotOk { .. } => "not-ok",
            Health::Error { .. } => "error",
        }
    }
}

/// One cumulative histogram bucket: observations ≤ `le` (ms); the last is +Inf.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    pub le: f64,
    pub count: f64,
}

/// Figures read from the metrics (and queue) endpoints. Counters are
/// cumulative since the service started; a figure the service did not
/// report is `None` (no data), never 0.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub requests_total: Option<f64>,
    pub hash_requests_total: Option<f64>,
    pub extraction_failures_total: Option<f64>,
    pub errors_total: Option<f64>,
    /// Cumulative hash-time histogram (ms), `le` ascending, ending at +Inf.
    pub hash_time_buckets: Option<Vec<Bucket>>,
    /// Raw hash-time observations (ms) since the previous sample, for a
    /// service that exposes no histogram (or recorded telemetry).
    pub hash_time_ms: Option<Vec<f64>>,
    pub low_confidence_queue: Option<f64>,
    pub memory_percent: Option<f64>,
    pub cpu_percent: Option<f64>,
    pub disk_percent: Option<f64>,
}

impl Metrics {
    /// A counter or gauge by name (not the histogram).
    pub fn value(&self, m: Metric) -> Option<f64> {
        match m {
            Metric::RequestsTotal => self.requests_total,
            Metric::HashRequestsTotal => self.hash_requests_total,
            Metric::ExtractionFailuresTotal => self.extraction_failures_total,
            Metric::ErrorsTotal => self.errors_total,
            Metric::LowConfidenceQueue => self.low_confidence_queue,
            Metric::MemoryPercent => self.memory_percent,
            Metric::CpuPercent => self.cpu_percent,
            Metric::DiskPercent => self.disk_percent,
            Metric::Health | Metric::HashTimeMs => None,
        }
    }
}

/// One poll. `t_ms` is milliseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub t_ms: i64,
    pub health: Health,
    /// `Err` when the metrics probe failed (refused, timeout, unparsable).
    pub metrics: Result<Metrics, String>,
}
