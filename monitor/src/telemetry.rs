//! Recorded telemetry: the samples a live monitor polled, as CSV, read back by
//! `--replay` (CSV, or JSON lines with the same field names). Floats are
//! written in their shortest round-trip form, so a replay feeds the evaluator
//! bit-identical samples and reproduces the live decisions exactly.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use gates_core::sample::{Bucket, Health, Metrics, Sample};
use serde::{Deserialize, Serialize};

/// One CSV row / JSON object. Empty cells are absent figures (no data).
/// Text cells borrow from the line being read, so a replay does not allocate
/// for them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Row<'a> {
    pub t_ms: i64,
    /// ok, not-ok or error.
    #[serde(borrow)]
    pub health: Cow<'a, str>,
    #[serde(default, borrow)]
    pub health_detail: Option<Cow<'a, str>>,
    /// Set when the metrics probe failed; the figures are then empty.
    #[serde(default, borrow)]
    pub metrics_error: Option<Cow<'a, str>>,
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
    #[serde(default, borrow)]
    pub hash_time_buckets: Option<Cow<'a, str>>,
    /// Raw observations since the previous row, `a;b;c` (ms).
    #[serde(default, borrow)]
    pub hash_time_ms: Option<Cow<'a, str>>,
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

impl Row<'_> {
    pub fn from_sample(s: &Sample) -> Row<'static> {
        let (health, health_detail) = match &s.health {
            Health::Ok => ("ok", None),
            Health::NotOk { detail } => ("not-ok", Some(Cow::Owned(detail.clone()))),
            Health::Error { detail } => ("error", Some(Cow::Owned(detail.clone()))),
        };
        let mut row = Row {
            t_ms: s.t_ms,
            health: health.into(),
            health_detail,
            ..Row::default()
        };
        match &s.metrics {
            Err(e) => row.metrics_error = Some(Cow::Owned(e.clone())),
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
                    let cells: Vec<String> =
                        b.iter().map(|x| format!("{}:{}", x.le, x.count)).collect();
                    Cow::Owned(cells.join(";"))
                });
                row.hash_time_ms = m.hash_time_ms.as_ref().map(|o| {
                    let cells: Vec<String> = o.iter().map(|x| x.to_string()).collect();
                    Cow::Owned(cells.join(";"))
                });
            }
        }
        row
    }

    pub fn to_sample(&self) -> anyhow::Result<Sample> {
        let detail = || {
            self.health_detail
                .as_deref()
                .unwrap_or_default()
                .to_string()
        };
        let health = match self.health.as_ref() {
            "ok" => Health::Ok,
            "not-ok" => Health::NotOk { detail: detail() },
            "error" => Health::Error { detail: detail() },
            other => bail!("health must be ok, not-ok or error, found {other:?}"),
        };
        let metrics = match &self.metrics_error {
            Some(e) if !e.is_empty() => Err(e.to_string()),
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
                    Some(s) => Some(parse_observations(s)?),
                },
            }),
        };
        Ok(Sample {
            t_ms: checked_t_ms(self.t_ms)?,
            health,
            metrics,
        })
    }
}

/// The latest instant a JavaScript `Date` can hold (ms since the epoch).
const MAX_T_MS: i64 = 8_640_000_000_000_000;

/// A sample's time must be a real instant: before the epoch or beyond any
/// clock is a damaged row, and windows would overflow subtracting from it.
fn checked_t_ms(t_ms: i64) -> anyhow::Result<i64> {
    if (0..=MAX_T_MS).contains(&t_ms) {
        Ok(t_ms)
    } else {
        bail!("t_ms {t_ms} is not an instant (ms since 1970, at most {MAX_T_MS})")
    }
}

/// `le:count;...`, into a vector sized once (one allocation per row).
fn parse_buckets(s: &str) -> anyhow::Result<Vec<Bucket>> {
    let mut out = Vec::with_capacity(cells(s));
    for pair in s.split(';') {
        out.push({
            let (le, count) = pair
                .split_once(':')
                .ok_or_else(|| anyhow!("hash_time_buckets: {pair:?} is not le:count"))?;
            if let (Some(le), Some(count)) = (
                plain_decimal(le.as_bytes()).or_else(|| (le == "inf").then_some(f64::INFINITY)),
                plain_decimal(count.as_bytes()),
            ) {
                out.push(Bucket { le, count });
                continue;
            }
            let le = match le.trim() {
                "inf" | "+Inf" | "+inf" | "Inf" => f64::INFINITY,
                x => x
                    .parse::<f64>()
                    .ok()
                    .filter(|v| !v.is_nan())
                    .ok_or_else(|| anyhow!("hash_time_buckets: le {x:?} is not a number"))?,
            };
            let count = count
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| {
                    anyhow!("hash_time_buckets: count {count:?} is not a finite number")
                })?;
            Bucket { le, count }
        });
    }
    Ok(out)
}

