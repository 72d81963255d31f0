//! `environments.json`: where an environment lives and how to reach it. The
//! shipped `staging` and `production` run the reference service on loopback;
//! pointing one at a real host is editing this file, nothing else.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::gates::{known, refuse_placeholders_in_production};
use super::limits::{self, DurationRange};
use super::{
    duration_from_value, duration_in, find_placeholders, parse_json, read_file, whole_in,
    ConfigError, Placeholder,
};
use crate::event::Level;

pub mod fleet;

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
        /// Fleets: tells the balancer to stop sending to this instance
        /// before it is changed (e.g. `haproxy ... disable server`).
        #[serde(default)]
        drain: Option<String>,
        /// Fleets: puts the instance back into the balancer.
        #[serde(default)]
        undrain: Option<String>,
        #[serde(default)]
        start_timeout: Option<Value>,
        #[serde(default)]
        stop_timeout: Option<Value>,
    },
}

/// One cadence phase as written: poll `every`, for a length (`for`) or up to
/// a time since the window started (`until`, as seed 004 says "to T+15").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCadence {
    pub every: Value,
    #[serde(default, rename = "for")]
    pub for_: Option<Value>,
    #[serde(default)]
    pub until: Option<Value>,
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
    checks_required: Option<Value>,
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
    backups: Option<Value>,
    #[serde(default)]
    releases: Option<Value>,
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
    /// A Prometheus server gates may read their figures from (issue 17).
    #[serde(default)]
    prometheus: Option<crate::promql::RawServer>,
    /// The escalation policy (absent: the runbooks' default).
    #[serde(default)]
    escalation: Option<super::escalation::RawEscalation>,
    #[serde(default)]
    description: Option<String>,
    /// A fleet: the instances the waves move (see [`fleet`]).
    #[serde(default)]
    instances: Option<Vec<fleet::RawInstance>>,
    /// A fleet's waves plan, canary comparison and drain time.
    #[serde(default)]
    rollout: Option<fleet::RawRollout>,
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
    /// The Prometheus server of the gates with `"source": "prometheus"`.
    pub prometheus: Option<crate::promql::Client>,
    /// A fleet environment's instances and rollout; `None`: one instance.
    pub fleet: Option<fleet::Fleet>,
    /// Who is told at each level and when the environment escalates.
    pub escalation: super::escalation::EscalationPolicy,
}

impl EnvConfig {
    /// The environment as one of its fleet's instances sees it: that
    /// instance's install root, data folder, service control and URLs;
    /// the database, backups, logs, notifications, gates and health policy
    /// are the fleet's (one schema, migrated once).
    pub fn instance_env(&self, inst: &fleet::Instance) -> EnvConfig {
        EnvConfig {
            install_root: inst.install_root.clone(),
            data_dir: inst.data_dir.clone(),
            service: inst.service.clone(),
            health_url: inst.health_url.clone(),
            metrics_url: inst.metrics_url.clone(),
            queue_url: inst.queue_url.clone(),
            fleet: None,
            ..self.clone()
        }
    }

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
        if let Some(d) = &raw.dist_dir {
            check_path(file, "dist_dir", d)?;
        }
        for (name, env) in &raw.environments {
            let path = format!("environments.{name}");
            super::check_env_name(file, &path, name)?;
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

/// An optional duration in seconds (or humantime), checked against its range.
fn dur(
    file: &Path,
    path: &str,
    v: &Option<Value>,
    default: Duration,
    range: DurationRange,
) -> Result<Duration, ConfigError> {
    match v {
        None | Some(Value::Null) => Ok(default),
        Some(v) => duration_in(file, path, v, 1.0, "seconds", range),
    }
}

/// An optional whole number checked against its range.
fn whole(
    file: &Path,
    path: &str,
    v: &Option<Value>,
    default: u64,
    range: &std::ops::RangeInclusive<u64>,
) -> Result<u64, ConfigError> {
    match v {
        None | Some(Value::Null) => Ok(default),
        Some(v) => whole_in(file, path, v, range),
    }
}

/// Validates cadence phases (`every` with `for` or `until`); `until` values
/// must grow from phase to phase. Shared by environments.json's
/// `monitor.cadence` and a gates file's `monitoring.cadence`.
pub(crate) fn parse_cadence(
    file: &Path,
    path: &str,
    phases: &[RawCadence],
) -> Result<Vec<CadencePhase>, ConfigError> {
    if phases.is_empty() {
        return Err(ConfigError::new(file, path, "expected at least one phase"));
    }
    let mut out = Vec::new();
    // Where the previous phase ended, since the window started.
    let mut end = Some(Duration::ZERO);
    for (i, p) in phases.iter().enumerate() {
        let pp = format!("{path}[{i}]");
        let every = duration_in(
            file,
            &format!("{pp}.every"),
            &p.every,
            1.0,
            "seconds",
            limits::CADENCE_EVERY,
        )?;
        let span = |field: &str, v: &Value| {
            duration_in(
                file,
                &format!("{pp}.{field}"),
                v,
                1.0,
                "seconds",
                limits::CADENCE_SPAN,
            )
        };
        let for_ = match (&p.for_, &p.until) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    file,
                    pp,
                    "give either \"for\" (the phase's length) or \"until\" (its end since the window started), not both",
                ))
            }
            (None | Some(Value::Null), None | Some(Value::Null)) => None,
            (Some(v), _) => Some(span("for", v)?),
            (_, Some(v)) => {
                let until = span("until", v)?;
                let Some(start) = end else {
                    return Err(ConfigError::new(
                        file,
                        format!("{pp}.until"),
                        format!("phase {} before it runs to the end of the window, so this phase never starts", i.saturating_sub(1)),
                    ));
                };
                if until <= start {
                    return Err(ConfigError::new(
                        file,
                        format!("{pp}.until"),
                        format!(
                            "expected a time after the previous phase's end ({}), found {}",
                            crate::duration::human(start),
                            crate::duration::human(until)
                        ),
                    ));
                }
                Some(until - start)
            }
        };
        end = match (end, for_) {
            (Some(e), Some(f)) => e.checked_add(f),
            _ => None,
        };
        out.push(CadencePhase { every, for_ });
    }
    Ok(out)
}

