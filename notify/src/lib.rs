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
//! # Events (stdout, JSON lines)
//!
//! `notify.sent` (channel, attempts, status), `notify.fallback` (channel,
//! reason, attempts, status, file), `notify.skipped` (channel or reason),
//! `notify.recorded` (dry run: channel, file) and, from the binaries,
//! `notify.completed` (counts).

pub mod channels;
pub mod cli;
pub mod dedup;
pub mod deliver;
pub mod dotenv;
pub mod record;
pub mod truncate;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use gates_core::config::EnvConfig;
use gates_core::event::Event;
use gates_core::{Emitter, Level};

pub use channels::Channel;
use channels::{Config, Rendered, Target};
use deliver::{Outcome, Policy};
use record::FallbackEntry;

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

/// Extra time the caller waits, past the deadline, for channels to report.
const GRACE: Duration = Duration::from_millis(300);

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

/// Says "channel X is not configured" once per process.
fn first_skip(channel: Channel) -> bool {
    static SEEN: OnceLock<Mutex<HashSet<Channel>>> = OnceLock::new();
    SEEN.get_or_init(|| Mutex::new(HashSet::new()))
        .lock()
        .map(|mut s| s.insert(channel))
        .unwrap_or(true)
}

/// The routed channels for a level, in route order, each once.
pub fn routed(env: &EnvConfig, level: Level, only: Option<&[Channel]>) -> Vec<Channel> {
    let mut out = Vec::new();
    for r in &env.notify.routes {
        let Ok(ch) = r.channel.parse::<Channel>() else {
            continue;
        };
        if level.severity() < r.min_level.severity() || out.contains(&ch) {
            continue;
        }
        if only.is_some_and(|o| !o.contains(&ch)) {
            continue;
        }
        out.push(ch);
    }
    out
}

struct Job {
    channel: Channel,
    target: Target,
}

