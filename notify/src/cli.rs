//! The two binaries' arguments and runs (the `main.rs` files only parse and call).

use std::io::IsTerminal;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};
use serde_json::{json, Value};

use gates_core::exit::{usage_error, Exit, ToolError, EXIT_CODES_HELP};
use gates_core::project::Project;
use gates_core::{Emitter, Level};

use crate::{
    send_with, Channel, DeliveryReport, EventSelector, Notification, NotifyOptions, SendSettings,
};

/// The environment variables, for `--help`.
pub const ENV_HELP: &str =
    "Secrets come from environment variables, then from .env.notifications at the
project root (an empty variable counts as unset; a channel without its
variables is skipped and said so once):
  slack    SLACK_WEBHOOK or SLACK_WEBHOOK_URL
  teams    TEAMS_WEBHOOK or TEAMS_WEBHOOK_URL  (Workflows webhook; Adaptive Card)
  discord  DISCORD_WEBHOOK_URL
  webhook  WEBHOOK_URL  (generic JSON POST)
  pagerduty PAGERDUTY_ROUTING_KEY (Events API v2), PAGERDUTY_EVENTS_URL
  opsgenie OPSGENIE_API_KEY, OPSGENIE_API_URL (default https://api.opsgenie.com)
  tracker  gh (on PATH, logged in) or GH_TOKEN/GITHUB_TOKEN + DHASH_TRACKER_REPO
           (GITHUB_API_URL), or INCIDENT_WEBHOOK_URL
  email    EMAIL_TO (comma-separated), EMAIL_FROM, EMAIL_TRANSPORT=smtp|sendmail,
           EMAIL_SMTP_HOST, EMAIL_SMTP_PORT, EMAIL_SMTP_TLS=starttls|tls|none,
           EMAIL_USER, EMAIL_PASSWORD, EMAIL_SENDMAIL (sendmail command)
Email: EMAIL_TO alone (no EMAIL_SMTP_HOST) sends through the local sendmail,
looked up on PATH, then in /usr/sbin and /usr/lib; with none installed the
message goes to the fallback file with that reason.
Webhook URLs (and their path, query and token parts, wherever quoted), users
and passwords are redacted in every output and file.

.env.notifications (git-ignored): NAME=VALUE lines in dotenv format
('export ', # comments, '...' or \"...\" values; no $VAR expansion; a later line
wins). Only the variables above are read from it; a variable set in the real
environment, even empty, wins over the file. Its secret values are redacted
like the others. A line that cannot be read stops notify and deploy-notify
with exit 2, naming the file and line (never the value); other tools sending
through the library (the monitor) report it as a notify.misconfigured event
and use the environment only.

Routing: environments.json -> environments.<env>.notifications.routes
({channel, min_level}); timeout (whole call, all channels), quiet_period.
Not delivered (or --dry-run): one JSON line per channel appended to
notifications.fallback_file (default monitor_logs/notification_fallback.jsonl)
and one JSON file per notification in notifications.out_dir (default
notifications_out/).

Long messages are cut to each channel's limit with the marker \"… [truncated]\",
never rejected: Slack 3000 chars, Teams 12000, Discord 4096 (embed 6000),
email and generic webhook 65536; fields 4096 each, at most 50. The full text
is kept once, in the notification's file in out_dir (written whenever a text
was cut); each fallback line carries the first 8192 chars, message_chars and
full_text (that file's path).";

fn level_arg(s: &str) -> Result<Level, String> {
    s.parse::<Level>()
}

fn channels_arg(s: &str) -> Result<Vec<Channel>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(str::parse)
        .collect()
}

fn field_arg(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("{s:?}: expected KEY=VALUE")),
    }
}

/// The environment used when `--env` is not given, as in the runbooks'
/// `node scripts/notify.js --level warning --message "Test alert"`.
pub const DEFAULT_ENV: &str = "production";

/// Options both binaries share.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Environment (from environments.json): routes, timeout, fallback paths.
    /// Without it: production, as the runbooks' `notify.js --level warning --message ...` expects (said on stderr).
    #[arg(long, value_name = "ENV")]
    pub env: Option<String>,
    /// Send nothing; write what would have been sent to the fallback file and out_dir.
    #[arg(long)]
    pub dry_run: bool,
    /// Only these channels (comma-separated or repeated), still subject to routes.
    #[arg(long = "channel", value_name = "LIST", value_parser = channels_arg)]
    pub channels: Vec<Vec<Channel>>,
    /// More detail on stderr.
    #[arg(long, short)]
    pub verbose: bool,
}

impl Common {
    /// `--env`, or production said on stderr: never a silent default.
    pub fn env_name(&self) -> String {
        match &self.env {
            Some(e) => e.clone(),
            None => {
                eprintln!("notify: no --env given: using {DEFAULT_ENV}");
                DEFAULT_ENV.to_string()
            }
        }
    }

