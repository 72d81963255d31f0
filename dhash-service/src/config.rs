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
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            faults: Faults::default(),
            low_confidence_threshold: DEFAULT_LOW_CONFIDENCE,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

impl ServiceConfig {
    pub fn load(path: &Path) -> anyhow::Result<ServiceConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let cfg: ServiceConfig =
            serde_json::from_str(&text).with_context(|| format!("invalid {}", path.display()))?;
        cfg.faults
            .validate()
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("invalid {}", path.display()))?;
        Ok(cfg)
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
    }
}