/// The longest path the file may give (Linux's PATH_MAX) and the longest
/// part of one (NAME_MAX): longer ones fail later, in the middle of a change.
pub const MAX_PATH_BYTES: usize = 4096;
pub const MAX_PATH_PART_BYTES: usize = 255;

/// A path field: not empty (that would be the project folder itself), no NUL,
/// within the file system's limits.
fn check_path(file: &Path, path: &str, value: &str) -> Result<(), ConfigError> {
    let problem = if value.trim().is_empty() {
        Some(
            "expected a path, found an empty string (that would be the project folder itself)"
                .to_string(),
        )
    } else if value.contains('\0') {
        Some("expected a path, found a NUL character in it".to_string())
    } else if value.len() > MAX_PATH_BYTES {
        Some(format!(
            "expected a path of at most {MAX_PATH_BYTES} bytes, found {} bytes",
            value.len()
        ))
    } else {
        value
            .split(['/', '\\'])
            .find(|p| p.len() > MAX_PATH_PART_BYTES)
            .map(|part| {
                format!(
                    "expected path parts of at most {MAX_PATH_PART_BYTES} bytes, found one of {} bytes",
                    part.len()
                )
            })
    };
    match problem {
        Some(m) => Err(ConfigError::new(file, path, m)),
        None => Ok(()),
    }
}

/// The port of `http://host:port/...`, when one is written.
fn url_port(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    let after_host = match authority.rfind(']') {
        Some(i) => &authority[i + 1..],
        None => authority,
    };
    after_host.rsplit_once(':').map(|(_, p)| p)
}

fn check_port(file: &Path, path: &str, port: &str, written: &str) -> Result<(), ConfigError> {
    let ok = port
        .parse::<u64>()
        .ok()
        .filter(|p| limits::PORT.contains(p))
        .is_some();
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            file,
            path,
            format!(
                "expected a port from {} to {}, found {port:?} in {written:?}",
                limits::PORT.start(),
                limits::PORT.end()
            ),
        ))
    }
}

/// http(s) URLs with a valid port when one is written.
fn check_urls<'a>(
    file: &Path,
    path: &str,
    urls: impl IntoIterator<Item = (&'a str, &'a String)>,
) -> Result<(), ConfigError> {
    for (field, url) in urls {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ConfigError::new(
                file,
                format!("{path}.{field}"),
                format!("expected an http:// or https:// URL, found {url:?}"),
            ));
        }
        if let Some(port) = url_port(url) {
            check_port(file, &format!("{path}.{field}"), port, url)?;
        }
    }
    Ok(())
}

