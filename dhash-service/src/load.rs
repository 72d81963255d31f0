//! `dhash-service load`: a steady, open-loop mix of valid, low-confidence
//! (uniform) and undecodable images at a fixed rate for a fixed time.
//!
//! Request i is due at `start + i / rate`; kinds follow the mix by smooth
//! weighted round-robin (deterministic: `valid=80,low=10,bad=10` sends
//! 8 valid, 1 low, 1 bad in every 10). A pool of workers sends them; when
//! every worker is busy and the hand-off queue is full the request is counted
//! as `skipped` instead of slowing the schedule down.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use gates_core::{Emitter, Exit, Level, ToolError};
use serde::Serialize;
use serde_json::json;

use crate::images;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Valid,
    Low,
    Bad,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Valid => "valid",
            Kind::Low => "low",
            Kind::Bad => "bad",
        }
    }

    /// The kind [`Kind::name`] names.
    pub fn parse(name: &str) -> Option<Kind> {
        [Kind::Valid, Kind::Low, Kind::Bad]
            .into_iter()
            .find(|k| k.name() == name)
    }
}

/// Relative weights of the three kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    pub valid: u32,
    pub low: u32,
    pub bad: u32,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            valid: 80,
            low: 10,
            bad: 10,
        }
    }
}

/// Parses `valid=80,low=10,bad=10` (missing kinds weigh 0).
pub fn mix_arg(text: &str) -> Result<Mix, String> {
    let mut mix = Mix {
        valid: 0,
        low: 0,
        bad: 0,
    };
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("expected kind=weight, found {part:?}"))?;
        let w: u32 = v
            .trim()
            .parse()
            .map_err(|_| format!("weight of {k} must be a whole number, found {v:?}"))?;
        let kind = Kind::parse(k.trim())
            .ok_or_else(|| format!("unknown kind {:?}: expected valid, low or bad", k.trim()))?;
        match kind {
            Kind::Valid => mix.valid = w,
            Kind::Low => mix.low = w,
            Kind::Bad => mix.bad = w,
        }
    }
    if mix.valid + mix.low + mix.bad == 0 {
        return Err("the mix needs at least one positive weight".into());
    }
    Ok(mix)
}

/// Deterministic smooth weighted round-robin over the mix.
pub struct Picker {
    weights: [(Kind, i64); 3],
    current: [i64; 3],
}

impl Picker {
    pub fn new(mix: Mix) -> Self {
        Picker {
            weights: [
                (Kind::Valid, mix.valid.into()),
                (Kind::Low, mix.low.into()),
                (Kind::Bad, mix.bad.into()),
            ],
            current: [0; 3],
        }
    }

    pub fn next_kind(&mut self) -> Kind {
        let total: i64 = self.weights.iter().map(|w| w.1).sum();
        let mut best = 0;
        for i in 0..3 {
            self.current[i] += self.weights[i].1;
            if self.current[i] > self.current[best] {
                best = i;
            }
        }
        self.current[best] -= total;
        self.weights[best].0
    }
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Base URL of the service, e.g. `http://127.0.0.1:3000`.
    pub url: String,
    /// Requests per second.
    pub rate: f64,
    pub duration: Duration,
    pub mix: Mix,
    pub concurrency: usize,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct KindStats {
    pub sent: u64,
    pub status: BTreeMap<String, u64>,
    pub transport_errors: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    pub url: String,
    pub rate: f64,
    pub duration_seconds: f64,
    pub elapsed_seconds: f64,
    pub scheduled: u64,
    pub sent: u64,
    pub skipped: u64,
    pub transport_errors: u64,
    pub status: BTreeMap<String, u64>,
    pub kinds: BTreeMap<String, KindStats>,
    pub latency_ms: BTreeMap<String, f64>,
    pub last_error: Option<String>,
}

/// The payloads of each kind, rotated through.
pub struct Payloads {
    valid: Vec<Vec<u8>>,
    low: Vec<Vec<u8>>,
    bad: Vec<Vec<u8>>,
}

impl Payloads {
    pub fn generate() -> anyhow::Result<Payloads> {
        let valid = (0..16u64)
            .map(images::blocks_png)
            .collect::<Result<Vec<_>, _>>()?;
        let low = [0u8, 96, 160, 255]
            .iter()
            .map(|&l| images::uniform_png(l))
            .collect::<Result<Vec<_>, _>>()?;
        let mut rng = images::Lcg::new(99);
        let noise: Vec<u8> = (0..2048).map(|_| rng.next_u8()).collect();
        let truncated_png = valid[0][..valid[0].len() / 2].to_vec();
        let jpeg = images::try_jpeg_gray(64, 64, |x, y| (x * 4 + y) as u8)?;
        let truncated_jpeg = jpeg[..jpeg.len().min(40)].to_vec();
        let bad = vec![
            noise,
            truncated_png,
            b"%PDF-1.7 not an image".to_vec(),
            truncated_jpeg,
            b"\x89PNG\r\n\x1a\ngarbage after the signature".to_vec(),
        ];
        Ok(Payloads { valid, low, bad })
    }

