//! Recorded telemetry: the samples a live monitor polled, as CSV, read back by
//! `--replay` (CSV, or JSON lines with the same field names). Floats are
//! written in their shortest round-trip form, so a replay feeds the evaluator
//! bit-identical samples and reproduces the live decisions exactly.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use gates_core::sample::{Bucket, Health, Metrics, Sample};
use serde::{Deserialize, Serialize};

/// One CSV row / JSON object. Empty cells are absent figures (no data).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub t_ms: i64,
    /// ok, not-ok or error.
    pub health: String,
    #[serde(default)]
    pub health_detail: Option<String>,
    /// Set when the metrics probe failed; the figures are then empty.
    #[serde(default)]
    pub metrics_error: Option<String>,
    #[serde(default)]
    pub requests_total: Option<f64>,
    #[serde(default)]
    pub hash_requests_total: Option<f64>,
    #[serde(default)]
    pub extraction_failures_total: Option<f64>,
    #[serde(default)]
    pub errors_total: Option<f64>,
    #[serde(default)]
    pub low_confidence_queue: Option<f64>,
    #[serde(default)]
    pub memory_percent: Option<f64>,
    #[serde(default)]
    pub cpu_percent: Option<f64>,
    #[serde(default)]
    pub disk_percent: Option<f64>,
    /// Cumulative histogram `le:count;le:count;...;inf:count`.
    #[serde(default)]
    pub hash_time_buckets: Option<String>,
    /// Raw observations since the previous row, `a;b;c` (ms).
    #[serde(default)]
    pub hash_time_ms: Option<String>,
}

pub const HEADER: &[&str] = &[
    "t_ms",
    "health",
    "health_detail",
    "metrics_error",
    "requests_total",
    "hash_requests_total",
    "extraction_failures_total",
    "errors_total",
    "low_confidence_queue",
    "memory_percent",
    "cpu_percent",
    "disk_percent",
    "hash_time_buckets",
    "hash_time_ms",
];

impl Row {
    pub fn from_sample(s: &Sample) -> Row {
        let (health, health_detail) = match &s.health {
            Health::Ok => ("ok", None),
            Health::NotOk { detail } => ("not-ok", Some(detail.clone())),
            Health::Error { detail } => ("error", Some(detail.clone())),
        };
        let mut row = Row {
            t_ms: s.t_ms,
            health: health.into(),
            health_detail,
            ..Row::default()
        };
        match &s.metrics {
            Err(e) => row.metrics_error = Some(e.clone()),
            Ok(m) => {
                row.requests_total = m.requests_total;
                row.hash_requests_total = m.hash_requests_total;
                row.extraction_failures_total = m.extraction_failures_total;
                row.errors_total = m.errors_total;
                row.low_confidence_queue = m.low_confidence_queue;
                row.memory_percent = m.memory_percent;
                row.cpu_percent = m.cpu_percent;
                row.disk_percent = m.disk_percent;
                row.hash_time_buckets = m.hash_time_buckets.as_ref().map(|b| {
                    b.iter()
                        .map(|x| format!("{}:{}", x.le, x.count))
                        .collect::<Vec<_>>()
                        .join(";")
                });
                row.hash_time_ms = m.hash_time_ms.as_ref().map(|o| {
                    o.iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join(";")
                });
            }
        }
        row
    }

    pub fn to_sample(&self) -> anyhow::Result<Sample> {
        let detail = || self.health_detail.clone().unwrap_or_default();
        let health = match self.health.as_str() {
            "ok" => Health::Ok,
            "not-ok" => Health::NotOk { detail: detail() },
            "error" => Health::Error { detail: detail() },
            other => bail!("health must be ok, not-ok or error, found {other:?}"),
        };
        let metrics = match &self.metrics_error {
            Some(e) if !e.is_empty() => Err(e.clone()),
            _ => Ok(Metrics {
                requests_total: self.requests_total,
                hash_requests_total: self.hash_requests_total,
                extraction_failures_total: self.extraction_failures_total,
                errors_total: self.errors_total,
                low_confidence_queue: self.low_confidence_queue,
                memory_percent: self.memory_percent,
                cpu_percent: self.cpu_percent,
                disk_percent: self.disk_percent,
                hash_time_buckets: match self.hash_time_buckets.as_deref() {
                    None | Some("") => None,
                    Some(s) => Some(parse_buckets(s)?),
                },
                hash_time_ms: match self.hash_time_ms.as_deref() {
                    None => None,
                    Some("") => Some(Vec::new()),
                    Some(s) => Some(
                        s.split(';')
                            .map(|x| x.trim().parse::<f64>())
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(|e| anyhow!("hash_time_ms: {e}"))?,
                    ),
                },
            }),
        };
        Ok(Sample {
            t_ms: self.t_ms,
            health,
            metrics,
        })
    }
}

