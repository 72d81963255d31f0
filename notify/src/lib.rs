//! Multi-channel notifications that are never lost: Slack, Microsoft Teams
//! (Workflows webhook, Adaptive Card), Discord, email (SMTP or sendmail) and a
//! generic JSON webhook, with a file fallback.
//!
//! Binaries: `notify` (an alert from the command line, or one per routed
//! upstream event read on stdin) and `deploy-notify` (deploy lifecycle
//! messages). Other tools call [`send`].
//!
//! # Secrets: environment variables, then `.env.notifications`
//!
//! | channel  | variables |
//! |----------|-----------|
//! | slack    | `SLACK_WEBHOOK` or `SLACK_WEBHOOK_URL` (incoming webhook URL) |
//! | teams    | `TEAMS_WEBHOOK` or `TEAMS_WEBHOOK_URL` (Workflows "When a Teams webhook request is received" URL) |
//! | discord  | `DISCORD_WEBHOOK_URL` (or `DISCORD_WEBHOOK`) |
//! | webhook  | `WEBHOOK_URL` (any endpoint taking JSON) |
//! | email    | `EMAIL_TO` (comma-separated), `EMAIL_FROM` (default `dhash-notify@localhost`), `EMAIL_TRANSPORT` = `smtp` or `sendmail` (default: `smtp` when `EMAIL_SMTP_HOST` is set, else `sendmail`); SMTP: `EMAIL_SMTP_HOST`, `EMAIL_SMTP_PORT` (default 587 / 465 / 25 by TLS mode), `EMAIL_SMTP_TLS` = `starttls` (default) / `tls` (implicit) / `none` (plaintext; with credentials only to a loopback host), `EMAIL_USER`, `EMAIL_PASSWORD`; sendmail: `EMAIL_SENDMAIL` (command, default `sendmail`, looked up on `PATH`, then in `/usr/sbin` and `/usr/lib`) |
//!
//! An empty variable counts as unset. A channel whose variables are not set is
//! skipped, said once per process (stderr and a `notify.skipped` debug event).
//! `EMAIL_TO` alone sends through the local sendmail; when none is installed
//! the email is recorded in the fallback file with that reason.
//!
//! `.env.notifications` at the project root (seed 003) fills in variables the
//! environment does not set; see [`dotenv`] for the format and rules.
//!
//! Webhook URLs (whole, without scheme, their path, query and token-like
//! segments), user names and passwords are redacted in every output and
//! file (`gates_core::redact`), and in the text sent to the channels:
//! a message is redacted before anything else is done with it.
//!
//! # Routing
//!
//! `environments.json` → `environments.<env>.notifications.routes`: each route
//! names a channel and the least level it receives (`min_level`; `error` ranks
//! with `critical`). A notification goes to every route whose `min_level` it
//! reaches and whose channel is configured. If none of those channels is
//! configured the notification is written to the fallback file (channel `none`),
//! so running with no secrets at all gives file-based notifications.
//!
//! # Delivery
//!
//! Channels are sent concurrently. Each goes through one retrier: a timeout
//! per attempt (half the budget, 1–10 s); 2xx is success (Slack: `200 ok`;
//! Teams: `202 Accepted` or `200`; Discord: `204`/`200`); 5xx, network errors
//! and 429 are retried with exponential backoff (250 ms doubling, at most 4 s,
//! at most 5 attempts) — a 429's `retry_after` (JSON body, seconds) or
//! `Retry-After` header is honoured; other 4xx are permanent. The whole call
//! never blocks longer than `notifications.timeout` (default 20 s) plus a
//! moment: a webhook that never answers cannot stall the caller.
//!
//! # Nothing is lost
//!
//! Every notification not delivered on some channel is appended to
//! `notifications.fallback_file` (default `monitor_logs/notification_fallback.jsonl`)
//! as one JSON line: `ts, env, channel, reason, attempts, status, level, title,
//! message, fields, notification_ts, dry_run`, and an audit copy with every
//! channel's payload is written to `notifications.out_dir` (default
//! `notifications_out/`) as one JSON file per notification. With `--dry-run`
//! nothing is sent and both places receive what would have been sent
//! (`dry_run: true`, with the payload).
//!
//! # Size
//!
//! A message is never rejected for its size: each channel gets it cut to its
//! limit with the marker `… [truncated]` (Slack 3000 chars, Teams 12000,
//! Discord 4096 within an embed of 6000, email and the generic webhook
//! [`truncate::MESSAGE_MAX`]); a title to [`truncate::TITLE_MAX`], fields to
//! [`truncate::FIELD_MAX`] each and at most [`truncate::FIELDS_MAX`]. The full
//! text is kept once: in the audit copy in `out_dir`, written whenever
//! something was cut. Fallback lines carry the first
//! [`truncate::FALLBACK_MESSAGE_MAX`] chars, `message_truncated`,
//! `message_chars` and `full_text` (the audit copy's path).
//!
//! # Quiet period
//!
//! A notification with a `dedup_key` is not sent again within
//! `notifications.quiet_period` (default 10 minutes) after it was delivered on
//! at least one channel; the keys (hashed) live in `<log_dir>/notify_state.json`.
//!
//! # Shape
//!
//! [`send_with`] runs four steps: [`route`] (the level's routes become
//! [`Channel`]s, each configured or not), [`dedup`] (the quiet period),
//! [`deliver`] (every configured channel at once, through the one retrier)
//! and the record of what became of it (events, and [`record`]'s fallback
//! file and audit copy). [`render`] prepares the text once for all channels.
//! Each integration is one file in [`channels`] behind
//! [`channels::Integration`]: its variables, its payload, what its answer
//! means.
//!
//! # Events (stdout, JSON lines)
//!
//! `notify.sent` (channel, attempts, status), `notify.fallback` (channel,
//! reason, attempts, status, file), `notify.skipped` (channel or reason),
//! `notify.recorded` (dry run: channel, file), `notify.failed` (the fallback
//! file cannot be written), `notify.misconfigured` (`.env.notifications`
//! cannot be read, or a route names an unknown channel) and, from the
//! binaries, `notify.completed` (counts).

