//! A release's `release.json` and `config.json`, and the fault switches.
//!
//! Fault semantics (all off unless set):
//! - `hash_latency_ms` (integer ≥ 0): every hash request sleeps this long
//!   before hashing; the time is part of `elapsed_ms` and the hash-time
//!   histogram (moves the p95 gate).
//! - `failure_fraction` (0..=1): that fraction of hash requests fails as an
//!   extraction failure: 422 `{"error":"injected extraction failure ..."}`,
//!   counted in `extraction_failures_total`. Deterministic: request n (1-based)
//!   fails when `floor(n f) > floor((n - 1) f)`, so 0.5 fails every second one.
//! - `error_fraction` (0..=1): the same for internal errors: 500, counted in
//!   `errors_total` (moves the error-rate gate).
//! - `low_confidence_flood` (integer ≥ 0): at start-up, before serving, that
//!   many synthetic items (dhash 0…0, confidence 0, source
//!   `fault:low_confidence_flood`) are inserted into the low-confidence queue,
//!   in one transaction. Every start adds them again.
//! - `health_fail` (bool): `/health` answers 503 `{"status":"error",...}`.
//! - `crash_at_start` (bool): the service checks its database and binds its
//!   port, then exits 1 with a message on stderr before serving.
//!
//! Limits against abusive or broken clients (`limits` in config.json, or
//! `serve --limit key=value`); each is range-checked at load, see [`LIMITS`]:
//! - `header_bytes`: the request head (request line and header lines) at
//!   most this many bytes, else 431 and the connection is closed.
//! - `header_lines`: at most this many header lines, else 431.
//! - `request_line_bytes`: a request target longer than this gets 414
//!   (a target so long that the whole head passes `header_bytes` gets 431).
//! - `header_timeout_ms`: the whole head must arrive within this time
//!   (also the idle time of a kept-alive connection), else the connection
//!   is closed.
//! - `body_timeout_ms`: a hash request's body must arrive within this time,
//!   else 408 and the connection is closed.
//! - `body_readers`: request bodies being received at once; one more gets
//!   503 at once (bodies are read before a hash worker is taken, so slow
//!   senders never hold a worker).
//! - `body_memory_bytes`: request bodies held in memory at once, from the
//!   first byte received until hashed; a body that would pass it gets 503
//!   and is closed. At least `max_body_bytes`.
//! - `max_connections`: open connections at once; one more gets 503 and is
//!   closed.
//! - `hash_stall_ms`: when every hash worker has been busy this long without
//!   one hash finishing, `/health` answers 503 `{"status":"degraded"}`.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::dhash::DEFAULT_LOW_CONFIDENCE;

/// Default request body limit: 20 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 20 * 1024 * 1024;

pub const FAULT_KEYS: &[&str] = &[
    "hash_latency_ms",
    "failure_fraction",
    "error_fraction",
    "low_confidence_flood",
    "health_fail",
    "crash_at_start",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    pub hash_latency_ms: u64,
    pub failure_fraction: f64,
    pub error_fraction: f64,
    pub low_confidence_flood: u64,
    pub health_fail: bool,
    pub crash_at_start: bool,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            hash_latency_ms: 0,
            failure_fraction: 0.0,
            error_fraction: 0.0,
            low_confidence_flood: 0,
            health_fail: false,
            crash_at_start: false,
        }
    }
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        other => Err(format!("expected true or false, found {other:?}")),
    }
}

fn parse_fraction(v: &str) -> Result<f64, String> {
    let f: f64 = v
        .trim()
        .parse()
        .map_err(|_| format!("expected a number in 0..1, found {v:?}"))?;
    if !(0.0..=1.0).contains(&f) {
        return Err(format!("expected a number in 0..1, found {f}"));
    }
    Ok(f)
}

fn parse_count(v: &str) -> Result<u64, String> {
    v.trim()
        .parse()
        .map_err(|_| format!("expected a whole number ≥ 0, found {v:?}"))
}

