//! The integrations, one file each behind [`Integration`]: where a channel's
//! secrets come from, the exact payload it is sent and what its answer means.
//! [`Channel`] is the one place channel names map to the type; every
//! delivery goes through the one retrier in [`crate::deliver`].

mod discord;
mod email;
mod http;
mod opsgenie;
mod pagerduty;
mod slack;
mod teams;
mod webhook;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde_json::Value;

use crate::deliver::Attempt;
pub use crate::render::Rendered;

pub use discord::{discord_payload, limits as discord_limits};
pub use email::{
    email_content, find_sendmail, EmailConfig, EmailTransport, SmtpTls, SENDMAIL_DIRS,
};
pub use http::classify;
pub use opsgenie::{opsgenie_action, opsgenie_create_payload};
pub use pagerduty::{pagerduty_dedup_key, pagerduty_payload, PagerDutyAction};
pub use slack::{limits as slack_limits, slack_payload};
pub use teams::{limits as teams_limits, teams_payload};
pub use webhook::webhook_payload;

/// A notification channel. Routes in `environments.json` name them in lower case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    Slack,
    Teams,
    Discord,
    Email,
    Webhook,
    PagerDuty,
    Opsgenie,
}

impl Channel {
    pub const ALL: [Channel; 7] = [
        Channel::Slack,
        Channel::Teams,
        Channel::Discord,
        Channel::Email,
        Channel::Webhook,
        Channel::PagerDuty,
        Channel::Opsgenie,
    ];

    /// The name routes and `--channel` use (gates-core's topology validates
    /// routes against the same names, its `CHANNELS`).
    pub fn name(self) -> &'static str {
        match self {
            Channel::Slack => "slack",
            Channel::Teams => "teams",
            Channel::Discord => "discord",
            Channel::Email => "email",
            Channel::Webhook => "webhook",
            Channel::PagerDuty => "pagerduty",
            Channel::Opsgenie => "opsgenie",
        }
    }

    /// The environment variables that configure the channel (for messages).
    pub fn secret_vars(self) -> &'static str {
        self.integration().secret_vars()
    }

    /// The channel's integration.
    pub fn integration(self) -> &'static dyn Integration {
        match self {
            Channel::Slack => &slack::Slack,
            Channel::Teams => &teams::Teams,
            Channel::Discord => &discord::Discord,
            Channel::Email => &email::Email,
            Channel::Webhook => &webhook::Webhook,
            Channel::PagerDuty => &pagerduty::PagerDuty,
            Channel::Opsgenie => &opsgenie::Opsgenie,
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Channel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Channel::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                format!("unknown channel {s:?}: expected slack, teams, discord, email, webhook, pagerduty or opsgenie")
            })
    }
}

/// Where a configured channel delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Http {
        url: String,
    },
    /// An HTTP API with a key kept out of the payload previews (PagerDuty's
    /// routing key, Opsgenie's API key): set into the request only.
    Keyed {
        url: String,
        key: String,
    },
    Email(EmailConfig),
}

/// The result of reading a channel's configuration from the environment.
#[derive(Debug, Clone, PartialEq)]
pub enum Config {
    Ready(Target),
    /// Its secret is not set: the channel is skipped (said once per process).
    Missing(String),
    /// Set but unusable (a bad port, say): recorded in the fallback file.
    Invalid(String),
}

/// Where an integration reads its settings: a variable (the environment,
/// then `.env.notifications`) and, for email, the sendmail finder.
pub struct Lookup<'a> {
    pub var: &'a dyn Fn(&str) -> Option<String>,
    pub find_sendmail: &'a dyn Fn(&str) -> Result<PathBuf, String>,
}