fn resolve_env(
    file: &Path,
    root: &Path,
    path: &str,
    name: &str,
    e: &RawEnv,
) -> Result<EnvConfig, ConfigError> {
    let abs = |p: &str| root.join(p);
    let n = &e.notifications;
    for (field, value) in [
        ("install_root", Some(&e.install_root)),
        ("data_dir", Some(&e.data_dir)),
        ("database", Some(&e.database)),
        ("backup_dir", e.backup_dir.as_ref()),
        ("log_dir", e.log_dir.as_ref()),
        ("notifications.fallback_file", n.fallback_file.as_ref()),
        ("notifications.out_dir", n.out_dir.as_ref()),
    ] {
        if let Some(v) = value {
            check_path(file, &format!("{path}.{field}"), v)?;
        }
    }
    if let ServiceControl::Commands {
        start,
        stop,
        restart,
        ..
    } = &e.service
    {
        for (field, cmd) in [
            ("start", Some(start)),
            ("stop", Some(stop)),
            ("restart", restart.as_ref()),
        ] {
            if cmd.is_some_and(|c| c.trim().is_empty()) {
                return Err(ConfigError::new(
                    file,
                    format!("{path}.service.{field}"),
                    "expected a shell command, found an empty string",
                ));
            }
        }
    }
    check_urls(
        file,
        path,
        [
            ("health_url", &e.health_url),
            ("metrics_url", &e.metrics_url),
            ("queue_url", &e.queue_url),
        ],
    )?;
    let (start_timeout, stop_timeout) = e.service.timeout_values();
    for (field, v) in [
        ("start_timeout", start_timeout),
        ("stop_timeout", stop_timeout),
    ] {
        dur(
            file,
            &format!("{path}.service.{field}"),
            v,
            Duration::ZERO,
            limits::SERVICE_TIMEOUT,
        )?;
    }
    if let ServiceControl::Local { bind, .. } = &e.service {
        let bind_path = format!("{path}.service.bind");
        if bind.parse::<std::net::SocketAddr>().is_err() {
            // A port out of range fails the parse too: say which part is wrong.
            if let Some((_, port)) = bind.rsplit_once(':') {
                if port.chars().all(|c| c.is_ascii_digit()) && !port.is_empty() {
                    check_port(file, &bind_path, port, bind)?;
                }
            }
            return Err(ConfigError::new(
                file,
                bind_path,
                format!("expected an address like 127.0.0.1:3000, found {bind:?}"),
            ));
        }
        if let Some((_, port)) = bind.rsplit_once(':') {
            check_port(file, &bind_path, port, bind)?;
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
        Some(phases) => parse_cadence(file, &format!("{path}.monitor.cadence"), phases)?,
    };
    let monitor = MonitorSettings {
        duration: dur(
            file,
            &format!("{path}.monitor.duration"),
            &m.duration,
            Duration::from_secs(if production { 3600 } else { 1800 }),
            limits::MONITOR_DURATION,
        )?,
        cadence,
        probe_timeout: dur(
            file,
            &format!("{path}.monitor.probe_timeout"),
            &m.probe_timeout,
            Duration::from_secs(5),
            limits::PROBE_TIMEOUT,
        )?,
    };
    let h = &e.health;
    let health = HealthPolicy {
        checks_required: whole(
            file,
            &format!("{path}.health.checks_required"),
            &h.checks_required,
            3,
            &limits::HEALTH_CHECKS_REQUIRED,
        )?
        .try_into()
        .unwrap_or(u32::MAX),
        interval: dur(
            file,
            &format!("{path}.health.interval"),
            &h.interval,
            Duration::from_secs(2),
            limits::HEALTH_INTERVAL,
        )?,
        timeout: dur(
            file,
            &format!("{path}.health.timeout"),
            &h.timeout,
            Duration::from_secs(60),
            limits::HEALTH_TIMEOUT,
        )?,
    };
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
            limits::QUIET_PERIOD,
        )?,
        routes: n.routes.clone().unwrap_or_else(default_routes),
        timeout: dur(
            file,
            &format!("{path}.notifications.timeout"),
            &n.timeout,
            Duration::from_secs(20),
            limits::NOTIFY_TIMEOUT,
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
    let r = &e.retention;
    let retention = Retention {
        backups: as_count(whole(
            file,
            &format!("{path}.retention.backups"),
            &r.backups,
            10,
            &limits::RETENTION_BACKUPS,
        )?),
        releases: as_count(whole(
            file,
            &format!("{path}.retention.releases"),
            &r.releases,
            5,
            &limits::RETENTION_RELEASES,
        )?),
    };
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
        retention,
        prometheus: crate::promql::resolve_server(
            file,
            &format!("{path}.prometheus"),
            &e.prometheus,
        )?,
        fleet: match &e.instances {
            None => None,
            Some(list) => Some(fleet::resolve(
                file,
                root,
                path,
                list,
                &e.rollout.clone().unwrap_or_default(),
            )?),
        },
        escalation: super::escalation::resolve(
            file,
            &format!("{path}.escalation"),
            e.escalation.as_ref(),
        )?,
    })
}

/// A count already checked against a range far below `usize::MAX`.
fn as_count(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

pub const CHANNELS: &[&str] = &[
    "slack",
    "teams",
    "discord",
    "email",
    "webhook",
    "pagerduty",
    "opsgenie",
];

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