impl Faults {
    /// Sets one fault from `key` and its textual value.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let err = |e: String| format!("fault {key}: {e}");
        match key {
            "hash_latency_ms" => self.hash_latency_ms = parse_count(value).map_err(err)?,
            "failure_fraction" => self.failure_fraction = parse_fraction(value).map_err(err)?,
            "error_fraction" => self.error_fraction = parse_fraction(value).map_err(err)?,
            "low_confidence_flood" => {
                self.low_confidence_flood = parse_count(value).map_err(err)?
            }
            "health_fail" => self.health_fail = parse_bool(value).map_err(err)?,
            "crash_at_start" => self.crash_at_start = parse_bool(value).map_err(err)?,
            other => {
                return Err(format!(
                    "unknown fault {other:?}; known faults: {}",
                    FAULT_KEYS.join(", ")
                ))
            }
        }
        Ok(())
    }

    /// Applies `key=value` overrides.
    pub fn apply(&mut self, pairs: &[(String, String)]) -> Result<(), String> {
        for (k, v) in pairs {
            self.set(k, v)?;
        }
        Ok(())
    }

    /// The faults that are switched on, by name.
    pub fn active(&self) -> Vec<&'static str> {
        let mut on = Vec::new();
        if self.hash_latency_ms > 0 {
            on.push("hash_latency_ms");
        }
        if self.failure_fraction > 0.0 {
            on.push("failure_fraction");
        }
        if self.error_fraction > 0.0 {
            on.push("error_fraction");
        }
        if self.low_confidence_flood > 0 {
            on.push("low_confidence_flood");
        }
        if self.health_fail {
            on.push("health_fail");
        }
        if self.crash_at_start {
            on.push("crash_at_start");
        }
        on
    }

    pub fn validate(&self) -> Result<(), String> {
        for (k, f) in [
            ("failure_fraction", self.failure_fraction),
            ("error_fraction", self.error_fraction),
        ] {
            if !(0.0..=1.0).contains(&f) {
                return Err(format!("fault {k}: expected a number in 0..1, found {f}"));
            }
        }
        Ok(())
    }
}

/// Limits on what a client may send and how long it may take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub header_bytes: u64,
    pub header_lines: u64,
    pub request_line_bytes: u64,
    pub header_timeout_ms: u64,
    pub body_timeout_ms: u64,
    pub body_readers: u64,
    pub body_memory_bytes: u64,
    pub max_connections: u64,
    pub hash_stall_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_bytes: 32 * 1024,
            header_lines: 100,
            request_line_bytes: 8 * 1024,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            body_readers: 64,
            body_memory_bytes: 256 * 1024 * 1024,
            max_connections: 512,
            hash_stall_ms: 30_000,
        }
    }
}

/// Each limit's name and allowed range (inclusive).
pub const LIMITS: &[(&str, u64, u64)] = &[
    ("header_bytes", 1024, 1024 * 1024),
    ("header_lines", 1, 1000),
    // hyper refuses targets over 65534 bytes itself.
    ("request_line_bytes", 64, 65_534),
    ("header_timeout_ms", 100, 3_600_000),
    ("body_timeout_ms", 100, 3_600_000),
    ("body_readers", 1, 100_000),
    ("body_memory_bytes", 1024 * 1024, 64 * 1024 * 1024 * 1024),
    ("max_connections", 1, 100_000),
    ("hash_stall_ms", 100, 86_400_000),
];

impl Limits {
    fn slot(&mut self, key: &str) -> Option<&mut u64> {
        Some(match key {
            "header_bytes" => &mut self.header_bytes,
            "header_lines" => &mut self.header_lines,
            "request_line_bytes" => &mut self.request_line_bytes,
            "header_timeout_ms" => &mut self.header_timeout_ms,
            "body_timeout_ms" => &mut self.body_timeout_ms,
            "body_readers" => &mut self.body_readers,
            "body_memory_bytes" => &mut self.body_memory_bytes,
            "max_connections" => &mut self.max_connections,
            "hash_stall_ms" => &mut self.hash_stall_ms,
            _ => return None,
        })
    }

    /// Sets one limit from `key` and its textual value, range-checked.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let names = || LIMITS.iter().map(|l| l.0).collect::<Vec<_>>().join(", ");
        let slot = self
            .slot(key)
            .ok_or_else(|| format!("unknown limit {key:?}; known limits: {}", names()))?;
        *slot = value
            .trim()
            .parse()
            .map_err(|_| format!("limit {key}: expected a whole number, found {value:?}"))?;
        self.validate()
    }

    /// Applies `key=value` overrides.
    pub fn apply(&mut self, pairs: &[(String, String)]) -> Result<(), String> {
        for (k, v) in pairs {
            self.set(k, v)?;
        }
        Ok(())
    }

    /// Every limit within its range of [`LIMITS`].
    pub fn validate(&self) -> Result<(), String> {
        let mut copy = self.clone();
        for &(name, lo, hi) in LIMITS {
            let v = copy.slot(name).map(|v| *v).unwrap_or(lo);
            if !(lo..=hi).contains(&v) {
                return Err(format!("limit {name}: expected {lo}..={hi}, found {v}"));
            }
        }
        Ok(())
    }

    fn is_default(&self) -> bool {
        *self == Limits::default()
    }
}