/// An on-call API's key and endpoint (PagerDuty, Opsgenie): the key from
/// `key_var`, hidden by its value (the names carry no secret marker), and
/// the endpoint from `url_var` or `default_url`, which must be http(s).
fn keyed_config(
    env: &Lookup<'_>,
    (key_var, url_var, default_url): (&str, &str, &str),
    target: impl FnOnce(String, String) -> Target,
) -> Config {
    let Some(key) = (env.var)(key_var) else {
        return Config::Missing(format!("{key_var} is not set"));
    };
    gates_core::redact::add_secret(&key);
    let url = (env.var)(url_var).unwrap_or_else(|| default_url.to_string());
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Config::Invalid(format!("{url_var} is not an http(s) URL"));
    }
    Config::Ready(target(key, url))
}

/// One channel: its settings, its payload, and what its answer means. The
/// retry loop is not here: every integration goes through [`crate::deliver::run`].
pub trait Integration: Sync {
    fn channel(&self) -> Channel;

    /// The environment variables that configure it (for messages).
    fn secret_vars(&self) -> &'static str;

    /// Reads its configuration.
    fn configure(&self, env: &Lookup<'_>) -> Config;

    /// What it is sent, as JSON (email as `{to, from, subject, body}`), for
    /// the wire, the dry-run record and the audit copies.
    fn payload(&self, r: &Rendered, dedup_key: Option<&str>) -> Value;

    /// The request, built once, that each attempt sends. Default: the
    /// payload POSTed as JSON.
    fn prepare(
        &self,
        target: &Target,
        r: &Rendered,
        dedup_key: Option<&str>,
    ) -> Result<Request, String> {
        match target {
            Target::Http { url } => {
                http::Request::new(self.channel(), url, &self.payload(r, dedup_key))
                    .map(Request::Http)
            }
            Target::Email(_) | Target::Keyed { .. } => {
                Err(format!("{} has no request for this target", self.channel()))
            }
        }
    }

    /// Whether a 2xx answer is a delivery; `Err` says why not (Slack wants
    /// exactly `200 ok`). Any 2xx by default.
    fn accepts(&self, _status: u16, _body: &str) -> Result<(), String> {
        Ok(())
    }
}

/// A channel's request, ready to be attempted from a delivery thread.
pub enum Request {
    Http(http::Request),
    Email(email::Request),
}

impl Request {
    pub fn attempt(&self, timeout: Duration) -> Attempt {
        match self {
            Request::Http(r) => r.attempt(timeout),
            Request::Email(r) => r.attempt(timeout),
        }
    }
}

/// Reads a channel's configuration from the process environment, then
/// `.env.notifications` (see [`crate::dotenv`]).
pub fn configure(channel: Channel) -> Config {
    configure_with(channel, &crate::dotenv::var)
}

pub(crate) fn configure_with(channel: Channel, var: &dyn Fn(&str) -> Option<String>) -> Config {
    configure_with_finder(channel, var, &find_sendmail)
}

pub(crate) fn configure_with_finder(
    channel: Channel,
    var: &dyn Fn(&str) -> Option<String>,
    find: &dyn Fn(&str) -> Result<PathBuf, String>,
) -> Config {
    let env = Lookup {
        var,
        find_sendmail: find,
    };
    channel.integration().configure(&env)
}

/// What a channel is sent, as JSON (email as `{to, from, subject, body}`), for
/// the dry-run record and the audit copies in `out_dir`.
pub fn preview(channel: Channel, r: &Rendered, dedup_key: Option<&str>) -> Value {
    channel.integration().payload(r, dedup_key)
}

/// The request for a configured channel.
pub fn prepare(
    channel: Channel,
    target: &Target,
    r: &Rendered,
    dedup_key: Option<&str>,
) -> Result<Request, String> {
    channel.integration().prepare(target, r, dedup_key)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use gates_core::Level;
    use serde_json::{json, Map};

    pub(crate) fn rendered(message: &str) -> Rendered {
        let mut fields = Map::new();
        fields.insert("gate".into(), json!("p95_hash_time"));
        fields.insert("value".into(), json!(2500.5));
        Rendered {
            env: "production".into(),
            level: Level::Critical,
            title: "gate.violated: p95_hash_time".into(),
            message: message.into(),
            fields,
            ts: "2026-11-23T09:00:00.000Z".into(),
        }
    }

    pub(crate) fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        move |n: &str| {
            pairs
                .iter()
                .find(|(k, v)| k == n && !v.is_empty())
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn on_call_keys_and_endpoints_are_checked() {
        let missing = vars(&[("PAGERDUTY_EVENTS_URL", "https://events.example")]);
        assert_eq!(
            configure_with(Channel::PagerDuty, &missing),
            Config::Missing("PAGERDUTY_ROUTING_KEY is not set".into())
        );
        let bad = vars(&[
            ("OPSGENIE_API_KEY", "og-key-123"),
            ("OPSGENIE_API_URL", "ftp://api.example"),
        ]);
        assert_eq!(
            configure_with(Channel::Opsgenie, &bad),
            Config::Invalid("OPSGENIE_API_URL is not an http(s) URL".into())
        );
        let good = vars(&[
            ("OPSGENIE_API_KEY", "og-key-123"),
            ("OPSGENIE_API_URL", "https://api.eu.example/"),
        ]);
        assert_eq!(
            configure_with(Channel::Opsgenie, &good),
            Config::Ready(Target::Keyed {
                url: "https://api.eu.example".into(),
                key: "og-key-123".into()
            })
        );
    }

    #[test]
    fn secrets_only_from_named_variables() {
        let v = vars(&[("SLACK_WEBHOOK_URL", "https://hooks.example/x")]);
        assert_eq!(
            configure_with(Channel::Slack, &v),
            Config::Ready(Target::Http {
                url: "https://hooks.example/x".into()
            })
        );
        assert!(matches!(
            configure_with(Channel::Teams, &v),
            Config::Missing(_)
        ));
        let empty = vars(&[("SLACK_WEBHOOK", "")]);
        assert!(matches!(
            configure_with(Channel::Slack, &empty),
            Config::Missing(_)
        ));
        let bad = vars(&[("WEBHOOK_URL", "ftp://x")]);
        assert!(matches!(
            configure_with(Channel::Webhook, &bad),
            Config::Invalid(_)
        ));
    }

    #[test]
    fn names_map_to_channels_both_ways() {
        for ch in Channel::ALL {
            assert_eq!(ch.name().parse::<Channel>(), Ok(ch));
            assert_eq!(ch.integration().channel(), ch);
        }
        let err = "pager".parse::<Channel>().expect_err("unknown");
        assert!(err.contains("\"pager\"") && err.contains("slack"), "{err}");
    }

    /// Every variable an integration reads is one `.env.notifications` may set.
    #[test]
    fn every_variable_read_is_a_known_dotenv_variable() {
        let asked = std::cell::RefCell::new(Vec::<String>::new());
        let spy = |n: &str| {
            asked.borrow_mut().push(n.to_string());
            Some(match n {
                "EMAIL_TRANSPORT" => "smtp".to_string(),
                "EMAIL_SMTP_TLS" => "none".to_string(),
                "EMAIL_SMTP_HOST" | "SMTP_HOST" => "127.0.0.1".to_string(),
                "EMAIL_SMTP_PORT" | "SMTP_PORT" => "25".to_string(),
                _ => "x".to_string(),
            })
        };
        let none = |n: &str| {
            asked.borrow_mut().push(n.to_string());
            None
        };
        let found = |_: &str| Ok(PathBuf::from("/usr/sbin/sendmail"));
        for ch in Channel::ALL {
            configure_with_finder(ch, &spy, &found);
            configure_with_finder(ch, &none, &found);
        }
        let sendmail = vars(&[("EMAIL_TO", "a@b.c")]);
        let spy_sendmail = |n: &str| {
            asked.borrow_mut().push(n.to_string());
            sendmail(n)
        };
        configure_with_finder(Channel::Email, &spy_sendmail, &found);
        for n in asked.borrow().iter() {
            assert!(crate::dotenv::KNOWN_VARS.contains(&n.as_str()), "{n}");
        }
    }
}