/// The recorder's common spellings (`22`, `63.1`, `-0.5`) parsed straight
/// from bytes; None for anything else (exponents, inf, NaN, spaces, more than
/// 15 significant digits), which goes to Rust's own parser. The result is the
/// correctly rounded value, as `str::parse` gives: an integer below 2^53 is
/// exact, and one division of two exact doubles (mantissa / 10^k, k <= 22) is
/// rounded once — the same fast path `str::parse` itself takes.
fn plain_decimal(b: &[u8]) -> Option<f64> {
    const POW10: [f64; 23] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
        1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
    ];
    let (negative, digits) = match b.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, b),
    };
    let mut mantissa: u64 = 0;
    let mut count = 0usize;
    let mut fraction: Option<usize> = None;
    for (i, &c) in digits.iter().enumerate() {
        match c {
            b'0'..=b'9' => {
                mantissa = mantissa * 10 + u64::from(c - b'0');
                count += 1;
            }
            b'.' if fraction.is_none() && i > 0 && i + 1 < digits.len() => {
                fraction = Some(digits.len() - i - 1)
            }
            _ => return None,
        }
        if count > 15 {
            return None;
        }
    }
    if count == 0 {
        return None;
    }
    let value = mantissa as f64 / POW10[fraction.unwrap_or(0)];
    Some(if negative { -value } else { value })
}

/// How many `;`-separated cells a list holds.
fn cells(s: &str) -> usize {
    s.bytes().filter(|&b| b == b';').count() + 1
}

/// `a;b;c` raw observations (ms), into a vector sized once.
fn parse_observations(s: &str) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(cells(s));
    for x in s.split(';') {
        if let Some(v) = plain_decimal(x.as_bytes()) {
            out.push(v);
            continue;
        }
        out.push(
            x.trim()
                .parse::<f64>()
                .map_err(|e| anyhow!("hash_time_ms: {e}"))?,
        );
    }
    Ok(out)
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

/// The recording's reader, counting the bytes read into the progress display
/// (a terminal only; it goes away with the iterator).
struct Counted {
    inner: File,
    progress: gates_core::progress::Bar,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.inc(n as u64);
        Ok(n)
    }
}

/// The first byte of a JSON lines recording (a JSON object).
const JSON_OBJECT_START: u8 = b'{';

/// Reads a recording (CSV with the header above, or JSON lines), streaming:
/// memory stays bounded by one row whatever the file size. Errors name the
/// file and line.
pub fn read_samples(
    path: &Path,
) -> anyhow::Result<Box<dyn Iterator<Item = anyhow::Result<Sample>>>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let file = Counted {
        inner: file,
        progress: gates_core::progress::bytes("replay", size),
    };
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let first = reader
        .fill_buf()?
        .iter()
        .copied()
        .find(|b| !b.is_ascii_whitespace());
    let name = path.display().to_string();
    if first == Some(JSON_OBJECT_START) {
        return Ok(Box::new(read_jsonl(reader, name)));
    }
    Ok(Box::new(in_background(read_csv(reader, name)?)))
}

/// Samples in one hand-over between the parsing thread and the evaluator:
/// large enough that the channel costs nothing per sample, small enough that
/// memory stays bounded (at most `BATCHES_IN_FLIGHT + 2` batches).
const BATCH: usize = 1024;
const BATCHES_IN_FLIGHT: usize = 4;

/// Runs a parser on its own thread, so parsing the next rows overlaps with
/// evaluating these ones (replay is parse-bound, evaluation is the rest).
/// Order and errors are those of the parser; the thread stops when the
/// parser ends or the reader is dropped.
fn in_background<I>(parser: I) -> impl Iterator<Item = anyhow::Result<Sample>>
where
    I: Iterator<Item = anyhow::Result<Sample>> + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<anyhow::Result<Sample>>>(BATCHES_IN_FLIGHT);
    std::thread::spawn(move || {
        let mut parser = parser.fuse();
        loop {
            let batch: Vec<_> = parser.by_ref().take(BATCH).collect();
            if batch.is_empty() || tx.send(batch).is_err() {
                return;
            }
        }
    });
    rx.into_iter().flatten()
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

