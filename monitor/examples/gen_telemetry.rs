//! Generates synthetic recorded telemetry for the replay benchmark: one
//! sample per step with traffic that varies over the day, failure bursts, slow
//! periods, queue spikes, memory plateaus, short health outages, failed
//! metrics probes and a service restart (counter reset) every six hours.
//! Deterministic for a given seed.
//!
//! cargo run --release -p dhash-monitor --example gen_telemetry -- SAMPLES STEP_MS SEED OUT.csv

use std::io::BufWriter;

use dhash_monitor::telemetry;
use gates_core::sample::{Bucket, Health, Metrics, Sample};

/// xorshift64*: small, fast, deterministic; no dependency needed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

const LES: [f64; 10] = [
    5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0,
];

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        anyhow::bail!("usage: gen_telemetry SAMPLES STEP_MS SEED OUT.csv");
    }
    let n: u64 = args[1].parse()?;
    let step: i64 = args[2].parse()?;
    let mut rng = Rng(args[3].parse::<u64>()? | 1);
    let out = BufWriter::with_capacity(1 << 20, std::fs::File::create(&args[4])?);

    let t0: i64 = 1_790_000_000_000;
    let restart_every = (6 * 3600 * 1000 / step).max(1) as u64;
    let mut req = 0.0f64;
    let mut fail = 0.0f64;
    let mut err = 0.0f64;
    let mut buckets = [0.0f64; 11];
    let mut queue = 100.0f64;
    let mut health_down = 0u32;
    let mut metrics_down = 0u32;

    let samples = (0..n).map(move |i| {
        let t = t0 + i as i64 * step;
        if i > 0 && i % restart_every == 0 {
            req = 0.0;
            fail = 0.0;
            err = 0.0;
            buckets = [0.0; 11];
        }
        let day = (i as f64 * step as f64 / 86_400_000.0 * std::f64::consts::TAU).sin();
        let rate = (20.0 + 15.0 * day).max(0.0) * step as f64 / 1000.0;
        let hour = (i as i64 * step / 3_600_000) as u64;
        // Bursts: some hours fail more, some are slow.
        let fail_p = if hour % 7 == 3 { 0.08 } else { 0.02 };
        let err_p = if hour % 11 == 5 { 0.05 } else { 0.01 };
        let slow = hour % 13 == 6;
        let new = (rate * (0.5 + rng.unit())).floor();
        req += new;
        fail += (new * fail_p * (0.5 + rng.unit())).floor();
        err += (new * err_p * (0.5 + rng.unit())).floor();
        for _ in 0..new as u64 {
            let x = rng.unit();
            let ms = if slow {
                300.0 + 3000.0 * x * x
            } else {
                2.0 + 400.0 * x * x * x
            };
            let b = LES.iter().position(|le| ms <= *le).unwrap_or(LES.len());
            buckets[b] += 1.0;
        }
        queue = (queue + 20.0 * (rng.unit() - 0.5) + if hour % 17 == 9 { 30.0 } else { -2.0 })
            .clamp(0.0, 5000.0);
        let memory = if hour % 19 == 4 {
            86.0 + 5.0 * rng.unit()
        } else {
            60.0 + 20.0 * rng.unit()
        };

        if health_down == 0 && rng.unit() < 0.0005 {
            health_down = 1 + (rng.next() % 4) as u32;
        }
        let health = if health_down > 0 {
            health_down -= 1;
            Health::Error {
                detail: "connection refused".into(),
            }
        } else {
            Health::Ok
        };
        if metrics_down == 0 && rng.unit() < 0.0003 {
            metrics_down = 1 + (rng.next() % 7) as u32;
        }
        let metrics = if metrics_down > 0 {
            metrics_down -= 1;
            Err("timed out after 5s".to_string())
        } else {
            let mut cum = 0.0;
            let mut hist = Vec::with_capacity(11);
            for (k, le) in LES
                .iter()
                .chain(std::iter::once(&f64::INFINITY))
                .enumerate()
            {
                cum += buckets[k];
                hist.push(Bucket {
                    le: *le,
                    count: cum,
                });
            }
            Ok(Metrics {
                requests_total: Some(req),
                hash_requests_total: Some(req),
                extraction_failures_total: Some(fail),
                errors_total: Some(err),
                hash_time_buckets: Some(hist),
                hash_time_ms: None,
                low_confidence_queue: Some(queue.round()),
                memory_percent: Some((memory * 10.0).round() / 10.0),
                cpu_percent: Some(30.0),
                disk_percent: Some(40.0),
            })
        };
        Sample {
            t_ms: t,
            health,
            metrics,
        }
    });
    telemetry::write_csv(out, samples)
}