pub mod channels;
pub mod cli;
pub mod clock;
pub mod dedup;
pub mod deliver;
pub mod dotenv;
pub mod escalation;
pub mod incident_file;
pub mod record;
pub mod render;
mod report;
pub mod route;
pub mod tracker;
pub mod truncate;

use serde_json::{json, Map, Value};

use gates_core::config::EnvConfig;
use gates_core::event::Event;
use gates_core::{Emitter, Level};

pub use channels::Channel;

/// Milestone events `notify` sends from stdin whatever their level.
pub const DEFAULT_MILESTONES: &[&str] = &[
    "deploy.started",
    "deploy.healthy",
    "deploy.failed",
    "rollback.completed",
    "rollback.failed",
    "monitor.completed",
    "gate.violated",
    "gate.resolved",
    "backup.failed",
];

/// One notification.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub level: Level,
    pub title: String,
    pub message: String,
    /// Shown as fields/facts (strings as they are, other values as JSON).
    pub fields: Map<String, Value>,
    /// `Some`: not sent again within the environment's quiet period after it
    /// was delivered. `None`: always sent.
    pub dedup_key: Option<String>,
}

impl Notification {
    pub fn new(level: Level, title: impl Into<String>, message: impl Into<String>) -> Self {
        Notification {
            level,
            title: title.into(),
            message: message.into(),
            fields: Map::new(),
            dedup_key: None,
        }
    }

    pub fn field(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.fields.insert(name.to_string(), value.into());
        self
    }

    pub fn dedup(mut self, key: impl Into<String>) -> Self {
        self.dedup_key = Some(key.into());
        self
    }

    /// The key of a command-line alert: a hash of level, title and message.
    pub fn message_key(&self) -> String {
        let h = dedup::hash_key(&format!("{}\n{}\n{}", self.level, self.title, self.message));
        format!("message:{}", &h[..16])
    }

    /// A notification for an upstream event: its level, its name (with the
    /// gate or release it concerns) as title, its `msg` as message and its
    /// fields; deduplicated on event + gate + release + level.
    pub fn from_event(ev: &Event) -> Self {
        let gate = ev.str_field("gate");
        let release = ev.str_field("release");
        let subject = gate.or(release);
        let title = match subject {
            Some(s) => format!("{}: {s}", ev.event),
            None => ev.event.clone(),
        };
        let mut fields = Map::new();
        fields.insert("event".into(), json!(ev.event));
        fields.insert("tool".into(), json!(ev.tool));
        fields.insert("event_ts".into(), json!(ev.ts));
        if !ev.env.is_empty() {
            fields.insert("event_env".into(), json!(ev.env));
        }
        for (k, v) in &ev.fields {
            fields.entry(k.clone()).or_insert_with(|| v.clone());
        }
        let message = if ev.msg.trim().is_empty() {
            ev.event.clone()
        } else {
            ev.msg.clone()
        };
        Notification {
            level: ev.level,
            title,
            message,
            fields,
            dedup_key: Some(format!(
                "event:{}:{}:{}:{}",
                ev.event,
                gate.unwrap_or("-"),
                release.unwrap_or("-"),
                ev.level
            )),
        }
    }
}

