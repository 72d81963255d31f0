//! The two places a notification that was not delivered is kept:
//!
//! - `env.notify.fallback_file` (default `monitor_logs/notification_fallback.jsonl`):
//!   one JSON line per notification and channel not delivered (or, with
//!   `--dry-run`, that would have been sent), appended with a single write;
//! - `env.notify.out_dir` (default `notifications_out/`): one JSON file per such
//!   notification with every channel's payload, written atomically, for audit.
//!
//! Everything written is redacted first.
//!
//! A long message is kept whole once: in the audit copy (`message`,
//! `fields`). Each fallback line carries it cut to
//! [`truncate::FALLBACK_MESSAGE_MAX`] chars, with `message_truncated`,
//! `message_chars` (the full length) and `full_text` (the audit copy's path).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Map, Value};

use gates_core::config::EnvConfig;

use crate::channels::{Channel, Rendered};
use crate::truncate;

/// The notification as given (redacted), before any channel limit: kept once,
/// in the audit copy.
#[derive(Debug, Clone, PartialEq)]
pub struct FullText<'a> {
    pub title: String,
    /// Borrowed from the notification unless redaction changed it.
    pub message: std::borrow::Cow<'a, str>,
    pub fields: Map<String, Value>,
    /// Chars in `message`.
    pub message_chars: usize,
    /// Something (title, message or a field) was cut for the channels.
    pub truncated: bool,
    /// Where the audit copy is (to be) written.
    pub out_path: PathBuf,
}

/// Where a fallback line's notification was headed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    Channel(Channel),
    /// No routed channel is configured: a file-based notification (`none`).
    NoChannel,
}

impl Destination {
    /// The name in the fallback file, events and the report.
    pub fn name(self) -> &'static str {
        match self {
            Destination::Channel(c) => c.name(),
            Destination::NoChannel => "none",
        }
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One channel's line in the fallback file.
#[derive(Debug, Clone)]
pub struct FallbackEntry {
    pub channel: Destination,
    pub reason: String,
    pub attempts: u32,
    pub status: Option<u16>,
    pub dry_run: bool,
    /// What would have been sent (dry runs only; the out_dir copy always has it).
    pub payload: Option<Value>,
}

/// Redacts every string in a JSON value (keys included).
pub fn redact_value(v: &Value) -> Value {
    let r = gates_core::redact::global();
    match v {
        Value::String(s) => Value::String(r.redact(s)),
        Value::Array(a) => Value::Array(a.iter().map(redact_value).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (r.redact(k), redact_value(v)))
                .collect::<Map<String, Value>>(),
        ),
        other => other.clone(),
    }
}

fn redacted_line(v: &Value) -> anyhow::Result<String> {
    let text = serde_json::to_string(&redact_value(v))?;
    // Belt and braces: a secret split across escapes is caught on the line too.
    Ok(gates_core::redact::global().redact(&text))
}

/// Appends one line per entry to the fallback file.
pub fn append_fallback(
    env: &EnvConfig,
    r: &Rendered,
    full: &FullText<'_>,
    dedup_key: Option<&str>,
    e: &FallbackEntry,
) -> anyhow::Result<()> {
    let message = truncate::chars(&r.message, truncate::FALLBACK_MESSAGE_MAX);
    let message_cut = full.truncated || message.len() != r.message.len();
    let mut line = json!({
        "ts": gates_core::event::now_rfc3339(),
        "env": r.env,
        "channel": e.channel.name(),
        "reason": e.reason,
        "attempts": e.attempts,
        "status": e.status,
        "level": r.level,
        "title": r.title,
        "message": message,
        "fields": r.fields,
        "notification_ts": r.ts,
        "dry_run": e.dry_run,
    });
    if let Value::Object(m) = &mut line {
        if message_cut {
            m.insert("message_truncated".into(), json!(true));
            m.insert("message_chars".into(), json!(full.message_chars));
            m.insert("full_text".into(), json!(full.out_path));
        }
        if let Some(k) = dedup_key {
            m.insert("dedup_key".into(), json!(k));
        }
        if let Some(p) = &e.payload {
            m.insert("payload".into(), p.clone());
        }
    }
    gates_core::fsutil::append_line(&env.notify.fallback_file, &redacted_line(&line)?, true)?;
    link_audit_trail(&env.notify.fallback_file);
    Ok(())
}

/// Seed 002 reads the audit trail in `notifications/fallback/`, seed 003 in
/// `monitor_logs/notification_fallback.jsonl`: one file, linked under the
/// other name (once per process).
fn link_audit_trail(fallback: &Path) {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        let (Ok(project), Some(name)) = (
            gates_core::project::Project::discover(),
            fallback.file_name(),
        ) else {
            return;
        };
        let alias = project
            .root
            .join("notifications")
            .join("fallback")
            .join(name);
        if alias != fallback {
            if let Err(e) = gates_core::runlog::link(fallback, &alias) {
                eprintln!("notify: {e:#}");
            }
        }
    });
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A new, unique path for one notification's audit copy in `out_dir`.
pub fn out_path(env: &EnvConfig, r: &Rendered) -> PathBuf {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%3fZ");
    let seq = SEQ.fetch_add(1, Ordering::SeqCst);
    let name = format!(
        "notification_{stamp}_{}_{}_{}-{seq}.json",
        sanitize(&r.env),
        r.level,
        std::process::id()
    );
    env.notify.out_dir.join(name)
}

/// Writes the audit copy of one notification (at `full.out_path`): the full
/// title, message and fields once, and each channel's (capped) payload.
pub fn write_out_copy(
    r: &Rendered,
    full: &FullText<'_>,
    dedup_key: Option<&str>,
    dry_run: bool,
    deliveries: Vec<Value>,
) -> anyhow::Result<PathBuf> {
    /// Serialised straight from borrowed parts: the message is copied once,
    /// into the text written, not once per channel nor into a JSON value.
    #[derive(serde::Serialize)]
    struct Doc<'a> {
        ts: &'a str,
        env: &'a str,
        level: gates_core::Level,
        title: &'a str,
        message: &'a str,
        message_chars: usize,
        truncated_for_channels: bool,
        fields: &'a Map<String, Value>,
        dedup_key: Option<&'a str>,
        dry_run: bool,
        deliveries: Value,
    }
    let doc = Doc {
        ts: &r.ts,
        env: &r.env,
        level: r.level,
        title: &full.title,
        message: &full.message,
        message_chars: full.message_chars,
        truncated_for_channels: full.truncated,
        fields: &full.fields,
        dedup_key,
        dry_run,
        deliveries: redact_value(&Value::Array(deliveries)),
    };
    let text = serde_json::to_string_pretty(&doc)?;
    drop(doc);
    // Belt and braces: a secret split across escapes is caught on the text
    // too (copied only if one is found).
    let redacted = match gates_core::redact::global().redact_cow(&text) {
        std::borrow::Cow::Owned(o) => Some(o),
        std::borrow::Cow::Borrowed(_) => None,
    };
    let mut text = redacted.unwrap_or(text);
    text.push('\n');
    gates_core::fsutil::write_atomic(&full.out_path, text.as_bytes())?;
    Ok(full.out_path.clone())
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// For messages: a path relative to the current folder when it is inside it.
pub fn show(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf())
        .display()
        .to_string()
}
