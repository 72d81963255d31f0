//! A fleet environment: `instances` (each its own install root, service
//! control and URLs) and a `rollout` (the waves plan, the canary comparison
//! and how long a balancer gets to stop sending to an instance before it is
//! restarted). An environment without `instances` is a single instance, as
//! before.
//!
//! ```json
//! "instances": [
//!   { "name": "a", "install_root": ".dhash/fleet/a",
//!     "service": { "kind": "commands", "start": "ssh {instance} sudo systemctl start dhash", ... },
//!     "health_url": "http://a.internal:3000/health", "metrics_url": "...", "queue_url": "..." }
//! ],
//! "rollout": {
//!   "waves": [ { "instances": 1, "bake": "10m" }, { "percent": 50, "bake": "10m" }, { "percent": 100 } ],
//!   "canary": { "min_requests": 200, "max_increase": 2,
//!               "latency_alpha": 0.01, "latency_min_effect": 0.474, "latency_min_samples": 100 },
//!   "drain": "5s"
//! }
//! ```
//!
//! A wave's size is cumulative: after `{"percent": 50}` half the fleet
//! (rounded up) runs the new release. `{instance}` in a `commands` kind is
//! replaced by the instance's name.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::super::{duration_in, whole_in, ConfigError, DurationRange};
use super::{check_path, check_urls, ServiceControl};

/// The placeholder a `commands` service kind may use for the instance's name.
pub const INSTANCE_PLACEHOLDER: &str = "{instance}";

