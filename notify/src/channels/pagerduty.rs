//! PagerDuty Events API v2 (`PAGERDUTY_ROUTING_KEY`; `PAGERDUTY_EVENTS_URL`
//! defaults to `https://events.pagerduty.com/v2/enqueue`): trigger,
//! acknowledge and resolve, with a `dedup_key` that is ours, so the same
//! alert or incident is one PagerDuty incident whichever side acts on it.
//!
//! The action comes from the notification's fields: `pagerduty_action`
//! (`acknowledge`, `resolve`; an upstream `gate.resolved` event resolves),
//! else `trigger`. The key: the field `incident_key` (an incident's), else
//! notify's dedup key, else a hash of environment and title. The body is
//! built once per notification, so every retry sends the same key.

use serde_json::{json, Map, Value};

use super::{http, Channel, Config, Integration, Lookup, Rendered, Request, Target};
use crate::truncate;
use gates_core::Level;

pub const DEFAULT_URL: &str = "https://events.pagerduty.com/v2/enqueue";
/// What previews and audit copies show instead of the routing key.
const KEY_SHOWN: &str = "[PAGERDUTY_ROUTING_KEY]";
/// Events API v2 limits: `summary` 1024 chars, `dedup_key` 255.
const SUMMARY_MAX: usize = 1024;
const DEDUP_MAX: usize = 255;

pub struct PagerDuty;

/// The Events API v2 `event_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PagerDutyAction {
    Trigger,
    Acknowledge,
    Resolve,
}

impl PagerDutyAction {
    pub fn as_str(self) -> &'static str {
        match self {
            PagerDutyAction::Trigger => "trigger",
            PagerDutyAction::Acknowledge => "acknowledge",
            PagerDutyAction::Resolve => "resolve",
        }
    }

    /// The action a notification asks for.
    pub fn of(r: &Rendered) -> PagerDutyAction {
        let field = r.fields.get("pagerduty_action").and_then(Value::as_str);
        let event = r.fields.get("event").and_then(Value::as_str);
        match (field, event) {
            (Some("acknowledge"), _) => PagerDutyAction::Acknowledge,
            (Some("resolve"), _) | (_, Some("gate.resolved")) => PagerDutyAction::Resolve,
            _ => PagerDutyAction::Trigger,
        }
    }
}

impl Integration for PagerDuty {
    fn channel(&self) -> Channel {
        Channel::PagerDuty
    }

    fn secret_vars(&self) -> &'static str {
        "PAGERDUTY_ROUTING_KEY (PAGERDUTY_EVENTS_URL to override the endpoint)"
    }

    fn configure(&self, env: &Lookup<'_>) -> Config {
        let vars = ("PAGERDUTY_ROUTING_KEY", "PAGERDUTY_EVENTS_URL", DEFAULT_URL);
        super::keyed_config(env, vars, |key, url| Target::Keyed { url, key })
    }

    fn payload(&self, r: &Rendered, dedup_key: Option<&str>) -> Value {
        pagerduty_payload(r, dedup_key, KEY_SHOWN)
    }

    fn prepare(
        &self,
        target: &Target,
        r: &Rendered,
        dedup_key: Option<&str>,
    ) -> Result<Request, String> {
        let Target::Keyed { url, key } = target else {
            return Err("pagerduty needs its routing key".into());
        };
        let body = pagerduty_payload(r, dedup_key, key);
        http::Request::new(Channel::PagerDuty, url, &body).map(Request::Http)
    }
}

/// The `dedup_key`: the incident's key, else ours, else a hash of
/// environment and title; at most 255 chars (a longer one is hashed).
pub fn pagerduty_dedup_key(r: &Rendered, dedup_key: Option<&str>) -> String {
    let key = match (
        r.fields.get("incident_key").and_then(Value::as_str),
        dedup_key,
    ) {
        (Some(k), _) => k.to_string(),
        (None, Some(k)) => k.to_string(),
        (None, None) => format!("{}|{}", r.env, r.title),
    };
    if key.chars().count() > DEDUP_MAX {
        format!("dhash-{}", crate::dedup::hash_key(&key))
    } else {
        key
    }
}

fn severity(level: Level) -> &'static str {
    match level {
        Level::Critical => "critical",
        Level::Error => "error",
        Level::Warning => "warning",
        Level::Info | Level::Debug => "info",
    }
}

/// An Events API v2 body. Acknowledge and resolve carry only the key and
/// action, as the API documents; a trigger carries the payload.
pub fn pagerduty_payload(r: &Rendered, dedup_key: Option<&str>, routing_key: &str) -> Value {
    let action = PagerDutyAction::of(r);
    let key = pagerduty_dedup_key(r, dedup_key);
    if action != PagerDutyAction::Trigger {
        return json!({"routing_key": routing_key, "event_action": action.as_str(), "dedup_key": key});
    }
    let mut details = Map::new();
    details.insert("message".into(), json!(r.message));
    for (k, v) in &r.fields {
        details.insert(k.clone(), v.clone());
    }
    let mut payload = json!({
        "summary": truncate::chars(&r.headline(), SUMMARY_MAX),
        "source": format!("dhash-{}", r.env),
        "severity": severity(r.level),
        "timestamp": r.ts,
        "component": "dhash",
        "group": r.env,
        "custom_details": details,
    });
    if let Some(class) = r.fields.get("event").and_then(Value::as_str) {
        payload["class"] = json!(class);
    }
    json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": key,
        "client": "dhash-notify",
        "payload": payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::tests::rendered;

    #[test]
    fn trigger_ack_and_resolve_share_the_key() {
        let mut r = rendered("p95 above 2000 ms");
        r.fields
            .insert("incident_key".into(), json!("dhash/production/incident_x"));
        let t = pagerduty_payload(&r, Some("production|other"), "k");
        assert_eq!(t["event_action"], "trigger");
        assert_eq!(t["dedup_key"], "dhash/production/incident_x");
        assert_eq!(t["payload"]["severity"], "critical");
        r.fields
            .insert("pagerduty_action".into(), json!("acknowledge"));
        let a = pagerduty_payload(&r, None, "k");
        assert_eq!(a.as_object().map(|o| o.len()), Some(3), "{a}");
        assert_eq!(a["dedup_key"], t["dedup_key"]);
        let long = "x".repeat(300);
        r.fields.remove("incident_key");
        assert!(pagerduty_dedup_key(&r, Some(&long)).len() <= DEDUP_MAX);
        assert_eq!(PagerDuty.payload(&r, None)["routing_key"], KEY_SHOWN);
    }
}
