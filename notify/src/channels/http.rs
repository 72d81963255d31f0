//! What the HTTP integrations share: the URL from their variables, one JSON
//! POST per attempt, and the reading of the answer (2xx delivered, 429 and
//! 5xx retried, honouring `retry_after`, other 4xx permanent).

use std::time::Duration;

use serde_json::Value;

use super::{Channel, Config, Lookup, Target};
use crate::deliver::Attempt;
use crate::redact;

/// Response bodies are read up to this size (error text, Slack's `ok`).
const BODY_LIMIT: u64 = 64 * 1024;

/// The first of `names` that is set, as the channel's URL.
pub(super) fn configure(env: &Lookup<'_>, names: &[&str]) -> Config {
    match names.iter().find_map(|n| (env.var)(n)) {
        None => Config::Missing(format!("{} is not set", names.join(" / "))),
        Some(url) if url.starts_with("https://") || url.starts_with("http://") => {
            Config::Ready(Target::Http { url })
        }
        Some(_) => Config::Invalid(format!(
            "{} is not an http:// or https:// URL",
            names.join(" / ")
        )),
    }
}

/// One channel's POST, encoded once.
pub struct Request {
    agent: ureq::Agent,
    channel: Channel,
    url: String,
    body: Vec<u8>,
    /// Extra headers (Opsgenie's `Authorization: GenieKey …`).
    headers: Vec<(String, String)>,
}

impl Request {
    pub fn new(channel: Channel, url: &str, payload: &Value) -> Result<Request, String> {
        let body =
            serde_json::to_vec(payload).map_err(|e| format!("cannot encode the payload: {e}"))?;
        Ok(Request {
            agent: agent(),
            channel,
            url: url.to_string(),
            body,
            headers: Vec::new(),
        })
    }

    /// Adds a header to every attempt.
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// One POST of the JSON body.
    pub fn attempt(&self, timeout: Duration) -> Attempt {
        let mut req = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/json");
        for (name, value) in &self.headers {
            req = req.header(name, value);
        }
        let result = req
            .config()
            .timeout_global(Some(timeout))
            .build()
            .send(&self.body[..]);
        match result {
            Ok(resp) => self.answered(resp),
            Err(e) => failed(e, timeout),
        }
    }

    fn answered(&self, mut resp: ureq::http::Response<ureq::Body>) -> Attempt {
        let status = resp.status().as_u16();
        let header = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(retry_after_header);
        let text = resp
            .body_mut()
            .with_config()
            .limit(BODY_LIMIT)
            .read_to_string()
            .unwrap_or_default();
        classify(self.channel, status, &text, header)
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(concat!("dhash-notify/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

/// No answer: a bad request is permanent, the network is worth another try.
fn failed(e: ureq::Error, timeout: Duration) -> Attempt {
    let reason = redact(&format!("{e}"));
    match e {
        ureq::Error::BadUri(_)
        | ureq::Error::Http(_)
        | ureq::Error::InvalidProxyUrl
        | ureq::Error::RequireHttpsOnly(_)
        | ureq::Error::TooManyRedirects
        | ureq::Error::RedirectFailed => Attempt::Permanent {
            reason,
            status: None,
        },
        ureq::Error::Timeout(_) => Attempt::Retry {
            reason: format!("timed out after {:.1}s ({reason})", timeout.as_secs_f64()),
            status: None,
            after: None,
        },
        _ => Attempt::Retry {
            reason,
            status: None,
            after: None,
        },
    }
}

/// The start of an answer's body, for reasons (empty when there is none).
pub(super) fn snippet(body: &str) -> String {
    let b = body.trim();
    if b.is_empty() {
        String::new()
    } else {
        format!(": {}", crate::truncate::chars(b, 200))
    }
}

/// Decides what an HTTP answer means for a channel.
pub fn classify(
    channel: Channel,
    status: u16,
    body: &str,
    retry_header: Option<Duration>,
) -> Attempt {
    match status {
        200..=299 => match channel.integration().accepts(status, body) {
            Ok(()) => Attempt::Delivered {
                status: Some(status),
            },
            Err(why) => Attempt::Permanent {
                reason: redact(&why),
                status: Some(status),
            },
        },
        429 => {
            let after = retry_after_from_body(body).or(retry_header);
            Attempt::Retry {
                reason: redact(&format!(
                    "HTTP 429 rate limited{}{}",
                    after
                        .map(|d| format!(" (retry_after {:.3}s)", d.as_secs_f64()))
                        .unwrap_or_default(),
                    snippet(body)
                )),
                status: Some(429),
                after,
            }
        }
        500..=599 => Attempt::Retry {
            reason: redact(&format!("HTTP {status}{}", snippet(body))),
            status: Some(status),
            after: None,
        },
        _ => Attempt::Permanent {
            reason: redact(&format!("HTTP {status}{}", snippet(body))),
            status: Some(status),
        },
    }
}

/// Discord (and others) put `retry_after` in seconds, as a float, in the JSON body.
fn retry_after_from_body(body: &str) -> Option<Duration> {
    let v: Value = serde_json::from_str(body).ok()?;
    seconds(v.get("retry_after")?.as_f64()?)
}

fn retry_after_header(value: &str) -> Option<Duration> {
    seconds(value.trim().parse().ok()?)
}

/// A server's wait in seconds, at most an hour.
fn seconds(secs: f64) -> Option<Duration> {
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_per_channel() {
        assert_eq!(
            classify(Channel::Slack, 200, "ok", None),
            Attempt::Delivered { status: Some(200) }
        );
        assert!(matches!(
            classify(Channel::Slack, 200, "invalid_payload", None),
            Attempt::Permanent { .. }
        ));
        assert!(matches!(
            classify(Channel::Teams, 202, "", None),
            Attempt::Delivered { .. }
        ));
        assert!(matches!(
            classify(Channel::Webhook, 503, "", None),
            Attempt::Retry { after: None, .. }
        ));
        assert!(matches!(
            classify(Channel::Discord, 404, "", None),
            Attempt::Permanent { .. }
        ));
        match classify(
            Channel::Discord,
            429,
            r#"{"retry_after":0.5}"#,
            Some(Duration::from_secs(9)),
        ) {
            Attempt::Retry { after, .. } => assert_eq!(after, Some(Duration::from_millis(500))),
            other => panic!("{other:?}"),
        }
        match classify(
            Channel::Slack,
            429,
            "rate_limited",
            Some(Duration::from_secs(2)),
        ) {
            Attempt::Retry { after, .. } => assert_eq!(after, Some(Duration::from_secs(2))),
            other => panic!("{other:?}"),
        }
    }
}