    fn settings(&self, no_dedup: bool) -> SendSettings {
        let only: Vec<Channel> = self.channels.iter().flatten().copied().collect();
        SendSettings {
            only: (!only.is_empty()).then_some(only),
            no_dedup,
            ..SendSettings::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// An alert (deduplicated within the quiet period).
    Alert,
    /// A test notification: titled as such, never deduplicated.
    Test,
}

/// Send a notification to the environment's channels, or one per routed event read on stdin.
#[derive(Debug, Parser)]
#[command(
    name = "notify",
    version,
    args_conflicts_with_subcommands = true,
    after_help = format!("With no --message and events piped on stdin, every event is forwarded to stdout
and those selected are sent: events at --min-event-level (default warning) or
above, plus these milestones whatever their level (--events to change them):
  deploy.started, deploy.healthy, deploy.failed, rollback.completed,
  rollback.failed, monitor.completed, gate.violated, gate.resolved, backup.failed
notify.* events are never re-sent. An alert is not sent again within the
environment's quiet_period (key: env + event + gate + release + level, or a
hash of level, title and message); --no-dedup and --type test always send.
Events: notify.sent, notify.fallback, notify.skipped, notify.recorded (dry run),
notify.completed.

Escalation (environments.<env>.escalation): 3+ warnings within 15m or a 2nd
critical move the environment one level up (escalation.raised, a ledger
record, a notification to that level's channels and contacts); an
auto-rollback reaches every configured channel; an auto-rollback incident
(an upstream incident.created) not acknowledged within 5m escalates one level
at each deadline until the top. `notify ack --env E [--incident ID] --by NAME`
stops it; `notify escalate --env E` checks the deadlines (cron, systemd
timer). State: <install_root>/escalation.json. DHASH_NOW (RFC 3339 or Unix
seconds) sets the clock escalation reasons with, for drills and tests.

{ENV_HELP}

{EXIT_CODES_HELP}")
)]
pub struct NotifyArgs {
    /// `ack` or `escalate` (see `notify ack --help`); none: send.
    #[command(subcommand)]
    pub command: Option<crate::escalation::cli::EscalationCommand>,
    #[command(flatten)]
    pub common: Common,
    /// Level: info, warning or critical (also debug, error).
    #[arg(long, default_value = "info", value_parser = level_arg)]
    pub level: Level,
    /// The message; without it, events are read from stdin.
    #[arg(long, value_name = "TEXT")]
    pub message: Option<String>,
    /// Title (default: "dhash <env>: <level>").
    #[arg(long, value_name = "TEXT")]
    pub title: Option<String>,
    /// alert or test.
    #[arg(long = "type", value_enum, default_value = "alert")]
    pub kind: Kind,
    /// An extra field shown with the message (repeatable).
    #[arg(long = "field", value_name = "KEY=VALUE", value_parser = field_arg)]
    pub fields: Vec<(String, String)>,
    /// Stdin events at or above this level are sent.
    #[arg(long, default_value = "warning", value_parser = level_arg, value_name = "LEVEL")]
    pub min_event_level: Level,
    /// Stdin events sent whatever their level (comma-separated names; "none" for none).
    #[arg(long, value_name = "NAMES")]
    pub events: Option<String>,
    /// Send even if the same alert went out within the quiet period.
    #[arg(long)]
    pub no_dedup: bool,
}

/// Deploy lifecycle phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Phase {
    Start,
    Success,
    Failure,
    Rollback,
}

/// Send a deploy lifecycle notification (start, success, failure, rollback).
#[derive(Debug, Parser)]
#[command(
    name = "deploy-notify",
    version,
    after_help = format!("Levels: start and success are info; failure and rollback are critical.
Upstream events piped on stdin are forwarded to stdout unchanged.

{ENV_HELP}

{EXIT_CODES_HELP}")
)]
pub struct DeployNotifyArgs {
    /// start, success, failure or rollback.
    #[arg(value_enum)]
    pub phase: Phase,
    #[command(flatten)]
    pub common: Common,
    /// How long it took: seconds (330) or e.g. "5m 30s".
    #[arg(long, value_parser = gates_core::duration::duration_arg)]
    pub duration: Option<Duration>,
    /// Release id (default: the environment's current release, if any).
    #[arg(long, value_name = "ID")]
    pub release: Option<String>,
    /// Extra text appended to the message.
    #[arg(long, value_name = "TEXT")]
    pub message: Option<String>,
}

/// Totals for `notify.completed`.
#[derive(Debug, Default)]
struct Totals {
    notifications: usize,
    sent: usize,
    fallback: usize,
    skipped: usize,
    deduplicated: usize,
    fallback_error: Option<String>,
}