/// Which upstream events `notify` turns into notifications.
#[derive(Debug, Clone, PartialEq)]
pub struct EventSelector {
    /// Events at or above this level are sent (default warning).
    pub min_level: Level,
    /// Events by name sent whatever their level (default [`DEFAULT_MILESTONES`]).
    pub milestones: Vec<String>,
}

impl Default for EventSelector {
    fn default() -> Self {
        EventSelector {
            min_level: Level::Warning,
            milestones: DEFAULT_MILESTONES.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl EventSelector {
    /// `notify.*` events are never re-sent (no loops through a pipeline).
    pub fn selects(&self, ev: &Event) -> bool {
        if ev.event.starts_with("notify.") {
            return false;
        }
        self.milestones.iter().any(|m| m == &ev.event)
            || ev.level.severity() >= self.min_level.severity()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NotifyOptions {
    pub dry_run: bool,
}

/// What became of one notification.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeliveryReport {
    /// Channels that delivered.
    pub sent: Vec<String>,
    /// (channel, reason) written to the fallback file instead (dry runs: reason "dry-run").
    pub fallback: Vec<(String, String)>,
    /// Routed channels without their secret.
    pub skipped: Vec<String>,
    /// Not sent: the same alert went out within the quiet period.
    pub deduplicated: bool,
    /// The fallback file could not be written (the one way to lose a notification).
    pub fallback_error: Option<String>,
    /// The audit copy written to `out_dir`, if any.
    pub out_file: Option<std::path::PathBuf>,
}

/// Tuning for [`send_with`] (the binaries' `--channel` and `--no-dedup`).
#[derive(Debug, Clone, Default)]
pub struct SendSettings {
    /// Only these channels (still subject to routes); `None`: all routes.
    pub only: Option<Vec<Channel>>,
    /// Ignore the quiet period.
    pub no_dedup: bool,
    /// Exactly these channels, whatever the routes say (an escalation
    /// level's channels); `None`: the routes.
    pub direct: Option<Vec<Channel>>,
    /// Notify's own escalation notices: not counted as alerts, no deadline
    /// check (no loop).
    pub internal: bool,
}

/// Sends one notification to the environment's routed channels. Never fails:
/// what is not delivered goes to the fallback file (see the crate docs).
pub fn send(
    env: &EnvConfig,
    n: &Notification,
    opts: &NotifyOptions,
    em: &Emitter,
) -> DeliveryReport {
    send_with(env, n, opts, em, &SendSettings::default())
}

pub(crate) fn redact(text: &str) -> String {
    gates_core::redact::global().redact(text)
}

/// The routed channels for a level, in route order, each once (routes
/// naming no known channel are left out; [`route::route`] lists them).
pub fn routed(env: &EnvConfig, level: Level, only: Option<&[Channel]>) -> Vec<Channel> {
    route::route(&env.notify.routes, level, only).channels
}

/// [`send`] with the binaries' settings. The steps, in order: route (which
/// channels the level reaches), dedup (the quiet period), deliver (every
/// configured channel at once, through the one retrier), record (events,
/// the fallback file and the audit copy, then the quiet period's key).
pub fn send_with(
    env: &EnvConfig,
    n: &Notification,
    opts: &NotifyOptions,
    em: &Emitter,
    settings: &SendSettings,
) -> DeliveryReport {
    ensure_dotenv(em);
    let escalating = !settings.internal && !opts.dry_run;
    if escalating {
        // A deadline passed while no notify ran is acted on by the next one.
        escalation::check_deadlines(env, em);
    }
    // Titles in events and messages: redacted and short, whatever came in.
    let title = truncate::chars(&redact(&n.title), truncate::TITLE_MAX);
    let only = settings.only.as_deref();
    let routing = channels_for(env, n, settings);
    route::report_unknown(&routing, &env.name, em);
    // The quiet period is checked before "no route" is said, as it always was.
    let quiet = dedup::Quiet::new(env, n, settings.no_dedup);
    if quiet.already_sent(&title, n.level, em) {
        return DeliveryReport {
            deduplicated: true,
            ..DeliveryReport::default()
        };
    }
    if escalating {
        escalation::after_alert(env, n, &title, em);
    }
    if routing.channels.is_empty() {
        route::report_no_route(&env.name, n.level, &title, only.is_some(), em);
        return DeliveryReport::default();
    }
    let mut report = DeliveryReport::default();
    let (rendered, full) = render::render(env, n);
    let plan = route::plan(&routing.channels, em, &mut report);
    let ctx = report::Ctx {
        env,
        r: &rendered,
        full: &full,
        key: quiet.key(),
        em,
    };
    if opts.dry_run {
        report::dry_run(&ctx, &routing.channels, &plan, &mut report);
        return report;
    }
    let mut outcomes = deliver::deliver_all(env, &rendered, quiet.key(), plan.jobs);
    outcomes.extend(plan.invalid);
    report::outcomes(&ctx, &outcomes, &plan.missing, &mut report);
    if !report.sent.is_empty() {
        quiet.remember(em);
    }
    report
}

/// The channels a notification goes to: the settings' direct list, else the
/// routes; an auto-rollback also reaches every other configured channel.
fn channels_for(env: &EnvConfig, n: &Notification, settings: &SendSettings) -> route::Routing {
    if let Some(direct) = &settings.direct {
        let mut channels: Vec<Channel> = Vec::new();
        for c in direct {
            if !channels.contains(c) {
                channels.push(*c);
            }
        }
        return route::Routing {
            channels,
            unknown: Vec::new(),
        };
    }
    let mut routing = route::route(&env.notify.routes, n.level, settings.only.as_deref());
    if env.escalation.configured && escalation::is_auto_rollback(n) && settings.only.is_none() {
        for ch in Channel::ALL {
            let ready = matches!(channels::configure(ch), channels::Config::Ready(_));
            if ready && !routing.channels.contains(&ch) {
                routing.channels.push(ch);
            }
        }
    }
    routing
}

/// Reads `.env.notifications` once per process, from the project found the
/// usual way (`DHASH_ROOT`, or the current folder and its parents), when the
/// caller did not ([`dotenv::load`]). A broken file is reported and ignored.
fn ensure_dotenv(em: &Emitter) {
    static TRIED: std::sync::Once = std::sync::Once::new();
    if dotenv::loaded() || TRIED.is_completed() {
        return;
    }
    let mut root = None;
    TRIED.call_once(|| {
        root = gates_core::project::Project::discover()
            .ok()
            .map(|p| p.root)
    });
    let Some(root) = root else {
        return;
    };
    if let Err(e) = dotenv::load(&root) {
        em.emit(
            "notify.misconfigured",
            Level::Error,
            format!("{e}; the file is ignored, channels use the environment only"),
            json!({"file": e.path, "line": e.line, "problem": e.problem}),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: &str, level: Level) -> Event {
        Event::new("monitor_dhash", "production", event, level, "m")
    }

    #[test]
    fn default_selection() {
        let s = EventSelector::default();
        assert!(s.selects(&ev("deploy.started", Level::Info)));
        assert!(s.selects(&ev("gate.evaluated", Level::Warning)));
        assert!(!s.selects(&ev("gate.evaluated", Level::Info)));
        assert!(!s.selects(&ev("notify.fallback", Level::Warning)));
        assert!(s.selects(&ev("anything", Level::Error)));
    }

    #[test]
    fn event_notification_and_key() {
        let e = ev("gate.violated", Level::Critical)
            .with(json!({"gate": "p95_hash_time", "value": 2500}));
        let n = Notification::from_event(&e);
        assert_eq!(n.title, "gate.violated: p95_hash_time");
        assert_eq!(n.fields["value"], 2500);
        assert_eq!(
            n.dedup_key.as_deref(),
            Some("event:gate.violated:p95_hash_time:-:critical")
        );
        let a = Notification::new(Level::Info, "t", "m");
        let b = Notification::new(Level::Critical, "t", "m");
        assert_ne!(a.message_key(), b.message_key());
    }
}