fn read_csv<R: Read + Send + 'static>(
    reader: BufReader<R>,
    name: String,
) -> anyhow::Result<impl Iterator<Item = anyhow::Result<Sample>>> {
    // csv's own buffer as large as the BufReader's: once the sniffed bytes are
    // consumed, reads go straight to the file instead of through two copies.
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .buffer_capacity(1 << 20)
        .from_reader(reader);
    let headers = rdr
        .byte_headers()
        .with_context(|| format!("{name}: reading the header"))?
        .clone();
    let cols = Columns::new(&headers).map_err(|e| anyhow!("{name}: line 1: {e}"))?;
    for (required, at) in [("t_ms", cols.t_ms), ("health", cols.health)] {
        if at.is_none() {
            bail!(
                "{name}: line 1: the header lacks the column {required:?} (expected {})",
                HEADER.join(",")
            );
        }
    }
    // One record buffer for the whole file; cells are parsed straight from
    // its bytes (no per-row serde, no per-cell String).
    let mut record = csv::ByteRecord::new();
    Ok(std::iter::from_fn(move || {
        let read = rdr.read_byte_record(&mut record).map_err(|e| {
            let line = e.position().map(|p| p.line()).unwrap_or(0);
            anyhow!("{name}: line {line}: {e}")
        });
        match read {
            Err(e) => Some(Err(e)),
            Ok(false) => None,
            Ok(true) => Some(row_sample(&record, &cols, &name)),
        }
    }))
}

/// Where each known column sits in the file's header (the first occurrence;
/// unknown columns are ignored, missing ones read as empty).
struct Columns {
    t_ms: Option<usize>,
    health: Option<usize>,
    health_detail: Option<usize>,
    metrics_error: Option<usize>,
    /// requests_total … disk_percent, in Metrics' order.
    figures: [Option<usize>; 8],
    hash_time_buckets: Option<usize>,
    hash_time_ms: Option<usize>,
}

impl Columns {
    /// Refuses a header that names a known column twice: which of the two
    /// cells holds the figure would be a guess.
    fn new(headers: &csv::ByteRecord) -> anyhow::Result<Columns> {
        if let Some(twice) = HEADER
            .iter()
            .find(|n| headers.iter().filter(|h| *h == n.as_bytes()).count() > 1)
        {
            bail!("the header names the column {twice:?} twice");
        }
        let at = |name: &str| headers.iter().position(|h| h == name.as_bytes());
        Ok(Columns {
            t_ms: at("t_ms"),
            health: at("health"),
            health_detail: at("health_detail"),
            metrics_error: at("metrics_error"),
            figures: HEADER[4..12]
                .iter()
                .map(|n| at(n))
                .collect::<Vec<_>>()
                .try_into()
                .expect("HEADER names eight figures between metrics_error and the histogram"),
            hash_time_buckets: at("hash_time_buckets"),
            hash_time_ms: at("hash_time_ms"),
        })
    }
}

/// A cell as text; empty (or absent) is None, as serde's Option reads it.
fn text<'r>(
    record: &'r csv::ByteRecord,
    at: Option<usize>,
    col: &str,
) -> anyhow::Result<Option<&'r str>> {
    match at.and_then(|i| record.get(i)) {
        None | Some(b"") => Ok(None),
        Some(b) => std::str::from_utf8(b)
            .map(Some)
            .map_err(|e| anyhow!("{col}: not UTF-8: {e}")),
    }
}

/// A figure cell: empty is no data; otherwise Rust's own float grammar, the
/// one serde used before, so every value is bit-identical. NaN and infinities
/// are no data too, as the live probe reads them from `/metrics`: a replay
/// must not pass a window the live watch could not judge.
fn figure(record: &csv::ByteRecord, at: Option<usize>, col: &str) -> anyhow::Result<Option<f64>> {
    if let Some(x) = at.and_then(|i| record.get(i)).and_then(plain_decimal) {
        return Ok(Some(x));
    }
    match text(record, at, col)? {
        None => Ok(None),
        Some(s) => s
            .parse::<f64>()
            .map(|v| v.is_finite().then_some(v))
            .map_err(|e| anyhow!("field {col}: invalid float literal {s:?}: {e}")),
    }
}

