//! `environments.json`: where an environment lives and how to reach it. The
//! shipped `staging` and `production` run the reference service on loopback;
//! pointing one at a real host is editing this file, nothing else.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::gates::{known, refuse_placeholders_in_production};
use super::{
    duration_from_value, find_placeholders, parse_json, read_file, ConfigError, Placeholder,
};
use crate::event::Level;

/// How the environment's service is started, stopped and restarted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ServiceControl {
    /// The reference dhash service, run from `<install_root>/current` in the
    /// background with a pidfile and log under the install root.
    Local {
        bind: String,
        #[serde(default)]
        start_timeout: Option<Value>,
        #[serde(default)]
        stop_timeout: Option<Value>,
    },
    /// Shell commands for a real host (for example `systemctl restart dhash`).
    Commands {
        start: String,
        stop: String,
        #[serde(default)]
        restart: Option<String>,
        #[serde(default)]
        start_timeout: Option<Value>,
        #[serde(default)]
        stop_timeout: Option<Value>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCadence {
    every: Value,
    #[serde(default, rename = "for")]
    for_: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMonitor {
    #[serde(default)]
    duration: Option<Value>,
    #[serde(default)]
    cadence: Option<Vec<RawCadence>>,
    #[serde(default)]
    probe_timeout: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    #[serde(default)]
    checks_required: Option<u32>,
    #[serde(default)]
    interval: Option<Value>,
    #[serde(default)]
    timeout: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// slack, teams, discord, email, webhook.
    pub channel: String,
    /// The least level this channel receives.
    pub min_level: Level,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    #[serde(default)]
    fallback_file: Option<String>,
    #[serde(default)]
    out_dir: Option<String>,
    #[serde(default)]
    quiet_period: Option<Value>,
    #[serde(default)]
    routes: Option<Vec<Route>>,
    #[serde(default)]
    timeout: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    #[serde(default)]
    backups: Option<usize>,
    #[serde(default)]
    releases: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnv {
    install_root: String,
    data_dir: String,
    database: String,
    service: ServiceControl,
    health_url: String,
    metrics_url: String,
    queue_url: String,
    #[serde(default)]
    backup_dir: Option<String>,
    #[serde(default)]
    log_dir: Option<String>,
    #[serde(default)]
    notifications: RawNotify,
    #[serde(default)]
    monitor: RawMonitor,
    #[serde(default)]
    health: RawHealth,
    #[serde(default)]
    retention: RawRetention,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopology {
    #[serde(default)]
    dist_dir: Option<String>,
    environments: BTreeMap<String, RawEnv>,
    #[serde(default)]
    description: Option<String>,
}

/// One polling phase: poll `every` for `for_` (the last phase runs to the end).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CadencePhase {
    pub every: Duration,
    pub for_: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MonitorSettings {
    pub duration: Duration,
    pub cadence: Vec<CadencePhase>,
    pub probe_timeout: Duration,
}

impl MonitorSettings {
    /// The poll interval in force `elapsed` into the window.
    pub fn interval_at(&self, elapsed: Duration) -> Duration {
        let mut start = Duration::ZERO;
        for phase in &self.cadence {
            match phase.for_ {
                Some(len) if elapsed >= start + len => start += len,
                _ => return phase.every,
            }
        }
        self.cadence
            .last()
            .map(|p| p.every)
            .unwrap_or(Duration::from_secs(30))
    }
}

/// Post-change health verification: `checks_required` OK answers in a row,
/// `interval` apart, within `timeout`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthPolicy {
    pub checks_required: u32,
    pub interval: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NotifySettings {
    pub fallback_file: PathBuf,
    pub out_dir: PathBuf,
    pub quiet_period: Duration,
    pub routes: Vec<Route>,
    /// The most one notify call may block across all channels and retries.
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Retention {
    pub backups: usize,
    pub releases: usize,
}

/// A resolved environment: every path absolute.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnvConfig {
    pub name: String,
    pub install_root: PathBuf,
    pub data_dir: PathBuf,
    pub database: PathBuf,
    pub service: ServiceControl,
    pub health_url: String,
    pub metrics_url: String,
    pub queue_url: String,
    pub backup_dir: PathBuf,
    pub log_dir: PathBuf,
    pub notify: NotifySettings,
    pub monitor: MonitorSettings,
    pub health: HealthPolicy,
    pub retention: Retention,
}

impl EnvConfig {
    pub fn releases_dir(&self) -> PathBuf {
        self.install_root.join("releases")
    }
    /// The link switched atomically to the serving release.
    pub fn current_link(&self) -> PathBuf {
        self.install_root.join("current")
    }
    pub fn lock_path(&self) -> PathBuf {
        self.install_root.join(".lock")
    }
    pub fn ledger_path(&self) -> PathBuf {
        self.install_root.join("ledger.jsonl")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.install_root.join("service.pid")
    }
    pub fn service_log(&self) -> PathBuf {
        self.install_root.join("service.log")
    }
    /// Where replaced (bad) state is kept for root-cause analysis, outside
    /// the backups folder so the seeds' latest-backup glob never picks it.
    pub fn quarantine_dir(&self) -> PathBuf {
        self.install_root.join("quarantine")
    }
    pub fn ledger(&self) -> crate::ledger::Ledger {
        crate::ledger::Ledger::new(self.ledger_path())
    }
    pub fn lock(&self, tool: &str) -> anyhow::Result<crate::lock::EnvLock> {
        crate::lock::EnvLock::acquire(&self.lock_path(), &self.name, tool)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    pub file: PathBuf,
    pub root: PathBuf,
    pub dist_dir: PathBuf,
    pub environments: BTreeMap<String, EnvConfig>,
    pub placeholders: Vec<Placeholder>,
}

impl Topology {
    pub fn load(file: &Path) -> Result<Topology, ConfigError> {
        let text = read_file(file)?;
        Self::parse(file, &text)
    }

    /// Parses; relative paths are resolved against the file's folder.
    pub fn parse(file: &Path, text: &str) -> Result<Topology, ConfigError> {
        let raw: RawTopology = parse_json(file, text)?;
        let doc: Value = parse_json(file, text)?;
        let root = file
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        let root = std::path::absolute(&root).unwrap_or(root);
        let mut environments = BTreeMap::new();
        for (name, env) in &raw.environments {
            let path = format!("environments.{name}");
            environments.insert(name.clone(), resolve_env(file, &root, &path, name, env)?);
        }
        Ok(Topology {
            file: file.to_path_buf(),
            dist_dir: root.join(raw.dist_dir.as_deref().unwrap_or("dist")),
            root,
            environments,
            placeholders: find_placeholders(file, &doc),
        })
    }

    /// One environment; an unknown name lists the known ones.
    pub fn env(&self, name: &str) -> Result<&EnvConfig, ConfigError> {
        self.environments.get(name).ok_or_else(|| {
            ConfigError::new(
                &self.file,
                format!("environments.{name}"),
                format!(
                    "unknown environment {name:?}; known: {}",
                    known(self.environments.keys())
                ),
            )
        })
    }

    pub fn check_placeholders(&self, env: &str) -> Result<&[Placeholder], ConfigError> {
        refuse_placeholders_in_production(env, &self.placeholders)?;
        Ok(&self.placeholders)
    }
}

fn dur(
    file: &Path,
    path: &str,
    v: &Option<Value>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match v {
        None | Some(Value::Null) => Ok(default),
        Some(v) => duration_from_value(v, 1.0).map_err(|m| ConfigError::new(file, path, m)),
    }
}

fn resolve_env(
    file: &Path,
    root: &Path,
    path: &str,
    name: &str,
    e: &RawEnv,
) -> Result<EnvConfig, ConfigError> {
    let abs = |p: &str| root.join(p);
    for (field, url) in [
        ("health_url", &e.health_url),
        ("metrics_url", &e.metrics_url),
        ("queue_url", &e.queue_url),
    ] {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ConfigError::new(
                file,
                format!("{path}.{field}"),
                format!("expected an http:// or https:// URL, found {url:?}"),
            ));
        }
    }
    let (start_timeout, stop_timeout) = e.service.timeout_values();
    for (field, v) in [
        ("start_timeout", start_timeout),
        ("stop_timeout", stop_timeout),
    ] {
        dur(file, &format!("{path}.service.{field}"), v, Duration::ZERO)?;
    }
    if let ServiceControl::Local { bind, .. } = &e.service {
        if bind.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::new(
                file,
                format!("{path}.service.bind"),
                format!("expected an address like 127.0.0.1:3000, found {bind:?}"),
            ));
        }
    }
    let production = name == "production";
    let m = &e.monitor;
    let cadence = match &m.cadence {
        None => vec![
            CadencePhase {
                every: Duration::from_secs(30),
                for_: Some(Duration::from_secs(300)),
            },
            CadencePhase {
                every: Duration::from_secs(120),
                for_: None,
            },
        ],
        Some(phases) if phases.is_empty() => {
            return Err(ConfigError::new(
                file,
                format!("{path}.monitor.cadence"),
                "expected at least one phase",
            ))
        }
        Some(phases) => {
            let mut out = Vec::new();
            for (i, p) in phases.iter().enumerate() {
                let pp = format!("{path}.monitor.cadence[{i}]");
                let every = duration_from_value(&p.every, 1.0)
                    .map_err(|m| ConfigError::new(file, format!("{pp}.every"), m))?;
                if every.is_zero() {
                    return Err(ConfigError::new(
                        file,
                        format!("{pp}.every"),
                        "expected an interval > 0",
                    ));
                }
                let for_ = match &p.for_ {
                    None | Some(Value::Null) => None,
                    Some(v) => Some(
                        duration_from_value(v, 1.0)
                            .map_err(|m| ConfigError::new(file, format!("{pp}.for"), m))?,
                    ),
                };
                out.push(CadencePhase { every, for_ });
            }
            out
        }
    };
    let monitor = MonitorSettings {
        duration: dur(
            file,
            &format!("{path}.monitor.duration"),
            &m.duration,
            Duration::from_secs(if production { 3600 } else { 1800 }),
        )?,
        cadence,
        probe_timeout: dur(
            file,
            &format!("{path}.monitor.probe_timeout"),
            &m.probe_timeout,
            Duration::from_secs(5),
        )?,
    };
    let h = &e.health;
    let health = HealthPolicy {
        checks_required: h.checks_required.unwrap_or(3).max(1),
        interval: dur(
            file,
            &format!("{path}.health.interval"),
            &h.interval,
            Duration::from_secs(2),
        )?,
        timeout: dur(
            file,
            &format!("{path}.health.timeout"),
            &h.timeout,
            Duration::from_secs(60),
        )?,
    };
    let n = &e.notifications;
    let log_dir = abs(e.log_dir.as_deref().unwrap_or("monitor_logs"));
    let notify = NotifySettings {
        fallback_file: n
            .fallback_file
            .as_deref()
            .map(abs)
            .unwrap_or_else(|| log_dir.join("notification_fallback.jsonl")),
        out_dir: abs(n.out_dir.as_deref().unwrap_or("notifications_out")),
        quiet_period: dur(
            file,
            &format!("{path}.notifications.quiet_period"),
            &n.quiet_period,
            Duration::from_secs(600),
        )?,
        routes: n.routes.clone().unwrap_or_else(default_routes),
        timeout: dur(
            file,
            &format!("{path}.notifications.timeout"),
            &n.timeout,
            Duration::from_secs(20),
        )?,
    };
    for (i, r) in notify.routes.iter().enumerate() {
        if !CHANNELS.contains(&r.channel.as_str()) {
            return Err(ConfigError::new(
                file,
                format!("{path}.notifications.routes[{i}].channel"),
                format!(
                    "unknown channel {:?}; expected one of {}",
                    r.channel,
                    CHANNELS.join(", ")
                ),
            ));
        }
    }
    Ok(EnvConfig {
        name: name.to_string(),
        install_root: abs(&e.install_root),
        data_dir: abs(&e.data_dir),
        database: abs(&e.database),
        service: e.service.clone(),
        health_url: e.health_url.clone(),
        metrics_url: e.metrics_url.clone(),
        queue_url: e.queue_url.clone(),
        backup_dir: abs(e.backup_dir.as_deref().unwrap_or("backups")),
        log_dir,
        notify,
        monitor,
        health,
        retention: Retention {
            backups: e.retention.backups.unwrap_or(10).max(1),
            releases: e.retention.releases.unwrap_or(5).max(2),
        },
    })
}

pub const CHANNELS: &[&str] = &["slack", "teams", "discord", "email", "webhook"];

fn default_routes() -> Vec<Route> {
    vec![
        Route {
            channel: "slack".into(),
            min_level: Level::Info,
        },
        Route {
            channel: "teams".into(),
            min_level: Level::Warning,
        },
        Route {
            channel: "discord".into(),
            min_level: Level::Warning,
        },
        Route {
            channel: "email".into(),
            min_level: Level::Critical,
        },
        Route {
            channel: "webhook".into(),
            min_level: Level::Info,
        },
    ]
}

impl ServiceControl {
    /// Start (until `/health` answers) and stop timeouts. Defaults: 30 s / 10 s
    /// for the local service; 60 s / 30 s for commands, as a unit manager
    /// may take a while. Validated with the file, so a bad value never gets here.
    pub fn timeouts(&self) -> (Duration, Duration) {
        let (start, stop) = self.timeout_values();
        let (start_default, stop_default) = match self {
            ServiceControl::Local { .. } => (30, 10),
            ServiceControl::Commands { .. } => (60, 30),
        };
        let get = |v: &Option<Value>, d: u64| {
            v.as_ref()
                .and_then(|v| duration_from_value(v, 1.0).ok())
                .unwrap_or(Duration::from_secs(d))
        };
        (get(start, start_default), get(stop, stop_default))
    }

    fn timeout_values(&self) -> (&Option<Value>, &Option<Value>) {
        match self {
            ServiceControl::Local {
                start_timeout,
                stop_timeout,
                ..
            }
            | ServiceControl::Commands {
                start_timeout,
                stop_timeout,
                ..
            } => (start_timeout, stop_timeout),
        }
    }
}
