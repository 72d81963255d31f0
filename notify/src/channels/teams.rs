//! Microsoft Teams (`TEAMS_WEBHOOK` / `TEAMS_WEBHOOK_URL`): a Workflows
//! webhook ("When a Teams webhook request is received") taking an Adaptive
//! Card; `202 Accepted` or `200` is a delivery.

use gates_core::Level;
use serde_json::{json, Value};

use super::{http, Channel, Config, Integration, Lookup, Rendered};
use crate::truncate;

pub struct Teams;

impl Integration for Teams {
    fn channel(&self) -> Channel {
        Channel::Teams
    }

    fn secret_vars(&self) -> &'static str {
        "TEAMS_WEBHOOK or TEAMS_WEBHOOK_URL"
    }

    fn configure(&self, env: &Lookup<'_>) -> Config {
        http::configure(env, &["TEAMS_WEBHOOK", "TEAMS_WEBHOOK_URL"])
    }

    fn payload(&self, r: &Rendered, _dedup_key: Option<&str>) -> Value {
        teams_payload(r)
    }
}

/// Teams limits: the whole request must stay under about 28 KB.
pub mod limits {
    pub const MESSAGE: usize = 12_000;
    pub const FACTS: usize = 20;
    pub const FACT_VALUE: usize = 1000;
    pub const TITLE: usize = 500;
}

/// Microsoft Teams Workflows webhook ("When a Teams webhook request is
/// received"): a `message` with one Adaptive Card 1.4 attachment. The retired
/// Office 365 connector format (MessageCard) is never sent.
pub fn teams_payload(r: &Rendered) -> Value {
    use limits as L;
    let color = match r.level {
        Level::Debug => "Default",
        Level::Info => "Accent",
        Level::Warning => "Warning",
        Level::Critical | Level::Error => "Attention",
    };
    let mut facts = vec![
        json!({"title": "Environment", "value": r.env}),
        json!({"title": "Level", "value": r.upper_level()}),
    ];
    for (k, v) in r.field_texts() {
        if facts.len() >= L::FACTS - 1 {
            break;
        }
        facts.push(
            json!({"title": truncate::chars(&k, 100), "value": truncate::chars(&v, L::FACT_VALUE)}),
        );
    }
    facts.push(json!({"title": "Time", "value": r.ts}));
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "msteams": {"width": "Full"},
                "body": [
                    {"type": "TextBlock", "text": truncate::chars(&format!("{} {}", r.emoji(), r.title), L::TITLE),
                     "weight": "Bolder", "size": "Medium", "color": color, "wrap": true},
                    {"type": "TextBlock", "text": truncate::chars(&r.message, L::MESSAGE), "wrap": true},
                    {"type": "FactSet", "facts": facts}
                ]
            }
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::tests::rendered;

    #[test]
    fn teams_is_an_adaptive_card_never_a_message_card() {
        let p = teams_payload(&rendered("hello"));
        assert_eq!(p["type"], "message");
        let a = &p["attachments"][0];
        assert_eq!(a["contentType"], "application/vnd.microsoft.card.adaptive");
        assert_eq!(a["content"]["type"], "AdaptiveCard");
        assert_eq!(a["content"]["version"], "1.4");
        assert!(!p.to_string().contains("MessageCard"));
    }
}
