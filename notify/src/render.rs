//! A notification as the channels get it: redacted first, then cut to the
//! limits every channel shares; and as given (redacted, whole), kept once in
//! the audit copy.

use gates_core::config::EnvConfig;
use gates_core::Level;
use serde_json::{Map, Value};

use crate::record::{self, FullText};
use crate::{truncate, Notification};

/// A notification prepared for rendering: everything a payload shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub env: String,
    pub level: Level,
    pub title: String,
    pub message: String,
    /// The notification's fields as given (for the generic webhook).
    pub fields: Map<String, Value>,
    pub ts: String,
}

impl Rendered {
    /// Fields as display text (strings as they are, other values as JSON).
    pub fn field_texts(&self) -> Vec<(String, String)> {
        self.fields
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| {
                let text = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), text)
            })
            .collect()
    }

    pub(crate) fn emoji(&self) -> &'static str {
        match self.level {
            Level::Debug => "🔍",
            Level::Info => "ℹ️",
            Level::Warning => "⚠️",
            Level::Critical | Level::Error => "🚨",
        }
    }

    pub(crate) fn upper_level(&self) -> String {
        self.level.as_str().to_ascii_uppercase()
    }

    /// `[CRITICAL] title (production)`: the one-line summary.
    pub fn headline(&self) -> String {
        format!(
            "[{}] {}{}",
            self.upper_level(),
            self.title,
            self.env_suffix()
        )
    }

    /// ` (production)`, unless the title already names the environment.
    pub(crate) fn env_suffix(&self) -> String {
        if self.title.contains(&self.env) {
            String::new()
        } else {
            format!(" ({})", self.env)
        }
    }
}

/// Cuts texts to a limit, remembering whether anything was cut.
#[derive(Default)]
struct Cutter {
    truncated: bool,
}

impl Cutter {
    fn cut(&mut self, text: &str, max: usize) -> String {
        if truncate::exceeds(text, max) {
            self.truncated = true;
            truncate::chars(text, max)
        } else {
            text.to_string()
        }
    }

    /// At most [`truncate::FIELDS_MAX`] fields, each at most
    /// [`truncate::FIELD_MAX`] chars as text.
    fn fields(&mut self, fields: &Map<String, Value>) -> Map<String, Value> {
        let mut short = Map::new();
        for (i, (k, v)) in fields.iter().enumerate() {
            if i >= truncate::FIELDS_MAX {
                self.truncated = true;
                break;
            }
            let v = match v {
                Value::String(s) => Value::String(self.cut(s, truncate::FIELD_MAX)),
                other => {
                    let text = other.to_string();
                    if truncate::exceeds(&text, truncate::FIELD_MAX) {
                        Value::String(self.cut(&text, truncate::FIELD_MAX))
                    } else {
                        other.clone()
                    }
                }
            };
            short.insert(truncate::chars(k, 200), v);
        }
        short
    }
}

/// The notification as the channels get it (redacted, then cut to
/// [`truncate::MESSAGE_MAX`] and the field limits) and as given (redacted,
/// whole: kept once, in the audit copy).
pub(crate) fn render<'a>(env: &EnvConfig, n: &'a Notification) -> (Rendered, FullText<'a>) {
    let redactor = gates_core::redact::global();
    // Redact before cutting, so a cut never leaves half a secret behind.
    let message = redactor.redact_cow(&n.message);
    let title = redactor.redact(&n.title);
    let fields = match record::redact_value(&Value::Object(n.fields.clone())) {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let mut cutter = Cutter::default();
    let rendered = Rendered {
        env: env.name.clone(),
        level: n.level,
        message: cutter.cut(&message, truncate::MESSAGE_MAX),
        title: cutter.cut(&title, truncate::TITLE_MAX),
        fields: cutter.fields(&fields),
        ts: gates_core::event::now_rfc3339(),
    };
    let full = FullText {
        title,
        message_chars: message.chars().count(),
        message,
        fields,
        truncated: cutter.truncated,
        out_path: record::out_path(env, &rendered),
    };
    (rendered, full)
}