fn row_sample(record: &csv::ByteRecord, cols: &Columns, name: &str) -> anyhow::Result<Sample> {
    let line = record.position().map(|p| p.line()).unwrap_or(0);
    let t_ms = text(record, cols.t_ms, "t_ms")
        .and_then(|s| {
            let s = s.unwrap_or_default();
            // csv's serde reader also took a 0x hexadecimal prefix.
            match s.strip_prefix("0x") {
                Some(hex) => i64::from_str_radix(hex, 16),
                None => s.parse::<i64>(),
            }
            .map_err(|e| anyhow!("field t_ms: {s:?}: {e}"))
            .and_then(checked_t_ms)
        })
        .map_err(|e| anyhow!("{name}: line {line}: {e}"))?;
    row_sample_at(record, cols, t_ms)
        .map_err(|e| anyhow!("{name}: line {line} (sample at t_ms {t_ms}): {e}"))
}

fn row_sample_at(record: &csv::ByteRecord, cols: &Columns, t_ms: i64) -> anyhow::Result<Sample> {
    let detail = || -> anyhow::Result<String> {
        Ok(text(record, cols.health_detail, "health_detail")?
            .unwrap_or_default()
            .to_string())
    };
    let health = match text(record, cols.health, "health")?.unwrap_or_default() {
        "ok" => Health::Ok,
        "not-ok" => Health::NotOk { detail: detail()? },
        "error" => Health::Error { detail: detail()? },
        other => bail!("health must be ok, not-ok or error, found {other:?}"),
    };
    let metrics = match text(record, cols.metrics_error, "metrics_error")? {
        Some(e) => Err(e.to_string()),
        None => {
            let mut f = [None; 8];
            for (slot, (at, col)) in f.iter_mut().zip(cols.figures.iter().zip(&HEADER[4..12])) {
                *slot = figure(record, *at, col)?;
            }
            let [requests_total, hash_requests_total, extraction_failures_total, errors_total, low_confidence_queue, memory_percent, cpu_percent, disk_percent] =
                f;
            Ok(Metrics {
                requests_total,
                hash_requests_total,
                extraction_failures_total,
                errors_total,
                low_confidence_queue,
                memory_percent,
                cpu_percent,
                disk_percent,
                hash_time_buckets: match text(record, cols.hash_time_buckets, "hash_time_buckets")?
                {
                    None => None,
                    Some(s) => Some(parse_buckets(s)?),
                },
                hash_time_ms: match text(record, cols.hash_time_ms, "hash_time_ms")? {
                    None => None,
                    Some(s) => Some(parse_observations(s)?),
                },
            })
        }
    };
    Ok(Sample {
        t_ms,
        health,
        metrics,
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use gates_core::sample::Bucket;

    /// Samples whose text needs quoting or escaping, which a borrowed cell
    /// cannot hold as-is.
    fn awkward_samples() -> Vec<Sample> {
        vec![
            Sample {
                t_ms: 1_000,
                health: Health::NotOk {
                    detail: "HTTP 503: \"db, locked\"\nretry".into(),
                },
                metrics: Err("timed out after 2s, \"slow\"".into()),
            },
            Sample {
                t_ms: 2_000,
                health: Health::Ok,
                metrics: Ok(Metrics {
                    requests_total: Some(10.0),
                    hash_requests_total: Some(9.5),
                    hash_time_buckets: Some(vec![
                        Bucket {
                            le: 5.0,
                            count: 3.0,
                        },
                        Bucket {
                            le: f64::INFINITY,
                            count: 9.0,
                        },
                    ]),
                    hash_time_ms: Some(vec![1.25, 0.1]),
                    ..Metrics::default()
                }),
            },
        ]
    }

    #[test]
    fn csv_and_json_lines_read_back_what_was_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let samples = awkward_samples();
        let csv_path = dir.path().join("t.csv");
        write_csv(File::create(&csv_path).expect("create"), samples.clone()).expect("write");
        let json_path = dir.path().join("t.jsonl");
        let lines: Vec<String> = samples
            .iter()
            .map(|s| serde_json::to_string(&Row::from_sample(s)).expect("json"))
            .collect();
        std::fs::write(&json_path, lines.join("\n")).expect("write");
        for path in [&csv_path, &json_path] {
            let back: Vec<Sample> = read_samples(path)
                .expect("open")
                .collect::<anyhow::Result<_>>()
                .expect("read");
            assert_eq!(back, samples, "{}", path.display());
        }
    }

    #[test]
    fn a_bad_row_is_named_by_file_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.csv");
        let text = format!(
            "{}\n1000,ok,,,1,1,0,0,0,10,1,1,,\n2000,ok,,,many,1,0,0,0,10,1,1,,\n",
            HEADER.join(",")
        );
        std::fs::write(&path, text).expect("write");
        let results: Vec<_> = read_samples(&path).expect("open").collect();
        assert!(results[0].is_ok());
        let err = format!("{:#}", results[1].as_ref().expect_err("bad number"));
        assert!(err.contains("bad.csv: line 3"), "{err}");
    }
}