pub fn send_with(
    env: &EnvConfig,
    n: &Notification,
    opts: &NotifyOptions,
    em: &Emitter,
    settings: &SendSettings,
) -> DeliveryReport {
    let mut report = DeliveryReport::default();
    ensure_dotenv(em);
    // Titles in events and messages: redacted and short, whatever came in.
    let title = truncate::chars(&redact(&n.title), truncate::TITLE_MAX);
    let key = n
        .dedup_key
        .as_deref()
        .filter(|_| !settings.no_dedup)
        .map(|k| format!("{}|{k}", env.name));
    let state = dedup::state_path(env);
    if let Some(k) = &key {
        if let Some(ago) = dedup::recently_sent(&state, k, env.notify.quiet_period) {
            em.emit(
                "notify.skipped",
                Level::Info,
                format!(
                    "{title:?} already sent {} ago, within the quiet period of {}; not sent again",
                    gates_core::duration::human(ago),
                    gates_core::duration::human(env.notify.quiet_period)
                ),
                json!({"reason": "duplicate", "title": title, "level": n.level,
                       "quiet_period_seconds": env.notify.quiet_period.as_secs_f64()}),
            );
            report.deduplicated = true;
            return report;
        }
    }

    let only = settings.only.as_deref();
    let selected = routed(env, n.level, only);
    if selected.is_empty() {
        em.emit(
            "notify.skipped",
            Level::Debug,
            format!(
                "no route takes level {} for {title:?}; nothing to send",
                n.level
            ),
            json!({"reason": "no route", "title": title, "level": n.level}),
        );
        if only.is_some() || n.level.severity() >= Level::Info.severity() {
            em.human(&format!(
                "no channel route takes level {} in environment {} (see notifications.routes); nothing sent",
                n.level, env.name
            ));
        }
        return report;
    }

    let (rendered, full) = render(env, n);
    let mut jobs = Vec::new();
    let mut failures: Vec<(Channel, Outcome)> = Vec::new();
    let mut missing = Vec::new();
    for ch in &selected {
        match channels::configure(*ch) {
            Config::Ready(target) => jobs.push(Job {
                channel: *ch,
                target,
            }),
            Config::Missing(why) => {
                missing.push(*ch);
                report.skipped.push(ch.name().to_string());
                if first_skip(*ch) {
                    em.human(&format!("{ch}: skipped, not configured ({why})"));
                    em.emit(
                        "notify.skipped",
                        Level::Debug,
                        format!("{ch} skipped: {why}"),
                        json!({"channel": ch.name(), "reason": redact(&why)}),
                    );
                }
            }
            Config::Invalid(why) => failures.push((
                *ch,
                Outcome {
                    delivered: false,
                    attempts: 0,
                    status: None,
                    reason: redact(&format!("misconfigured: {why}")),
                },
            )),
        }
    }

    let ctx = Ctx {
        env,
        r: &rendered,
        full: &full,
        key: key.as_deref(),
        em,
    };
    if opts.dry_run {
        dry_run(&ctx, &selected, &missing, &failures, &mut report);
        return report;
    }

    let mut outcomes: Vec<(Channel, Outcome)> = deliver_all(env, &rendered, key.as_deref(), jobs);
    outcomes.append(&mut failures);
    if outcomes.is_empty() {
        // Every routed channel lacks its secret: file-based notification.
        let reason = format!(
            "no channel configured for level {} (set {})",
            n.level,
            missing
                .iter()
                .map(|c| c.secret_vars())
                .collect::<Vec<_>>()
                .join("; ")
        );
        let entry = FallbackEntry {
            channel: "none".into(),
            reason,
            attempts: 0,
            status: None,
            dry_run: false,
            payload: None,
        };
        fall_back(&ctx, &entry, &mut report);
        let copy = vec![json!({"channel": "none", "status": "fallback", "reason": entry.reason})];
        write_copy(&ctx, false, copy, &mut report);
        return report;
    }

    let mut copies = Vec::new();
    for (ch, o) in &outcomes {
        if o.delivered {
            report.sent.push(ch.name().to_string());
            em.emit(
                "notify.sent",
                Level::Info,
                format!(
                    "{ch}: delivered {:?} after {} attempt(s)",
                    rendered.title, o.attempts
                ),
                json!({"channel": ch.name(), "attempts": o.attempts, "status": o.status,
                       "title": rendered.title, "level": n.level}),
            );
            copies.push(
                json!({"channel": ch.name(), "status": "sent", "attempts": o.attempts,
                               "http_status": o.status}),
            );
        } else {
            let entry = FallbackEntry {
                channel: ch.name().to_string(),
                reason: o.reason.clone(),
                attempts: o.attempts,
                status: o.status,
                dry_run: false,
                payload: None,
            };
            fall_back(&ctx, &entry, &mut report);
            copies.push(
                json!({"channel": ch.name(), "status": "fallback", "reason": o.reason,
                               "attempts": o.attempts, "http_status": o.status,
                               "payload": channels::preview(*ch, &rendered, key.as_deref())}),
            );
        }
    }
    for ch in &missing {
        copies.push(json!({"channel": ch.name(), "status": "skipped", "reason": "not configured"}));
    }
    // The audit copy: whenever something was not delivered, and whenever the
    // channels got a cut text (so the full text is kept somewhere, once).
    if !report.fallback.is_empty() || full.truncated {
        write_copy(&ctx, false, copies, &mut report);
    }
    if let Some(k) = &key {
        if !report.sent.is_empty() {
            if let Err(e) = dedup::record(&state, k, env.notify.quiet_period) {
                em.human(&format!(
                    "cannot record the alert in {} ({e:#}); it may be sent again within the quiet period",
                    record::show(&state)
                ));
            }
        }
    }
    report
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

/// The notification as the channels get it (redacted, then cut to
/// [`truncate::MESSAGE_MAX`] and the field limits) and as given (redacted,
/// whole: kept once, in the audit copy).
fn render<'a>(env: &EnvConfig, n: &'a Notification) -> (Rendered, record::FullText<'a>) {
    let redactor = gates_core::redact::global();
    // Redact before cutting, so a cut never leaves half a secret behind.
    let message = redactor.redact_cow(&n.message);
    let title = redactor.redact(&n.title);
    let fields = record::redact_value(&Value::Object(n.fields.clone()));
    let fields = match fields {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let mut truncated = false;
    let mut cut = |text: &str, max: usize| {
        if truncate::exceeds(text, max) {
            truncated = true;
            truncate::chars(text, max)
        } else {
            text.to_string()
        }
    };
    let short_message = cut(&message, truncate::MESSAGE_MAX);
    let short_title = cut(&title, truncate::TITLE_MAX);
    let mut short_fields = Map::new();
    for (i, (k, v)) in fields.iter().enumerate() {
        if i >= truncate::FIELDS_MAX {
            truncated = true;
            break;
        }
        let v = match v {
            Value::String(s) => Value::String(cut(s, truncate::FIELD_MAX)),
            other => {
                let text = other.to_string();
                if truncate::exceeds(&text, truncate::FIELD_MAX) {
                    Value::String(cut(&text, truncate::FIELD_MAX))
                } else {
                    other.clone()
                }
            }
        };
        short_fields.insert(truncate::chars(k, 200), v);
    }
    let rendered = Rendered {
        env: env.name.clone(),
        level: n.level,
        title: short_title,
        message: short_message,
        fields: short_fields,
        ts: gates_core::event::now_rfc3339(),
    };
    let full = record::FullText {
        title,
        message_chars: message.chars().count(),
        message,
        fields,
        truncated,
        out_path: record::out_path(env, &rendered),
    };
    (rendered, full)
}

/// What the recording helpers share for one notification.
struct Ctx<'a> {
    env: &'a EnvConfig,
    r: &'a Rendered,
    full: &'a record::FullText<'a>,
    key: Option<&'a str>,
    em: &'a Emitter,
}