    pub fn get(&self, kind: Kind, n: usize) -> &[u8] {
        let set = match kind {
            Kind::Valid => &self.valid,
            Kind::Low => &self.low,
            Kind::Bad => &self.bad,
        };
        &set[n % set.len()]
    }
}

struct Outcome {
    kind: Kind,
    status: Result<u16, String>,
    ms: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs the load and emits `load.started` and `load.completed`.
pub fn run(opts: &LoadOptions, em: &Emitter) -> anyhow::Result<LoadReport> {
    if !(opts.rate > 0.0 && opts.rate.is_finite()) {
        return Err(gates_core::exit::usage_error(format!(
            "--rate must be above 0, found {}",
            opts.rate
        )));
    }
    let base = opts.url.trim_end_matches('/').to_string();
    let target = format!("{base}/api/dhash/hash");
    let payloads = Arc::new(Payloads::generate().context("generating payloads")?);
    emit_started(opts, &base, &target, em);
    let pool = Pool::start(opts, &target, payloads)?;
    let mut report = LoadReport {
        url: base.clone(),
        rate: opts.rate,
        duration_seconds: opts.duration.as_secs_f64(),
        ..Default::default()
    };
    let start = Instant::now();
    schedule(opts, &pool.jobs, start, &mut report);
    let latencies = pool.finish(&mut report);
    report.elapsed_seconds = (start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
    record_latencies(&mut report, latencies);
    conclude(report, &base, &target, em)
}

fn emit_started(opts: &LoadOptions, base: &str, target: &str, em: &Emitter) {
    em.emit(
        "load.started",
        Level::Info,
        format!(
            "sending {} requests/s to {target} for {:?}",
            opts.rate, opts.duration
        ),
        json!({
            "url": base,
            "rate": opts.rate,
            "duration_seconds": opts.duration.as_secs_f64(),
            "mix": {"valid": opts.mix.valid, "low": opts.mix.low, "bad": opts.mix.bad},
        }),
    );
}

/// The workers: jobs in through a bounded queue (one slot a worker), outcomes out.
struct Pool {
    jobs: mpsc::SyncSender<(Kind, usize)>,
    outcomes: mpsc::Receiver<Outcome>,
    handles: Vec<thread::JoinHandle<()>>,
}

impl Pool {
    fn start(opts: &LoadOptions, target: &str, payloads: Arc<Payloads>) -> anyhow::Result<Pool> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(opts.timeout))
            .build()
            .into();
        let workers = opts.concurrency.max(1);
        let (job_tx, job_rx) = mpsc::sync_channel::<(Kind, usize)>(workers);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (out_tx, out_rx) = mpsc::channel::<Outcome>();
        let mut handles = Vec::new();
        for i in 0..workers {
            let (job_rx, out_tx, agent, payloads, target) = (
                job_rx.clone(),
                out_tx.clone(),
                agent.clone(),
                payloads.clone(),
                target.to_string(),
            );
            let h = thread::Builder::new()
                .name(format!("load-{i}"))
                .spawn(move || worker(&job_rx, &out_tx, &agent, &payloads, &target));
            handles.push(h.context("starting load workers")?);
        }
        Ok(Pool {
            jobs: job_tx,
            outcomes: out_rx,
            handles,
        })
    }

    /// Closes the queue, counts every outcome into `report` and joins the
    /// workers. Returns the latencies of the requests that got an answer.
    fn finish(self, report: &mut LoadReport) -> Vec<f64> {
        drop(self.jobs);
        let mut latencies = Vec::new();
        for o in self.outcomes {
            let ks = report.kinds.entry(o.kind.name().to_string()).or_default();
            ks.sent += 1;
            report.sent += 1;
            match o.status {
                Ok(code) => {
                    *ks.status.entry(code.to_string()).or_default() += 1;
                    *report.status.entry(code.to_string()).or_default() += 1;
                    latencies.push(o.ms);
                }
                Err(e) => {
                    ks.transport_errors += 1;
                    report.transport_errors += 1;
                    report.last_error = Some(e);
                }
            }
        }
        for h in self.handles {
            let _ = h.join();
        }
        latencies
    }
}

/// One worker: sends each job it takes until the queue closes.
fn worker(
    jobs: &Mutex<mpsc::Receiver<(Kind, usize)>>,
    outcomes: &mpsc::Sender<Outcome>,
    agent: &ureq::Agent,
    payloads: &Payloads,
    target: &str,
) {
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok((kind, n)) = job else { return };
        let body = payloads.get(kind, n);
        let t0 = Instant::now();
        let content_type = if body.starts_with(&[0xFF, 0xD8]) {
            "image/jpeg"
        } else {
            "image/png"
        };
        let status = match agent
            .post(target)
            .header("Content-Type", content_type)
            .send(body)
        {
            Ok(mut resp) => {
                let _ = resp.body_mut().read_to_vec();
                Ok(resp.status().as_u16())
            }
            Err(e) => Err(e.to_string()),
        };
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        if outcomes.send(Outcome { kind, status, ms }).is_err() {
            return;
        }
    }
}

