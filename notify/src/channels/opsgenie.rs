//! Opsgenie Alert API (`OPSGENIE_API_KEY`; `OPSGENIE_API_URL` defaults to
//! `https://api.opsgenie.com`, `https://api.eu.opsgenie.com` for the EU):
//! `POST /v2/alerts` to create, `POST /v2/alerts/{alias}/acknowledge` and
//! `/close` with `identifierType=alias`, authorised by `GenieKey <key>`.
//! The alias is the same key PagerDuty gets as `dedup_key`, so repeats
//! of an alert are one Opsgenie alert (Opsgenie dedups open alerts by alias).

use serde_json::{json, Map, Value};

use super::pagerduty::{pagerduty_dedup_key, PagerDutyAction};
use super::{http, Channel, Config, Integration, Lookup, Rendered, Request, Target};
use crate::truncate;
use gates_core::Level;

pub const DEFAULT_URL: &str = "https://api.opsgenie.com";
/// Alert API limits: message 130 chars, alias 512, description 15000,
/// details values 8000.
const MESSAGE_MAX: usize = 130;
const ALIAS_MAX: usize = 512;
const DESCRIPTION_MAX: usize = 15_000;
const DETAIL_MAX: usize = 8_000;

pub struct Opsgenie;

impl Integration for Opsgenie {
    fn channel(&self) -> Channel {
        Channel::Opsgenie
    }

    fn secret_vars(&self) -> &'static str {
        "OPSGENIE_API_KEY (OPSGENIE_API_URL for the EU instance)"
    }

    fn configure(&self, env: &Lookup<'_>) -> Config {
        let vars = ("OPSGENIE_API_KEY", "OPSGENIE_API_URL", DEFAULT_URL);
        super::keyed_config(env, vars, |key, url| Target::Keyed {
            url: url.trim_end_matches('/').to_string(),
            key,
        })
    }

    /// `{path, body}`: where the request goes and what it carries.
    fn payload(&self, r: &Rendered, dedup_key: Option<&str>) -> Value {
        let (path, body) = opsgenie_action(r, dedup_key);
        json!({"path": path, "body": body})
    }

    fn prepare(
        &self,
        target: &Target,
        r: &Rendered,
        dedup_key: Option<&str>,
    ) -> Result<Request, String> {
        let Target::Keyed { url, key } = target else {
            return Err("opsgenie needs its API key".into());
        };
        let (path, body) = opsgenie_action(r, dedup_key);
        http::Request::new(Channel::Opsgenie, &format!("{url}{path}"), &body)
            .map(|req| Request::Http(req.header("Authorization", &format!("GenieKey {key}"))))
    }
}

fn alias(r: &Rendered, dedup_key: Option<&str>) -> String {
    truncate::chars(&pagerduty_dedup_key(r, dedup_key), ALIAS_MAX)
}

/// The path (under the API URL) and the body for a notification: create,
/// or acknowledge / close the alert with the same alias.
pub fn opsgenie_action(r: &Rendered, dedup_key: Option<&str>) -> (String, Value) {
    let alias = alias(r, dedup_key);
    let by_alias = |verb: &str| {
        let a: String = alias
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                other => format!("%{other:02X}"),
            })
            .collect();
        format!("/v2/alerts/{a}/{verb}?identifierType=alias")
    };
    let who = r.fields.get("acknowledged_by").and_then(Value::as_str);
    let small = json!({"source": "dhash-notify", "user": who.unwrap_or("dhash-notify"),
                       "note": truncate::chars(&r.message, 25_000)});
    match PagerDutyAction::of(r) {
        PagerDutyAction::Acknowledge => (by_alias("acknowledge"), small),
        PagerDutyAction::Resolve => (by_alias("close"), small),
        PagerDutyAction::Trigger => ("/v2/alerts".to_string(), opsgenie_create_payload(r, &alias)),
    }
}

/// `POST /v2/alerts`: message, alias, description, priority (critical P1,
/// error P2, warning P3, info P5), tags, details (strings), entity, source.
pub fn opsgenie_create_payload(r: &Rendered, alias: &str) -> Value {
    let priority = match r.level {
        Level::Critical => "P1",
        Level::Error => "P2",
        Level::Warning => "P3",
        Level::Info | Level::Debug => "P5",
    };
    let mut details = Map::new();
    for (k, v) in r.field_texts() {
        details.insert(k, json!(truncate::chars(&v, DETAIL_MAX)));
    }
    json!({
        "message": truncate::chars(&r.headline(), MESSAGE_MAX),
        "alias": alias,
        "description": truncate::chars(&r.message, DESCRIPTION_MAX),
        "priority": priority,
        "source": "dhash-notify",
        "entity": format!("dhash-{}", r.env),
        "tags": ["dhash", r.env.clone(), r.level.as_str().to_string()],
        "details": details,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::tests::rendered;

    #[test]
    fn create_then_acknowledge_by_alias() {
        let mut r = rendered("a".repeat(200).as_str());
        r.fields
            .insert("incident_key".into(), json!("dhash/production/i 1"));
        let (path, body) = opsgenie_action(&r, None);
        assert_eq!(path, "/v2/alerts");
        assert_eq!(body["priority"], "P1");
        assert!(
            body["message"]
                .as_str()
                .map(|m| m.chars().count() <= MESSAGE_MAX)
                == Some(true)
        );
        r.fields
            .insert("pagerduty_action".into(), json!("acknowledge"));
        let (path, _) = opsgenie_action(&r, None);
        assert_eq!(
            path,
            "/v2/alerts/dhash%2Fproduction%2Fi%201/acknowledge?identifierType=alias"
        );
    }
}