/// Property tests (issue 13): whatever a recording holds, reading it gives
/// samples or errors that name the line, never a panic.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn non_finite_figures_are_no_data_as_the_live_probe_reads_them() {
        let h = HEADER.join(",");
        let got = read_all(format!("{h}\n1000,ok,,,10,10,0,0,NaN,inf,-inf,1,,\n").as_bytes());
        let m = got[0]
            .as_ref()
            .expect("a sample")
            .metrics
            .clone()
            .expect("metrics");
        assert_eq!(
            (
                m.low_confidence_queue,
                m.memory_percent,
                m.cpu_percent,
                m.disk_percent
            ),
            (None, None, None, Some(1.0))
        );
        // A histogram count that is not a finite number is a damaged row.
        let got = read_all(format!("{h}\n1000,ok,,,1,1,0,0,0,1,1,1,5:NaN;inf:1,\n").as_bytes());
        let err = got[0].as_ref().expect_err("NaN count");
        assert!(
            err.contains("line 2") && err.contains("not a finite number"),
            "{err}"
        );
    }

    #[test]
    fn a_time_that_is_no_instant_is_refused_by_line() {
        let h = HEADER.join(",");
        for t in ["-9223372036854775808", "-1", "9223372036854775807"] {
            let got = read_all(format!("{h}\n{t},ok,,,1,1,0,0,0,1,1,1,100:1;inf:2,\n").as_bytes());
            let err = got[0].as_ref().expect_err(t);
            assert!(
                err.contains("line 2") && err.contains("is not an instant"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_header_naming_a_column_twice_is_refused() {
        let h = format!("{},low_confidence_queue", HEADER.join(","));
        let got = read_all(format!("{h}\n1000,ok,,,1,1,0,0,5,1,1,1,,,1500\n").as_bytes());
        let err = got[0].as_ref().expect_err("duplicate column");
        assert!(
            err.contains("line 1") && err.contains("\"low_confidence_queue\" twice"),
            "{err}"
        );
    }

    fn read_all(bytes: &[u8]) -> Vec<Result<Sample, String>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("rec.csv");
        std::fs::write(&path, bytes).expect("write");
        match read_samples(&path) {
            Err(e) => vec![Err(format!("{e:#}"))],
            Ok(it) => it.map(|r| r.map_err(|e| format!("{e:#}"))).collect(),
        }
    }

    fn cell() -> impl Strategy<Value = String> {
        prop_oneof![
            "[0-9.eE+-]{0,14}",
            "\\PC{0,16}",
            Just(String::new()),
            Just("NaN".to_string()),
            Just("inf".to_string()),
            Just("1e309".to_string()),
            Just("-1".to_string()),
            Just("ok".to_string()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
            read_all(&bytes);
        }

        #[test]
        fn csv_rows_of_any_cells_are_samples_or_errors_naming_their_line(
            rows in prop::collection::vec(
                prop::collection::vec(cell(), HEADER.len()..=HEADER.len()), 1..6)
        ) {
            let mut w = csv::Writer::from_writer(Vec::new());
            w.write_record(HEADER).expect("header");
            for r in &rows {
                w.write_record(r).expect("row");
            }
            let bytes = w.into_inner().expect("csv");
            for (i, r) in read_all(&bytes).iter().enumerate() {
                if let Err(e) = r {
                    prop_assert!(e.contains(&format!("line {}", i + 2)), "{e}");
                }
            }
        }

        #[test]
        fn json_lines_of_any_objects_never_panic(
            rows in prop::collection::vec(
                prop::collection::btree_map("[a-z_]{1,12}", cell(), 0..8), 1..6)
        ) {
            let text: String = rows
                .iter()
                .map(|m| format!("{}\n", serde_json::to_string(m).expect("json")))
                .collect();
            for (i, r) in read_all(text.as_bytes()).iter().enumerate() {
                if let Err(e) = r {
                    prop_assert!(e.contains(&format!("line {}", i + 1)), "{e}");
                }
            }
        }
    }
}
