//! The channels: where their secrets come from (environment variables only)
//! and the exact payload each one is sent.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use gates_core::Level;
use serde_json::{json, Map, Value};

use crate::truncate;

/// A notification channel. Routes in `environments.json` name them in lower case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    Slack,
    Teams,
    Discord,
    Email,
    Webhook,
}

impl Channel {
    pub const ALL: [Channel; 5] = [
        Channel::Slack,
        Channel::Teams,
        Channel::Discord,
        Channel::Email,
        Channel::Webhook,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Channel::Slack => "slack",
            Channel::Teams => "teams",
            Channel::Discord => "discord",
            Channel::Email => "email",
            Channel::Webhook => "webhook",
        }
    }

    /// The environment variables that configure the channel (for messages).
    pub fn secret_vars(self) -> &'static str {
        match self {
            Channel::Slack => "SLACK_WEBHOOK or SLACK_WEBHOOK_URL",
            Channel::Teams => "TEAMS_WEBHOOK or TEAMS_WEBHOOK_URL",
            Channel::Discord => "DISCORD_WEBHOOK_URL",
            Channel::Email => "EMAIL_TO (sent by EMAIL_SMTP_HOST, or else the local sendmail)",
            Channel::Webhook => "WEBHOOK_URL",
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
                format!("unknown channel {s:?}: expected slack, teams, discord, email or webhook")
            })
    }
}

/// How the SMTP connection is secured (`EMAIL_SMTP_TLS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// `starttls` (default): plain connect, then STARTTLS is required (port 587).
    StartTls,
    /// `tls`: implicit TLS from the first byte (SMTPS, port 465).
    Implicit,
    /// `none`: plaintext; for a loopback relay only when credentials are set.
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EmailTransport {
    Smtp {
        host: String,
        port: u16,
        tls: SmtpTls,
        user: Option<String>,
        password: Option<String>,
    },
    Sendmail {
        command: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct EmailConfig {
    pub to: Vec<String>,
    pub from: String,
    pub transport: EmailTransport,
}

/// Where a configured channel delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Http { url: String },
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
    let first = |names: &[&str]| names.iter().find_map(|n| var(n));
    let http = |names: &[&str]| match first(names) {
        None => Config::Missing(format!("{} is not set", names.join(" / "))),
        Some(url) if url.starts_with("https://") || url.starts_with("http://") => {
            Config::Ready(Target::Http { url })
        }
        Some(_) => Config::Invalid(format!(
            "{} is not an http:// or https:// URL",
            names.join(" / ")
        )),
    };
    match channel {
        Channel::Slack => http(&["SLACK_WEBHOOK", "SLACK_WEBHOOK_URL"]),
        Channel::Teams => http(&["TEAMS_WEBHOOK", "TEAMS_WEBHOOK_URL"]),
        Channel::Discord => http(&["DISCORD_WEBHOOK_URL", "DISCORD_WEBHOOK"]),
        Channel::Webhook => http(&["WEBHOOK_URL"]),
        Channel::Email => configure_email(var, find),
    }
}

/// Where `sendmail` is looked for after `PATH` (it often lives outside it).
pub const SENDMAIL_DIRS: &[&str] = &["/usr/sbin", "/usr/lib"];

/// Finds the sendmail program: `command` as a path when it holds a `/`, else
/// on `PATH`, then in [`SENDMAIL_DIRS`]. The error says where it looked.
pub fn find_sendmail(command: &str) -> Result<PathBuf, String> {
    if command.contains('/') {
        let p = PathBuf::from(command);
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(format!("{command} is not an executable file"))
        };
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(SENDMAIL_DIRS.iter().map(PathBuf::from));
    dirs.iter()
        .map(|d| d.join(command))
        .find(|p| is_executable(p))
        .ok_or_else(|| {
            format!(
                "no {command} program found (looked on PATH and in {})",
                SENDMAIL_DIRS.join(", ")
            )
        })
}

fn is_executable(p: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(p) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.is_file() && meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        meta.is_file()
    }
}