/// A bake: nothing (0) to a day.
const BAKE: DurationRange = DurationRange::new(Duration::ZERO, Duration::from_secs(24 * 3600));
/// How long a balancer gets to stop sending to an instance: 0 to 10 minutes.
const DRAIN: DurationRange = DurationRange::new(Duration::ZERO, Duration::from_secs(600));

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInstance {
    name: String,
    install_root: String,
    #[serde(default)]
    data_dir: Option<String>,
    service: ServiceControl,
    health_url: String,
    metrics_url: String,
    queue_url: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWave {
    #[serde(default)]
    instances: Option<Value>,
    #[serde(default)]
    percent: Option<Value>,
    #[serde(default)]
    bake: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCanary {
    #[serde(default)]
    min_requests: Option<Value>,
    #[serde(default)]
    max_increase: Option<Value>,
    #[serde(default)]
    latency_alpha: Option<Value>,
    #[serde(default)]
    latency_min_effect: Option<Value>,
    #[serde(default)]
    latency_min_samples: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRollout {
    #[serde(default)]
    waves: Option<Vec<RawWave>>,
    #[serde(default)]
    canary: RawCanary,
    #[serde(default)]
    drain: Option<Value>,
}

/// One instance of a fleet, every path absolute.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Instance {
    pub name: String,
    pub install_root: PathBuf,
    pub data_dir: PathBuf,
    /// `{instance}` already replaced.
    pub service: ServiceControl,
    pub health_url: String,
    pub metrics_url: String,
    pub queue_url: String,
}

/// How many instances run the new release once a wave is done.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WaveSize {
    Instances(usize),
    Percent(u32),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Wave {
    pub size: WaveSize,
    /// How long the wave's instances serve, judged against the unmoved
    /// ones, before the next wave starts (serialized in seconds).
    #[serde(serialize_with = "seconds")]
    pub bake: Duration,
}

/// The canary-versus-baseline comparison of a mixed fleet.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CanaryPolicy {
    /// Hash requests each side must have served during the bake; fewer on
    /// either side and the comparison is inconclusive (never a pass).
    pub min_requests: u64,
    /// The most the canary's extraction-failure rate may exceed the
    /// baseline's, in percentage points, before a significant difference is
    /// a violation.
    pub max_increase: f64,
    /// Latency comparison (hash-time histograms, one-sided grouped
    /// Mann-Whitney): the p-value must be below this to count (default 0.01).
    pub latency_alpha: f64,
    /// ... and Cliff's delta (canary slower) must reach this (default 0.474,
    /// the conventional "large").
    pub latency_min_effect: f64,
    /// Timed hash requests each side needs; fewer is inconclusive (default 100).
    pub latency_min_samples: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fleet {
    pub instances: Vec<Instance>,
    pub waves: Vec<Wave>,
    pub canary: CanaryPolicy,
    /// Between marking an instance draining and changing it (in seconds).
    #[serde(serialize_with = "seconds")]
    pub drain: Duration,
}

/// A duration as seconds, as the events print durations.
fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Fleet {
    /// The number of instances on the new release after each wave:
    /// strictly growing, the last one the whole fleet.
    pub fn targets(&self) -> Vec<usize> {
        targets(&self.waves, self.instances.len())
    }
}

fn targets(waves: &[Wave], n: usize) -> Vec<usize> {
    waves
        .iter()
        .map(|w| match w.size {
            WaveSize::Instances(k) => k.min(n),
            // Rounded up: 50 % of 3 is 2, so a wave never moves nothing.
            WaveSize::Percent(p) => (n * p as usize).div_ceil(100),
        })
        .collect()
}

/// Validates and resolves `instances` and `rollout` of environment `path`.
pub(super) fn resolve(
    file: &Path,
    root: &Path,
    path: &str,
    instances: &[RawInstance],
    rollout: &RawRollout,
) -> Result<Fleet, ConfigError> {
    if instances.is_empty() {
        return Err(ConfigError::new(
            file,
            format!("{path}.instances"),
            "expected at least one instance (or no \"instances\" for a single-instance environment)",
        ));
    }
    let mut out: Vec<Instance> = Vec::new();
    for (i, raw) in instances.iter().enumerate() {
        let ip = format!("{path}.instances[{i}]");
        let inst = resolve_instance(file, root, &ip, raw)?;
        if out.iter().any(|o| o.name == inst.name) {
            return Err(ConfigError::new(
                file,
                format!("{ip}.name"),
                format!("instance {:?} is listed twice", inst.name),
            ));
        }
        if out.iter().any(|o| o.install_root == inst.install_root) {
            return Err(ConfigError::new(
                file,
                format!("{ip}.install_root"),
                "another instance has this install root: each instance needs its own",
            ));
        }
        out.push(inst);
    }
    let waves = resolve_waves(file, &format!("{path}.rollout.waves"), rollout, out.len())?;
    Ok(Fleet {
        canary: resolve_canary(file, &format!("{path}.rollout.canary"), &rollout.canary)?,
        drain: match &rollout.drain {
            None | Some(Value::Null) => Duration::from_secs(2),
            Some(v) => duration_in(
                file,
                &format!("{path}.rollout.drain"),
                v,
                1.0,
                "seconds",
                DRAIN,
            )?,
        },
        instances: out,
        waves,
    })
}

fn resolve_instance(
    file: &Path,
    root: &Path,
    ip: &str,
    raw: &RawInstance,
) -> Result<Instance, ConfigError> {
    super::super::check_env_name(file, &format!("{ip}.name"), &raw.name)?;
    check_path(file, &format!("{ip}.install_root"), &raw.install_root)?;
    if let Some(d) = &raw.data_dir {
        check_path(file, &format!("{ip}.data_dir"), d)?;
    }
    check_urls(
        file,
        ip,
        [
            ("health_url", &raw.health_url),
            ("metrics_url", &raw.metrics_url),
            ("queue_url", &raw.queue_url),
        ],
    )?;
    let install_root = root.join(&raw.install_root);
    Ok(Instance {
        name: raw.name.clone(),
        data_dir: raw
            .data_dir
            .as_deref()
            .map(|d| root.join(d))
            .unwrap_or_else(|| install_root.join("data")),
        install_root,
        service: with_instance(&raw.service, &raw.name),
        health_url: raw.health_url.clone(),
        metrics_url: raw.metrics_url.clone(),
        queue_url: raw.queue_url.clone(),
    })
}

/// `{instance}` replaced by `name` in every command of a `commands` kind.
pub fn with_instance(service: &ServiceControl, name: &str) -> ServiceControl {
    let fill = |c: &String| c.replace(INSTANCE_PLACEHOLDER, name);
    match service {
        ServiceControl::Local { .. } => service.clone(),
        ServiceControl::Commands {
            start,
            stop,
            restart,
            drain,
            undrain,
            start_timeout,
            stop_timeout,
        } => ServiceControl::Commands {
            start: fill(start),
            stop: fill(stop),
            restart: restart.as_ref().map(fill),
            drain: drain.as_ref().map(fill),
            undrain: undrain.as_ref().map(fill),
            start_timeout: start_timeout.clone(),
            stop_timeout: stop_timeout.clone(),
        },
    }
}

fn resolve_waves(
    file: &Path,
    path: &str,
    rollout: &RawRollout,
    n: usize,
) -> Result<Vec<Wave>, ConfigError> {
    let Some(raw) = &rollout.waves else {
        // A canary first, then the rest.
        return Ok(vec![
            Wave {
                size: WaveSize::Instances(1),
                bake: Duration::from_secs(600),
            },
            Wave {
                size: WaveSize::Percent(100),
                bake: Duration::ZERO,
            },
        ]);
    };
    let mut waves = Vec::new();
    for (i, w) in raw.iter().enumerate() {
        let wp = format!("{path}[{i}]");
        let size = match (&w.instances, &w.percent) {
            (Some(v), None) => WaveSize::Instances(
                usize::try_from(whole_in(file, &format!("{wp}.instances"), v, &(1..=10_000))?)
                    .unwrap_or(usize::MAX),
            ),
            (None, Some(v)) => WaveSize::Percent(
                u32::try_from(whole_in(file, &format!("{wp}.percent"), v, &(1..=100))?)
                    .unwrap_or(100),
            ),
            _ => {
                return Err(ConfigError::new(
                    file,
                    wp,
                    "give either \"instances\" (how many run the new release after this wave) or \"percent\" (the share of the fleet), not both",
                ))
            }
        };
        let bake = match &w.bake {
            None | Some(Value::Null) => Duration::ZERO,
            Some(v) => duration_in(file, &format!("{wp}.bake"), v, 1.0, "seconds", BAKE)?,
        };
        waves.push(Wave { size, bake });
    }
    check_targets(file, path, &waves, n)?;
    Ok(waves)
}

/// Every wave moves at least one more instance, and the last moves the rest.
fn check_targets(file: &Path, path: &str, waves: &[Wave], n: usize) -> Result<(), ConfigError> {
    let t = targets(waves, n);
    let mut before = 0;
    for (i, now) in t.iter().enumerate() {
        if *now <= before {
            return Err(ConfigError::new(
                file,
                format!("{path}[{i}]"),
                format!("this wave moves no instance: {before} of {n} already run the new release after the wave before it"),
            ));
        }
        before = *now;
    }
    if before != n {
        return Err(ConfigError::new(
            file,
            path,
            format!("the last wave must move the whole fleet ({n} instances), found {before}: end with {{\"percent\": 100}}"),
        ));
    }
    Ok(())
}

fn resolve_canary(file: &Path, path: &str, c: &RawCanary) -> Result<CanaryPolicy, ConfigError> {
    let min_requests = match &c.min_requests {
        None | Some(Value::Null) => 100,
        Some(v) => whole_in(
            file,
            &format!("{path}.min_requests"),
            v,
            &(1..=1_000_000_000),
        )?,
    };
    let max_increase = match &c.max_increase {
        None | Some(Value::Null) => 2.0,
        Some(v) => match v.as_f64() {
            Some(x) if (0.0..=100.0).contains(&x) => x,
            _ => {
                return Err(ConfigError::new(
                    file,
                    format!("{path}.max_increase"),
                    format!("expected percentage points from 0 to 100, found {v}"),
                ))
            }
        },
    };
    let fraction = |v: &Option<Value>, name: &str, default: f64, lo: f64, hi: f64| match v {
        None | Some(Value::Null) => Ok(default),
        Some(v) => match v.as_f64() {
            Some(x) if x > lo && x <= hi => Ok(x),
            _ => Err(ConfigError::new(
                file,
                format!("{path}.{name}"),
                format!("expected a number above {lo} and at most {hi}, found {v}"),
            )),
        },
    };
    let latency_min_samples = match &c.latency_min_samples {
        None | Some(Value::Null) => 100,
        Some(v) => whole_in(
            file,
            &format!("{path}.latency_min_samples"),
            v,
            &(1..=1_000_000_000),
        )?,
    };
    Ok(CanaryPolicy {
        min_requests,
        max_increase,
        latency_alpha: fraction(&c.latency_alpha, "latency_alpha", 0.01, 0.0, 0.5)?,
        latency_min_effect: fraction(&c.latency_min_effect, "latency_min_effect", 0.474, 0.0, 1.0)?,
        latency_min_samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wave(size: WaveSize) -> Wave {
        Wave {
            size,
            bake: Duration::ZERO,
        }
    }

    #[test]
    fn the_issue_plan_moves_one_then_half_then_all() {
        let plan = [
            wave(WaveSize::Instances(1)),
            wave(WaveSize::Percent(50)),
            wave(WaveSize::Percent(100)),
        ];
        assert_eq!(targets(&plan, 4), vec![1, 2, 4]);
        assert_eq!(targets(&plan, 3), vec![1, 2, 3]);
        assert!(check_targets(Path::new("e.json"), "w", &plan, 4).is_ok());
        // With two instances the 50 % wave moves nobody new: refused.
        let e = check_targets(Path::new("e.json"), "w", &plan, 2)
            .expect_err("a wave that moves nobody");
        assert_eq!(e.path, "w[1]");
        let short = [wave(WaveSize::Percent(50))];
        let e = check_targets(Path::new("e.json"), "w", &short, 4)
            .expect_err("a plan that stops at half");
        assert!(e.message.contains("whole fleet"), "{e}");
    }

    #[test]
    fn instance_placeholder_fills_every_command() {
        let s = ServiceControl::Commands {
            start: "ssh {instance} systemctl start dhash".into(),
            stop: "ssh {instance} systemctl stop dhash".into(),
            restart: None,
            drain: Some("lb drain {instance}".into()),
            undrain: None,
            start_timeout: None,
            stop_timeout: None,
        };
        let ServiceControl::Commands { start, drain, .. } = with_instance(&s, "web-2") else {
            panic!("kind changed");
        };
        assert_eq!(start, "ssh web-2 systemctl start dhash");
        assert_eq!(drain.as_deref(), Some("lb drain web-2"));
    }
}