impl Totals {
    fn add(&mut self, r: &DeliveryReport) {
        self.notifications += 1;
        self.sent += r.sent.len();
        self.fallback += r.fallback.len();
        self.skipped += r.skipped.len();
        self.deduplicated += usize::from(r.deduplicated);
        if self.fallback_error.is_none() {
            self.fallback_error.clone_from(&r.fallback_error);
        }
    }

    fn finish(
        self,
        em: &Emitter,
        env: &gates_core::config::EnvConfig,
        dry_run: bool,
    ) -> anyhow::Result<Exit> {
        let level = if self.fallback_error.is_some() {
            Level::Error
        } else if self.fallback > 0 && !dry_run {
            Level::Warning
        } else {
            Level::Info
        };
        em.emit(
            "notify.completed",
            level,
            format!(
                "{} notification(s): {} delivered, {} {}, {} channel(s) not configured, {} duplicate(s)",
                self.notifications,
                self.sent,
                self.fallback,
                if dry_run { "recorded (dry run)" } else { "to the fallback file" },
                self.skipped,
                self.deduplicated
            ),
            json!({"notifications": self.notifications, "sent": self.sent, "fallback": self.fallback,
                   "skipped": self.skipped, "deduplicated": self.deduplicated, "dry_run": dry_run,
                   "fallback_file": env.notify.fallback_file, "out_dir": env.notify.out_dir}),
        );
        if let Some(e) = self.fallback_error {
            return Err(ToolError::new(Exit::Failed, anyhow::anyhow!("{e}")).into());
        }
        if self.fallback > 0 && !dry_run {
            em.human(&format!(
                "{} delivery(ies) fell back to {} (copies in {}); not an error, but look at why",
                self.fallback,
                crate::record::show(&env.notify.fallback_file),
                crate::record::show(&env.notify.out_dir)
            ));
        }
        Ok(Exit::Ok)
    }
}

/// Reads `.env.notifications` of the project; a broken one is a
/// configuration error (exit 2), before anything is sent or forwarded.
fn load_dotenv(project: &Project) -> anyhow::Result<()> {
    crate::dotenv::load(&project.root)
        .map_err(|e| ToolError::new(Exit::Usage, anyhow::anyhow!("{e}")).into())
}

pub fn run_notify(args: NotifyArgs) -> anyhow::Result<Exit> {
    if let Some(cmd) = args.command {
        return crate::escalation::cli::run(cmd);
    }
    let project = Project::discover()?;
    load_dotenv(&project)?;
    if let Err(e) = crate::clock::check() {
        eprintln!("notify: {e}; escalation uses the real clock");
    }
    let env = project.env(&args.common.env_name())?;
    let em = Emitter::stdout("notify", &env.name, args.common.verbose);
    let opts = NotifyOptions {
        dry_run: args.common.dry_run,
    };
    let settings = args
        .common
        .settings(args.no_dedup || args.kind == Kind::Test);
    if !opts.dry_run {
        // Any notify run acts on a passed ack deadline, even one that ends
        // up sending nothing.
        crate::escalation::check_deadlines(env, &em);
    }
    let mut totals = Totals::default();
    match &args.message {
        Some(message) => {
            // Forward upstream events first, so they keep their order.
            gates_core::event::pump_stdin(&em, |_| {});
            let n = message_notification(&args, &env.name, message);
            totals.add(&send_with(env, &n, &opts, &em, &settings));
        }
        None => {
            if std::io::stdin().is_terminal() {
                return Err(usage_error(
                    "nothing to send: give --message TEXT, or pipe events on stdin",
                ));
            }
            let selector = args.selector();
            gates_core::event::pump_stdin(&em, |ev| {
                // The monitor's incident record: start its ack clock and tracker copy.
                if ev.event == "incident.created" && !opts.dry_run {
                    if let Some(p) = ev.str_field("path") {
                        crate::escalation::incident_opened(env, std::path::Path::new(p), &em);
                    }
                }
                if selector.selects(ev) {
                    let mut n = Notification::from_event(ev);
                    add_fields(&mut n, &args.fields);
                    totals.add(&send_with(env, &n, &opts, &em, &settings));
                }
            });
            if totals.notifications == 0 {
                em.debug("no upstream event selected for notification");
            }
        }
    }
    totals.finish(&em, env, opts.dry_run)
}

impl NotifyArgs {
    /// Which stdin events are sent (`--min-event-level`, `--events`).
    fn selector(&self) -> EventSelector {
        EventSelector {
            min_level: self.min_event_level,
            milestones: match self.events.as_deref().map(str::trim) {
                None => EventSelector::default().milestones,
                Some("none") | Some("") => Vec::new(),
                Some(list) => list
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect(),
            },
        }
    }
}