/// The open-loop schedule: request i is due at `start + i / rate`; a request
/// no worker can take at once is skipped, never delayed.
fn schedule(
    opts: &LoadOptions,
    jobs: &mpsc::SyncSender<(Kind, usize)>,
    start: Instant,
    report: &mut LoadReport,
) {
    let mut picker = Picker::new(opts.mix);
    let mut per_kind = [0usize; 3];
    let mut i: u64 = 0;
    loop {
        let due = Duration::from_secs_f64(i as f64 / opts.rate);
        if due >= opts.duration {
            break;
        }
        let now = start.elapsed();
        if due > now {
            thread::sleep(due - now);
        }
        let kind = picker.next_kind();
        let idx = kind as usize;
        report.scheduled += 1;
        match jobs.try_send((kind, per_kind[idx])) {
            Ok(()) => per_kind[idx] += 1,
            Err(_) => report.skipped += 1,
        }
        i += 1;
    }
}

fn record_latencies(report: &mut LoadReport, mut latencies: Vec<f64>) {
    latencies.sort_by(f64::total_cmp);
    for (name, p) in [("p50", 50.0), ("p95", 95.0), ("max", 100.0)] {
        report.latency_ms.insert(
            name.into(),
            (percentile(&latencies, p) * 1000.0).round() / 1000.0,
        );
    }
}

/// Emits `load.completed`; a run in which no request got an answer fails.
fn conclude(
    report: LoadReport,
    base: &str,
    target: &str,
    em: &Emitter,
) -> anyhow::Result<LoadReport> {
    let all_failed = report.sent > 0 && report.transport_errors == report.sent;
    let level = if all_failed {
        Level::Error
    } else if report.transport_errors > 0 || report.skipped > 0 {
        Level::Warning
    } else {
        Level::Info
    };
    let fields = serde_json::to_value(&report)?;
    em.emit(
        "load.completed",
        level,
        format!(
            "{} requests sent to {base} ({} skipped, {} transport errors)",
            report.sent, report.skipped, report.transport_errors
        ),
        fields,
    );
    if all_failed {
        return Err(ToolError::new(
            Exit::Failed,
            anyhow::anyhow!(
                "no request reached {target}: {}",
                report.last_error.clone().unwrap_or_default()
            ),
        )
        .into());
    }
    Ok(report)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn mix_parses_and_picks_in_proportion() {
        let mix = mix_arg("valid=80,low=10,bad=10").unwrap();
        assert_eq!(mix, Mix::default());
        assert!(mix_arg("valid=1,weird=2").is_err());
        assert!(mix_arg("valid=0").is_err());
        let mut p = Picker::new(mix);
        let picks: Vec<Kind> = (0..10).map(|_| p.next_kind()).collect();
        assert_eq!(picks.iter().filter(|k| **k == Kind::Valid).count(), 8);
        assert_eq!(picks.iter().filter(|k| **k == Kind::Low).count(), 1);
        assert_eq!(picks.iter().filter(|k| **k == Kind::Bad).count(), 1);
    }

    #[test]
    fn payload_kinds_hash_as_intended() {
        let p = Payloads::generate().unwrap();
        for n in 0..16 {
            let r = crate::dhash::hash_bytes(p.get(Kind::Valid, n)).unwrap();
            assert!(r.confidence >= crate::dhash::DEFAULT_LOW_CONFIDENCE);
        }
        for n in 0..4 {
            assert_eq!(
                crate::dhash::hash_bytes(p.get(Kind::Low, n))
                    .unwrap()
                    .confidence,
                0.0
            );
        }
        for n in 0..5 {
            assert!(
                crate::dhash::hash_bytes(p.get(Kind::Bad, n)).is_err(),
                "bad payload {n}"
            );
        }
    }
}