fn dry_run(
    ctx: &Ctx<'_>,
    selected: &[Channel],
    missing: &[Channel],
    invalid: &[(Channel, Outcome)],
    report: &mut DeliveryReport,
) {
    let (env, r, em) = (ctx.env, ctx.r, ctx.em);
    let mut copies = Vec::new();
    for ch in selected {
        let configured = !missing.contains(ch);
        let payload = channels::preview(*ch, r, ctx.key);
        let broken = invalid.iter().find(|(c, _)| c == ch);
        let reason = match broken {
            Some((_, o)) => format!("dry-run: not sent (and it would fail: {})", o.reason),
            None if configured => "dry-run: not sent".to_string(),
            None => format!(
                "dry-run: not sent (and not configured: set {})",
                ch.secret_vars()
            ),
        };
        let entry = FallbackEntry {
            channel: ch.name().to_string(),
            reason: reason.clone(),
            attempts: 0,
            status: None,
            dry_run: true,
            payload: Some(payload.clone()),
        };
        match record::append_fallback(env, r, ctx.full, ctx.key, &entry) {
            Ok(()) => {
                em.emit(
                    "notify.recorded",
                    Level::Info,
                    format!(
                        "dry run: {ch} would receive {:?}; recorded in {}",
                        r.title,
                        record::show(&env.notify.fallback_file)
                    ),
                    json!({"channel": ch.name(), "dry_run": true, "configured": configured,
                           "file": env.notify.fallback_file, "title": r.title, "level": r.level}),
                );
                report
                    .fallback
                    .push((ch.name().to_string(), "dry-run".to_string()));
            }
            Err(e) => fallback_failed(env, &e, em, report),
        }
        copies.push(
            json!({"channel": ch.name(), "status": "dry_run", "configured": configured,
                           "payload": payload}),
        );
    }
    write_copy(ctx, true, copies, report);
}

fn fall_back(ctx: &Ctx<'_>, entry: &FallbackEntry, report: &mut DeliveryReport) {
    let (env, r, em) = (ctx.env, ctx.r, ctx.em);
    match record::append_fallback(env, r, ctx.full, ctx.key, entry) {
        Ok(()) => {
            em.emit(
                "notify.fallback",
                Level::Warning,
                format!(
                    "{}: not delivered ({}); recorded in {}",
                    entry.channel,
                    entry.reason,
                    record::show(&env.notify.fallback_file)
                ),
                json!({"channel": entry.channel, "reason": entry.reason, "attempts": entry.attempts,
                       "status": entry.status, "file": env.notify.fallback_file,
                       "title": r.title, "level": r.level}),
            );
            report
                .fallback
                .push((entry.channel.clone(), entry.reason.clone()));
        }
        Err(e) => fallback_failed(env, &e, em, report),
    }
}

fn fallback_failed(env: &EnvConfig, e: &anyhow::Error, em: &Emitter, report: &mut DeliveryReport) {
    let msg = redact(&format!(
        "cannot write the fallback file {}: {e:#}",
        env.notify.fallback_file.display()
    ));
    em.emit(
        "notify.failed",
        Level::Error,
        msg.clone(),
        json!({"file": env.notify.fallback_file}),
    );
    report.fallback_error.get_or_insert(msg);
}

