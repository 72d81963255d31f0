//! Slack incoming webhook (`SLACK_WEBHOOK` / `SLACK_WEBHOOK_URL`): Block Kit,
//! delivered only on `200 ok`.

use serde_json::{json, Value};

use super::{http, Channel, Config, Integration, Lookup, Rendered};
use crate::truncate;

pub struct Slack;

impl Integration for Slack {
    fn channel(&self) -> Channel {
        Channel::Slack
    }

    fn secret_vars(&self) -> &'static str {
        "SLACK_WEBHOOK or SLACK_WEBHOOK_URL"
    }

    fn configure(&self, env: &Lookup<'_>) -> Config {
        http::configure(env, &["SLACK_WEBHOOK", "SLACK_WEBHOOK_URL"])
    }

    fn payload(&self, r: &Rendered, _dedup_key: Option<&str>) -> Value {
        slack_payload(r)
    }

    /// Slack's incoming webhooks answer exactly `200 ok`.
    fn accepts(&self, status: u16, body: &str) -> Result<(), String> {
        if status == 200 && body.trim() == "ok" {
            Ok(())
        } else {
            Err(format!(
                "unexpected Slack answer HTTP {status}{} (expected 200 ok)",
                http::snippet(body)
            ))
        }
    }
}

/// Slack limits (Block Kit): header text 150, section text 3000, at most 10
/// section fields of 2000; `text` is the notification fallback, kept to 3000.
pub mod limits {
    pub const TEXT: usize = 3000;
    pub const HEADER: usize = 150;
    pub const SECTION: usize = 3000;
    pub const FIELDS: usize = 10;
    pub const FIELD: usize = 2000;
}

fn mrkdwn_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Slack incoming webhook: `text` (the fallback shown in notifications) plus
/// Block Kit `blocks`: a header, the message, a fields section, a context line.
pub fn slack_payload(r: &Rendered) -> Value {
    use limits as L;
    let text = truncate::chars(
        &mrkdwn_escape(&format!("{} {}: {}", r.emoji(), r.headline(), r.message)),
        L::TEXT,
    );
    let mut fields = vec![
        json!({"type": "mrkdwn", "text": format!("*Environment*\n{}", mrkdwn_escape(&r.env))}),
        json!({"type": "mrkdwn", "text": format!("*Level*\n{}", r.upper_level())}),
    ];
    for (k, v) in r.field_texts() {
        if fields.len() >= L::FIELDS {
            break;
        }
        let text = format!("*{}*\n{}", mrkdwn_escape(&k), mrkdwn_escape(&v));
        fields.push(json!({"type": "mrkdwn", "text": truncate::chars(&text, L::FIELD)}));
    }
    let message = if r.message.trim().is_empty() {
        "(no message)".to_string()
    } else {
        mrkdwn_escape(&r.message)
    };
    json!({
        "text": text,
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "emoji": true,
                "text": truncate::chars(&format!("{} {}", r.emoji(), r.title), L::HEADER)}},
            {"type": "section", "text": {"type": "mrkdwn", "text": truncate::chars(&message, L::SECTION)}},
            {"type": "section", "fields": fields},
            {"type": "context", "elements": [
                {"type": "mrkdwn", "text": format!("dhash-notify · {} · {}", mrkdwn_escape(&r.env), r.ts)}
            ]}
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::tests::rendered;

    #[test]
    fn slack_escapes_and_limits() {
        let p = slack_payload(&rendered("a <b> & c"));
        assert!(p["text"]
            .as_str()
            .expect("text")
            .contains("a &lt;b&gt; &amp; c"));
        assert_eq!(p["blocks"][0]["type"], "header");
        assert!(p["blocks"][2]["fields"].as_array().expect("fields").len() <= 10);
    }
}