/// Parses a `key=value` limit argument (clap value parser).
pub fn limit_arg(text: &str) -> Result<(String, String), String> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| format!("expected key=value, found {text:?}"))?;
    let (k, v) = (k.trim().to_string(), v.trim().to_string());
    Limits::default().set(&k, &v)?;
    Ok((k, v))
}

/// Parses a `key=value` argument (clap value parser).
pub fn fault_arg(text: &str) -> Result<(String, String), String> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| format!("expected key=value, found {text:?}"))?;
    let (k, v) = (k.trim().to_string(), v.trim().to_string());
    Faults::default().set(&k, &v)?;
    Ok((k, v))
}

/// `config.json` of a release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceConfig {
    pub faults: Faults,
    /// Hashes with a confidence below this join the low-confidence queue.
    pub low_confidence_threshold: f64,
    /// Largest accepted request body; larger ones get 413.
    pub max_body_bytes: u64,
    /// Client limits; left out of config.json while they are the defaults.
    #[serde(skip_serializing_if = "Limits::is_default")]
    pub limits: Limits,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            faults: Faults::default(),
            low_confidence_threshold: DEFAULT_LOW_CONFIDENCE,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            limits: Limits::default(),
        }
    }
}

impl ServiceConfig {
    pub fn load(path: &Path) -> anyhow::Result<ServiceConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let cfg: ServiceConfig =
            serde_json::from_str(&text).with_context(|| format!("invalid {}", path.display()))?;
        cfg.validate()
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("invalid {}", path.display()))?;
        Ok(cfg)
    }

    /// Faults and limits in range, and limits that fit each other.
    pub fn validate(&self) -> Result<(), String> {
        self.faults.validate()?;
        self.limits.validate()?;
        let (budget, max) = (self.limits.body_memory_bytes, self.max_body_bytes);
        if budget < max {
            return Err(format!(
                "limit body_memory_bytes ({budget}) is below max_body_bytes ({max}): a body at the size limit could never be received"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fault_args_parse_and_validate() {
        assert_eq!(
            fault_arg("hash_latency_ms=2500").unwrap(),
            ("hash_latency_ms".into(), "2500".into())
        );
        assert!(fault_arg("failure_fraction=1.5").is_err());
        assert!(fault_arg("nope=1").unwrap_err().contains("known faults"));
        assert!(fault_arg("health_fail").is_err());
        let mut f = Faults::default();
        f.apply(&[
            ("health_fail".into(), "true".into()),
            ("low_confidence_flood".into(), "5".into()),
        ])
        .unwrap();
        assert_eq!(f.active(), vec!["low_confidence_flood", "health_fail"]);
    }

    #[test]
    fn config_json_defaults_and_unknown_keys() {
        let cfg: ServiceConfig =
            serde_json::from_str(r#"{"faults":{"health_fail":true}}"#).unwrap();
        assert!(cfg.faults.health_fail);
        assert_eq!(cfg.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert!(
            serde_json::from_str::<ServiceConfig>(r#"{"faults":{"helth_fail":true}}"#).is_err()
        );
        // Default limits stay out of a bundle's config.json.
        let text = serde_json::to_string(&ServiceConfig::default()).unwrap();
        assert!(!text.contains("limits"), "{text}");
    }

    #[test]
    fn limits_parse_and_are_range_checked() {
        assert_eq!(
            limit_arg("body_timeout_ms=2000").unwrap(),
            ("body_timeout_ms".into(), "2000".into())
        );
        let e = limit_arg("body_timeout_ms=0").unwrap_err();
        assert!(e.contains("100..=3600000") && e.contains("found 0"), "{e}");
        assert!(limit_arg("header_lines=-1")
            .unwrap_err()
            .contains("whole number"));
        assert!(limit_arg("header_lines=1e300").is_err());
        assert!(limit_arg("nope=1").unwrap_err().contains("known limits"));
        assert!(limit_arg("header_bytes").is_err());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(&p, r#"{"limits":{"max_connections":0}}"#).unwrap();
        let e = format!("{:#}", ServiceConfig::load(&p).unwrap_err());
        assert!(
            e.contains("max_connections") && e.contains("config.json"),
            "{e}"
        );
        std::fs::write(&p, r#"{"limits":{"body_memory_bytes":2000000}}"#).unwrap();
        let e = format!("{:#}", ServiceConfig::load(&p).unwrap_err());
        assert!(e.contains("below max_body_bytes"), "{e}");
        std::fs::write(&p, r#"{"limits":{"header_lines":50}}"#).unwrap();
        assert_eq!(ServiceConfig::load(&p).unwrap().limits.header_lines, 50);
    }
}