fn parse_buckets(s: &str) -> anyhow::Result<Vec<Bucket>> {
    s.split(';')
        .map(|pair| {
            let (le, count) = pair
                .split_once(':')
                .ok_or_else(|| anyhow!("hash_time_buckets: {pair:?} is not le:count"))?;
            let le = match le.trim() {
                "inf" | "+Inf" | "+inf" | "Inf" => f64::INFINITY,
                x => x
                    .parse::<f64>()
                    .map_err(|e| anyhow!("hash_time_buckets: le {x:?}: {e}"))?,
            };
            let count = count
                .trim()
                .parse::<f64>()
                .map_err(|e| anyhow!("hash_time_buckets: count {count:?}: {e}"))?;
            Ok(Bucket { le, count })
        })
        .collect()
}

/// Appends rows to a CSV recording, writing the header when the file is new.
pub struct Recorder {
    out: csv::Writer<File>,
}

impl Recorder {
    pub fn open(path: &Path) -> anyhow::Result<Recorder> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let fresh = std::fs::metadata(path)
            .map(|m| m.len() == 0)
            .unwrap_or(true);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut out = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(file);
        if fresh {
            out.write_record(HEADER)?;
            out.flush()?;
        }
        Ok(Recorder { out })
    }

    /// Writes and flushes one row, so a killed monitor loses at most the poll
    /// in flight.
    pub fn record(&mut self, s: &Sample) -> anyhow::Result<()> {
        self.out.serialize(Row::from_sample(s))?;
        self.out.flush()?;
        Ok(())
    }
}

/// Reads a recording (CSV with the header above, or JSON lines), streaming:
/// memory stays bounded by one row whatever the file size. Errors name the
/// file and line.
pub fn read_samples(
    path: &Path,
) -> anyhow::Result<Box<dyn Iterator<Item = anyhow::Result<Sample>>>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let first = reader
        .fill_buf()?
        .iter()
        .copied()
        .find(|b| !b.is_ascii_whitespace());
    let name = path.display().to_string();
    if first == Some(b'{') {
        return Ok(Box::new(read_jsonl(reader, name)));
    }
    Ok(Box::new(read_csv(reader, name)?))
}

fn read_jsonl<R: Read>(
    reader: BufReader<R>,
    name: String,
) -> impl Iterator<Item = anyhow::Result<Sample>> {
    reader.lines().enumerate().filter_map(move |(i, line)| {
        let line = match line {
            Ok(l) => l,
            Err(e) => return Some(Err(anyhow!("{name}: line {}: {e}", i + 1))),
        };
        if line.trim().is_empty() {
            return None;
        }
        let parsed = serde_json::from_str::<Row>(&line)
            .map_err(anyhow::Error::from)
            .and_then(|r| r.to_sample());
        Some(parsed.map_err(|e| anyhow!("{name}: line {}: {e}", i + 1)))
    })
}

fn read_csv<R: Read + 'static>(
    reader: BufReader<R>,
    name: String,
) -> anyhow::Result<impl Iterator<Item = anyhow::Result<Sample>>> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(reader);
    let headers = rdr
        .headers()
        .with_context(|| format!("{name}: reading the header"))?
        .clone();
    for required in ["t_ms", "health"] {
        if !headers.iter().any(|h| h == required) {
            bail!(
                "{name}: line 1: the header lacks the column {required:?} (expected {})",
                HEADER.join(",")
            );
        }
    }
    Ok(rdr.into_deserialize::<Row>().map(move |r| {
        r.map_err(|e| {
            let line = e.position().map(|p| p.line()).unwrap_or(0);
            anyhow!("{name}: line {line}: {e}")
        })
        .and_then(|row| {
            let t = row.t_ms;
            row.to_sample()
                .map_err(|e| anyhow!("{name}: sample at t_ms {t}: {e}"))
        })
    }))
}

/// Writes samples as CSV (used by tests and the benchmark generator).
pub fn write_csv(out: impl Write, samples: impl IntoIterator<Item = Sample>) -> anyhow::Result<()> {
    let mut w = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(out);
    w.write_record(HEADER)?;
    for s in samples {
        w.serialize(Row::from_sample(&s))?;
    }
    w.flush()?;
    Ok(())
}
