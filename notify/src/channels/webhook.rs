//! The generic JSON webhook (`WEBHOOK_URL`): the notification as it is, for
//! machines (an incident tool, a chat bridge, a log sink).

use serde_json::{json, Value};

use super::{http, Channel, Config, Integration, Lookup, Rendered};

pub struct Webhook;

impl Integration for Webhook {
    fn channel(&self) -> Channel {
        Channel::Webhook
    }

    fn secret_vars(&self) -> &'static str {
        "WEBHOOK_URL"
    }

    fn configure(&self, env: &Lookup<'_>) -> Config {
        http::configure(env, &["WEBHOOK_URL"])
    }

    fn payload(&self, r: &Rendered, dedup_key: Option<&str>) -> Value {
        webhook_payload(r, dedup_key)
    }
}

/// The generic JSON webhook's body; the message is cut at
/// [`crate::truncate::MESSAGE_MAX`] chars and fields at
/// [`crate::truncate::FIELD_MAX`] (with the marker) before it gets here.
pub fn webhook_payload(r: &Rendered, dedup_key: Option<&str>) -> Value {
    json!({
        "source": "dhash-notify",
        "ts": r.ts,
        "env": r.env,
        "level": r.level,
        "title": r.title,
        "message": r.message,
        "event": r.fields.get("event").cloned().unwrap_or(Value::Null),
        "fields": r.fields,
        "dedup_key": dedup_key,
    })
}
