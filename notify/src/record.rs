//! The two places a notification that was not delivered is kept:
//!
//! - `env.notify.fallback_file` (default `monitor_logs/notification_fallback.jsonl`):
//!   one JSON line per notification and channel not delivered (or, with
//!   `--dry-run`, that would have been sent), appended with a single write;
//! - `env.notify.out_dir` (default `notifications_out/`): one JSON file per such
//!   notification with every channel's payload, written atomically, for audit.
//!
//! Everything written is redacted first.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Map, Value};

use gates_core::config::EnvConfig;

use crate::channels::Rendered;

/// One channel's line in the fallback file.
#[derive(Debug, Clone)]
pub struct FallbackEntry {
    pub channel: String,
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
    dedup_key: Option<&str>,
    e: &FallbackEntry,
) -> anyhow::Result<()> {
    let mut line = json!({
        "ts": gates_core::event::now_rfc3339(),
        "env": r.env,
        "channel": e.channel,
        "reason": e.reason,
        "attempts": e.attempts,
        "status": e.status,
        "level": r.level,
        "title": r.title,
        "message": r.message,
        "fields": r.fields,
        "notification_ts": r.ts,
        "dry_run": e.dry_run,
    });
    if let (Some(k), Value::Object(m)) = (dedup_key, &mut line) {
        m.insert("dedup_key".into(), json!(k));
    }
    if let (Some(p), Value::Object(m)) = (&e.payload, &mut line) {
        m.insert("payload".into(), p.clone());
    }
    gates_core::fsutil::append_line(&env.notify.fallback_file, &redacted_line(&line)?, true)
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// Writes the audit copy of one notification into `out_dir`; returns its path.
pub fn write_out_copy(
    env: &EnvConfig,
    r: &Rendered,
    dedup_key: Option<&str>,
    dry_run: bool,
    deliveries: Vec<Value>,
) -> anyhow::Result<PathBuf> {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%3fZ");
    let seq = SEQ.fetch_add(1, Ordering::SeqCst);
    let name = format!(
        "notification_{stamp}_{}_{}_{}-{seq}.json",
        sanitize(&r.env),
        r.level,
        std::process::id()
    );
    let path = env.notify.out_dir.join(name);
    let doc = json!({
        "ts": r.ts,
        "env": r.env,
        "level": r.level,
        "title": r.title,
        "message": r.message,
        "fields": r.fields,
        "dedup_key": dedup_key,
        "dry_run": dry_run,
        "deliveries": deliveries,
    });
    let text = serde_json::to_string_pretty(&redact_value(&doc))?;
    let text = gates_core::redact::global().redact(&text);
    gates_core::fsutil::write_atomic(&path, format!("{text}\n").as_bytes())?;
    Ok(path)
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