fn configure_email(
    var: &dyn Fn(&str) -> Option<String>,
    find: &dyn Fn(&str) -> Result<PathBuf, String>,
) -> Config {
    let Some(to) = var("EMAIL_TO") else {
        return Config::Missing("EMAIL_TO is not set".into());
    };
    let to: Vec<String> = to
        .split([',', ';'])
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let from = var("EMAIL_FROM").unwrap_or_else(|| "dhash-notify@localhost".to_string());
    let host = var("EMAIL_SMTP_HOST").or_else(|| var("SMTP_HOST"));
    // No transport named: SMTP when a host is set, else the local sendmail.
    let transport = var("EMAIL_TRANSPORT").unwrap_or_else(|| {
        if host.is_some() {
            "smtp".into()
        } else {
            "sendmail".into()
        }
    });
    let transport = match transport.to_ascii_lowercase().as_str() {
        "sendmail" => {
            let command = var("EMAIL_SENDMAIL").unwrap_or_else(|| "sendmail".into());
            match find(&command) {
                Ok(path) => EmailTransport::Sendmail {
                    command: path.to_string_lossy().to_string(),
                },
                Err(why) => {
                    return Config::Invalid(format!(
                        "EMAIL_TO is set but {why}; set EMAIL_SMTP_HOST to send by SMTP, \
                         or install sendmail (or name it in EMAIL_SENDMAIL)"
                    ))
                }
            }
        }
        "smtp" => {
            let Some(host) = host else {
                return Config::Invalid(
                    "EMAIL_TRANSPORT=smtp but EMAIL_SMTP_HOST is not set".into(),
                );
            };
            let tls = match var("EMAIL_SMTP_TLS")
                .unwrap_or_else(|| "starttls".into())
                .to_ascii_lowercase()
                .as_str()
            {
                "starttls" => SmtpTls::StartTls,
                "tls" | "smtps" | "implicit" => SmtpTls::Implicit,
                "none" | "plain" | "off" => SmtpTls::None,
                other => {
                    return Config::Invalid(format!(
                        "EMAIL_SMTP_TLS={other:?}: expected starttls, tls or none"
                    ))
                }
            };
            let port = match var("EMAIL_SMTP_PORT").or_else(|| var("SMTP_PORT")) {
                None => match tls {
                    SmtpTls::StartTls => 587,
                    SmtpTls::Implicit => 465,
                    SmtpTls::None => 25,
                },
                Some(p) => match p.parse::<u16>() {
                    Ok(p) if p > 0 => p,
                    _ => {
                        return Config::Invalid(format!(
                            "EMAIL_SMTP_PORT={p:?}: expected a port number"
                        ))
                    }
                },
            };
            let user = var("EMAIL_USER").or_else(|| var("SMTP_USER"));
            let password = var("EMAIL_PASSWORD")
                .or_else(|| var("EMAIL_SMTP_PASSWORD"))
                .or_else(|| var("SMTP_PASSWORD"));
            if tls == SmtpTls::None && (user.is_some() || password.is_some()) && !is_loopback(&host)
            {
                return Config::Invalid(
                    "EMAIL_SMTP_TLS=none would send the SMTP password in plaintext to a \
                     non-loopback host; use starttls or tls"
                        .into(),
                );
            }
            EmailTransport::Smtp {
                host,
                port,
                tls,
                user,
                password,
            }
        }
        other => {
            return Config::Invalid(format!(
                "EMAIL_TRANSPORT={other:?}: expected smtp or sendmail"
            ))
        }
    };
    if to.is_empty() {
        return Config::Invalid("EMAIL_TO holds no address".into());
    }
    Config::Ready(Target::Email(EmailConfig {
        to,
        from,
        transport,
    }))
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

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

    fn emoji(&self) -> &'static str {
        match self.level {
            Level::Debug => "🔍",
            Level::Info => "ℹ️",
            Level::Warning => "⚠️",
            Level::Critical | Level::Error => "🚨",
        }
    }

    fn upper_level(&self) -> String {
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
    fn env_suffix(&self) -> String {
        if self.title.contains(&self.env) {
            String::new()
        } else {
            format!(" ({})", self.env)
        }
    }
}