/// The alert (or test notification) given by `--message`, keyed on its text.
fn message_notification(args: &NotifyArgs, env: &str, message: &str) -> Notification {
    let test = args.kind == Kind::Test;
    let title = args.title.clone().unwrap_or_else(|| {
        if test {
            format!("dhash {env}: test notification")
        } else {
            format!("dhash {env}: {}", args.level)
        }
    });
    let mut n = Notification::new(args.level, title, message.to_string());
    n.fields.insert("source".into(), json!("notify"));
    if test {
        n.fields.insert("type".into(), json!("test"));
    }
    add_fields(&mut n, &args.fields);
    n.dedup_key = Some(n.message_key());
    n
}

/// `--field KEY=VALUE`s, as strings.
fn add_fields(n: &mut Notification, fields: &[(String, String)]) {
    for (k, v) in fields {
        n.fields.insert(k.clone(), Value::String(v.clone()));
    }
}

pub fn run_deploy_notify(args: DeployNotifyArgs) -> anyhow::Result<Exit> {
    let project = Project::discover()?;
    load_dotenv(&project)?;
    let env = project.env(&args.common.env_name())?;
    let em = Emitter::stdout("deploy-notify", &env.name, args.common.verbose);
    gates_core::event::pump_stdin(&em, |_| {});
    let release = args
        .release
        .clone()
        .or_else(|| gates_core::install::current_release_id(env));
    let n = deploy_notification(
        &env.name,
        args.phase,
        release.as_deref(),
        args.duration,
        args.message.as_deref(),
    );
    let opts = NotifyOptions {
        dry_run: args.common.dry_run,
    };
    let mut totals = Totals::default();
    totals.add(&send_with(env, &n, &opts, &em, &args.common.settings(true)));
    totals.finish(&em, env, opts.dry_run)
}

/// The deploy lifecycle message (never deduplicated: each run is news).
pub fn deploy_notification(
    env: &str,
    phase: Phase,
    release: Option<&str>,
    duration: Option<Duration>,
    extra: Option<&str>,
) -> Notification {
    let rel = release
        .map(|r| format!(" of release {r}"))
        .unwrap_or_default();
    let took = duration.map(gates_core::duration::human);
    let (level, title, mut message, name) = match phase {
        Phase::Start => (
            Level::Info,
            format!("Deploy started: dhash {env}"),
            format!("Deployment{rel} to {env} started."),
            "start",
        ),
        Phase::Success => (
            Level::Info,
            format!("Deploy succeeded: dhash {env}"),
            match &took {
                Some(t) => format!("Deployment{rel} to {env} succeeded in {t}."),
                None => format!("Deployment{rel} to {env} succeeded."),
            },
            "success",
        ),
        Phase::Failure => (
            Level::Critical,
            format!("Deploy FAILED: dhash {env}"),
            match &took {
                Some(t) => format!("Deployment{rel} to {env} failed after {t}."),
                None => format!("Deployment{rel} to {env} failed."),
            },
            "failure",
        ),
        Phase::Rollback => (
            Level::Critical,
            format!("Rollback executed: dhash {env}"),
            match (release, &took) {
                (Some(r), Some(t)) => format!("{env} was rolled back to release {r} in {t}."),
                (Some(r), None) => format!("{env} was rolled back to release {r}."),
                (None, Some(t)) => format!("{env} was rolled back in {t}."),
                (None, None) => format!("{env} was rolled back."),
            },
            "rollback",
        ),
    };
    if let Some(x) = extra.filter(|x| !x.trim().is_empty()) {
        message.push(' ');
        message.push_str(x);
    }
    let mut n = Notification::new(level, title, message)
        .field("phase", name)
        .field("source", "deploy-notify");
    if let Some(r) = release {
        n = n.field("release", r);
    }
    if let (Some(t), Some(d)) = (took, duration) {
        n = n
            .field("duration", t)
            .field("duration_seconds", d.as_secs_f64());
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DEFAULT_MILESTONES;

    #[test]
    fn deploy_messages_show_the_duration() {
        let n = deploy_notification(
            "production",
            Phase::Success,
            Some("v1-abcd1234"),
            Some(Duration::from_secs(330)),
            None,
        );
        assert_eq!(n.level, Level::Info);
        assert!(n.message.contains("5m 30s"), "{}", n.message);
        assert_eq!(n.fields["duration"], "5m 30s");
        assert!(n.dedup_key.is_none());
        let f = deploy_notification("staging", Phase::Failure, None, None, Some("see logs"));
        assert_eq!(f.level, Level::Critical);
        assert!(f.message.ends_with("see logs"));
    }

    #[test]
    fn clap_definitions_are_valid() {
        use clap::CommandFactory;
        NotifyArgs::command().debug_assert();
        DeployNotifyArgs::command().debug_assert();
        let help = NotifyArgs::command().render_long_help().to_string();
        for m in DEFAULT_MILESTONES {
            assert!(help.contains(m), "--help lists milestone {m}");
        }
    }
}