fn write_copy(ctx: &Ctx<'_>, dry_run: bool, deliveries: Vec<Value>, report: &mut DeliveryReport) {
    match record::write_out_copy(ctx.r, ctx.full, ctx.key, dry_run, deliveries) {
        Ok(p) => {
            ctx.em
                .debug(&format!("audit copy written to {}", record::show(&p)));
            report.out_file = Some(p);
        }
        Err(e) => ctx.em.human(&format!(
            "cannot write the audit copy in {}: {e:#}{}",
            record::show(&ctx.env.notify.out_dir),
            if ctx.full.truncated {
                "; the full text of a long message is lost (the fallback file has its start)"
            } else {
                ""
            }
        )),
    }
}

/// Sends to every configured channel concurrently, bounded by the deadline.
fn deliver_all(
    env: &EnvConfig,
    r: &Rendered,
    key: Option<&str>,
    jobs: Vec<Job>,
) -> Vec<(Channel, Outcome)> {
    if jobs.is_empty() {
        return Vec::new();
    }
    let policy = Policy::for_budget(env.notify.timeout);
    let cancel = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<(usize, Outcome)>();
    let mut counters = Vec::new();
    let mut results: Vec<Option<Outcome>> = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        let attempts = Arc::new(AtomicU32::new(0));
        counters.push(Arc::clone(&attempts));
        results.push(None);
        let prepared = match prepare(job, r, key) {
            Ok(p) => p,
            Err(reason) => {
                results[i] = Some(Outcome {
                    delivered: false,
                    attempts: 0,
                    status: None,
                    reason,
                });
                continue;
            }
        };
        let (tx, cancel) = (tx.clone(), Arc::clone(&cancel));
        let spawned = std::thread::Builder::new()
            .name(format!("notify-{}", job.channel))
            .spawn(move || {
                let outcome = deliver::run(&policy, &cancel, &attempts, |t| prepared.attempt(t));
                let _ = tx.send((i, outcome));
            });
        if let Err(e) = spawned {
            results[i] = Some(Outcome {
                delivered: false,
                attempts: 0,
                status: None,
                reason: format!("cannot start a delivery thread: {e}"),
            });
        }
    }
    drop(tx);
    let hard_stop = policy.deadline + GRACE;
    while results.iter().any(Option::is_none) {
        let wait = hard_stop.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok((i, o)) => results[i] = Some(o),
            Err(_) => break,
        }
    }
    // Threads still running are abandoned; they start no new attempt.
    cancel.store(true, Ordering::SeqCst);
    jobs.iter()
        .zip(results)
        .zip(counters)
        .map(|((job, res), attempts)| {
            let o = res.unwrap_or_else(|| {
                let n = attempts.load(Ordering::SeqCst);
                Outcome {
                    delivered: false,
                    attempts: n,
                    status: None,
                    reason: format!(
                        "no answer within the notification timeout of {} ({n} attempt(s))",
                        gates_core::duration::human(env.notify.timeout)
                    ),
                }
            });
            (job.channel, o)
        })
        .collect()
}

/// A channel's request, ready to be attempted from a delivery thread.
enum Prepared {
    Http {
        agent: ureq::Agent,
        channel: Channel,
        url: String,
        body: Vec<u8>,
    },
    Email {
        cfg: channels::EmailConfig,
        msg: Box<lettre::Message>,
    },
}

impl Prepared {
    fn attempt(&self, timeout: Duration) -> deliver::Attempt {
        match self {
            Prepared::Http {
                agent,
                channel,
                url,
                body,
            } => deliver::http_attempt(agent, *channel, url, body, timeout),
            Prepared::Email { cfg, msg } => deliver::email_attempt(cfg, msg, timeout),
        }
    }
}

fn prepare(job: &Job, r: &Rendered, key: Option<&str>) -> Result<Prepared, String> {
    match &job.target {
        Target::Http { url } => {
            let payload = match job.channel {
                Channel::Slack => channels::slack_payload(r),
                Channel::Teams => channels::teams_payload(r),
                Channel::Discord => channels::discord_payload(r),
                _ => channels::webhook_payload(r, key),
            };
            let body = serde_json::to_vec(&payload)
                .map_err(|e| format!("cannot encode the payload: {e}"))?;
            Ok(Prepared::Http {
                agent: deliver::http_agent(),
                channel: job.channel,
                url: url.clone(),
                body,
            })
        }
        Target::Email(cfg) => {
            let (subject, body) = channels::email_content(r);
            let msg = deliver::build_email(cfg, &subject, &body)?;
            Ok(Prepared::Email {
                cfg: cfg.clone(),
                msg: Box::new(msg),
            })
        }
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