/// Slack limits (Block Kit): header text 150, section text 3000, at most 10
/// section fields of 2000; `text` is the notification fallback, kept to 3000.
pub mod slack_limits {
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
    use slack_limits as L;
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

/// Teams limits: the whole request must stay under about 28 KB.
pub mod teams_limits {
    pub const MESSAGE: usize = 12_000;
    pub const FACTS: usize = 20;
    pub const FACT_VALUE: usize = 1000;
    pub const TITLE: usize = 500;
}

/// Microsoft Teams Workflows webhook ("When a Teams webhook request is
/// received"): a `message` with one Adaptive Card 1.4 attachment. The retired
/// Office 365 connector format (MessageCard) is never sent.
pub fn teams_payload(r: &Rendered) -> Value {
    use teams_limits as L;
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

/// Discord webhook limits (counted in UTF-16 units, as Discord does).
pub mod discord_limits {
    pub const CONTENT: usize = 2000;
    pub const TITLE: usize = 256;
    pub const DESCRIPTION: usize = 4096;
    pub const FIELDS: usize = 25;
    pub const FIELD_NAME: usize = 256;
    pub const FIELD_VALUE: usize = 1024;
    pub const FOOTER: usize = 2048;
    /// Title + description + field names and values + footer of one embed.
    pub const EMBED_TOTAL: usize = 6000;
}

/// Discord webhook: a short `content` line plus one embed (title, message as
/// description, fields, colour, timestamp). Mentions are disabled so a message
/// can never ping `@everyone`.
pub fn discord_payload(r: &Rendered) -> Value {
    use discord_limits as L;
    let color: u32 = match r.level {
        Level::Debug => 0x95A5A6,
        Level::Info => 0x3498DB,
        Level::Warning => 0xF1C40F,
        Level::Critical | Level::Error => 0xE74C3C,
    };
    let content = truncate::utf16(
        &format!(
            "{} **[{}]** {}{}",
            r.emoji(),
            r.upper_level(),
            r.title,
            r.env_suffix()
        ),
        L::CONTENT,
    );
    let title = truncate::utf16(&r.title, L::TITLE);
    let footer = "dhash-notify".to_string();
    let mut fields: Vec<(String, String, bool)> = vec![
        ("Environment".into(), r.env.clone(), true),
        ("Level".into(), r.upper_level(), true),
    ];
    for (k, v) in r.field_texts() {
        if fields.len() >= L::FIELDS {
            break;
        }
        let v = if v.is_empty() { "-".to_string() } else { v };
        fields.push((
            truncate::utf16(&k, L::FIELD_NAME),
            truncate::utf16(&v, L::FIELD_VALUE),
            v.len() <= 40,
        ));
    }
    // Keep the embed total within 6000: fields give way first (a message is
    // what people read), but the description is never cut below 1000.
    let fixed = truncate::utf16_len(&title) + truncate::utf16_len(&footer);
    let field_len = |f: &[(String, String, bool)]| -> usize {
        f.iter()
            .map(|(n, v, _)| truncate::utf16_len(n) + truncate::utf16_len(v))
            .sum()
    };
    let min_description = 1000.min(truncate::utf16_len(&r.message));
    while fields.len() > 2 && fixed + field_len(&fields) + min_description > L::EMBED_TOTAL {
        fields.pop();
    }
    let room = L::EMBED_TOTAL.saturating_sub(fixed + field_len(&fields));
    let description = if r.message.is_empty() {
        "(no message)".to_string()
    } else {
        truncate::utf16(&r.message, L::DESCRIPTION.min(room))
    };
    let fields: Vec<Value> = fields
        .into_iter()
        .map(|(name, value, inline)| json!({"name": name, "value": value, "inline": inline}))
        .collect();
    json!({
        "content": content,
        "embeds": [{
            "title": title,
            "description": description,
            "color": color,
            "fields": fields,
            "footer": {"text": truncate::utf16(&footer, L::FOOTER)},
            "timestamp": r.ts,
        }],
        "allowed_mentions": {"parse": []}
    })
}

/// The generic JSON webhook (`WEBHOOK_URL`): the notification as it is, for
/// machines (an incident tool, a chat bridge, a log sink); the message is cut
/// at [`truncate::MESSAGE_MAX`] chars and fields at [`truncate::FIELD_MAX`]
/// (with the marker) before it gets here.
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

/// Email subject and plain-text body (the message is cut at
/// [`truncate::MESSAGE_MAX`] chars before it gets here).
pub fn email_content(r: &Rendered) -> (String, String) {
    let subject: String = format!("[dhash][{}][{}] {}", r.env, r.upper_level(), r.title)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let subject = truncate::chars(&subject, 200);
    let mut body = String::new();
    body.push_str(&r.message);
    body.push_str("\n\n");
    body.push_str(&format!("Environment: {}\n", r.env));
    body.push_str(&format!("Level: {}\n", r.upper_level()));
    for (k, v) in r.field_texts() {
        body.push_str(&format!("{k}: {v}\n"));
    }
    body.push_str(&format!("Time: {}\n\n-- \nsent by dhash-notify\n", r.ts));
    (subject, body)
}

/// What a channel is sent, as JSON (email as `{to, from, subject, body}`), for
/// the dry-run record and the audit copies in `out_dir`.
pub fn preview(channel: Channel, r: &Rendered, dedup_key: Option<&str>) -> Value {
    match channel {
        Channel::Slack => slack_payload(r),
        Channel::Teams => teams_payload(r),
        Channel::Discord => discord_payload(r),
        Channel::Webhook => webhook_payload(r, dedup_key),
        Channel::Email => {
            let (subject, body) = email_content(r);
            let (to, from) = match configure(Channel::Email) {
                Config::Ready(Target::Email(e)) => (json!(e.to), json!(e.from)),
                _ => (Value::Null, Value::Null),
            };
            json!({"to": to, "from": from, "subject": subject, "body": body})
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(message: &str) -> Rendered {
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

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
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
    fn email_configuration() {
        let v = vars(&[
            ("EMAIL_TO", "a@x.org, b@x.org"),
            ("EMAIL_SMTP_HOST", "127.0.0.1"),
            ("EMAIL_SMTP_TLS", "none"),
            ("EMAIL_PASSWORD", "pw123456"),
        ]);
        match configure_with(Channel::Email, &v) {
            Config::Ready(Target::Email(e)) => {
                assert_eq!(e.to, vec!["a@x.org", "b@x.org"]);
                assert!(matches!(
                    e.transport,
                    EmailTransport::Smtp {
                        port: 25,
                        tls: SmtpTls::None,
                        ..
                    }
                ));
            }
            other => panic!("unexpected {other:?}"),
        }
        let remote_plain = vars(&[
            ("EMAIL_TO", "a@x.org"),
            ("EMAIL_SMTP_HOST", "mail.example.com"),
            ("EMAIL_SMTP_TLS", "none"),
            ("EMAIL_PASSWORD", "pw123456"),
        ]);
        assert!(matches!(
            configure_with(Channel::Email, &remote_plain),
            Config::Invalid(_)
        ));
        let starttls = vars(&[
            ("EMAIL_TO", "a@x.org"),
            ("EMAIL_SMTP_HOST", "mail.example.com"),
        ]);
        assert!(matches!(
            configure_with(Channel::Email, &starttls),
            Config::Ready(Target::Email(EmailConfig {
                transport: EmailTransport::Smtp {
                    port: 587,
                    tls: SmtpTls::StartTls,
                    ..
                },
                ..
            }))
        ));
    }

    #[test]
    fn email_to_alone_means_the_local_sendmail() {
        let found = |_: &str| Ok(PathBuf::from("/opt/mta/sendmail"));
        let none = |c: &str| Err(format!("no {c} program found (looked on PATH)"));
        let only_to = vars(&[("EMAIL_TO", "ops@x.org")]);
        assert_eq!(
            configure_with_finder(Channel::Email, &only_to, &found),
            Config::Ready(Target::Email(EmailConfig {
                to: vec!["ops@x.org".into()],
                from: "dhash-notify@localhost".into(),
                transport: EmailTransport::Sendmail {
                    command: "/opt/mta/sendmail".into()
                },
            }))
        );
        match configure_with_finder(Channel::Email, &only_to, &none) {
            Config::Invalid(why) => {
                assert!(why.contains("no sendmail program found"), "{why}");
                assert!(why.contains("EMAIL_SMTP_HOST"), "{why}");
            }
            other => panic!("unexpected {other:?}"),
        }
        let with_host = vars(&[("EMAIL_TO", "ops@x.org"), ("EMAIL_SMTP_HOST", "mx.x.org")]);
        assert!(matches!(
            configure_with_finder(Channel::Email, &with_host, &none),
            Config::Ready(Target::Email(EmailConfig {
                transport: EmailTransport::Smtp { .. },
                ..
            }))
        ));
        let smtp_no_host = vars(&[("EMAIL_TO", "ops@x.org"), ("EMAIL_TRANSPORT", "smtp")]);
        assert!(matches!(
            configure_with_finder(Channel::Email, &smtp_no_host, &found),
            Config::Invalid(_)
        ));
        let named = vars(&[("EMAIL_TO", "ops@x.org"), ("EMAIL_SENDMAIL", "msmtp")]);
        let seen = std::cell::RefCell::new(String::new());
        let spy = |c: &str| {
            *seen.borrow_mut() = c.to_string();
            Ok(PathBuf::from("/usr/bin/msmtp"))
        };
        assert!(matches!(
            configure_with_finder(Channel::Email, &named, &spy),
            Config::Ready(_)
        ));
        assert_eq!(*seen.borrow(), "msmtp");
        assert!(find_sendmail("/nonexistent/dir/sendmail").is_err());
    }

    #[test]
    fn discord_respects_every_limit() {
        let mut r = rendered(&"m".repeat(5000));
        r.title = "t".repeat(3000);
        r.fields.insert("long".into(), json!("v".repeat(3000)));
        let p = discord_payload(&r);
        let content = p["content"].as_str().expect("content");
        assert!(truncate::utf16_len(content) <= 2000);
        assert!(content.ends_with(truncate::MARKER));
        let e = &p["embeds"][0];
        let title = e["title"].as_str().expect("title");
        let desc = e["description"].as_str().expect("description");
        assert!(truncate::utf16_len(title) <= 256 && title.ends_with(truncate::MARKER));
        assert!(truncate::utf16_len(desc) <= 4096 && desc.ends_with(truncate::MARKER));
        let mut total = truncate::utf16_len(title) + truncate::utf16_len(desc);
        for f in e["fields"].as_array().expect("fields") {
            let v = f["value"].as_str().expect("value");
            assert!(truncate::utf16_len(v) <= 1024);
            total += truncate::utf16_len(v) + truncate::utf16_len(f["name"].as_str().expect("n"));
        }
        total += truncate::utf16_len(e["footer"]["text"].as_str().expect("footer"));
        assert!(total <= 6000, "embed total {total}");
    }

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
