//! Email (`EMAIL_TO`, ...): SMTP (STARTTLS, implicit TLS, or plaintext to a
//! loopback relay) or the local sendmail; an RFC 5322 plain-text message.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use super::{Channel, Config, Integration, Lookup, Rendered, Target};
use crate::deliver::Attempt;
use crate::{redact, truncate};

pub struct Email;

impl Integration for Email {
    fn channel(&self) -> Channel {
        Channel::Email
    }

    fn secret_vars(&self) -> &'static str {
        "EMAIL_TO (sent by EMAIL_SMTP_HOST, or else the local sendmail)"
    }

    fn configure(&self, env: &Lookup<'_>) -> Config {
        let Some(to) = (env.var)("EMAIL_TO") else {
            return Config::Missing("EMAIL_TO is not set".into());
        };
        match configure_email(env, &to) {
            Ok(cfg) => Config::Ready(Target::Email(cfg)),
            Err(why) => Config::Invalid(why),
        }
    }

    /// `{to, from, subject, body}`; to and from as configured now.
    fn payload(&self, r: &Rendered, _dedup_key: Option<&str>) -> Value {
        let (subject, body) = email_content(r);
        let (to, from) = match super::configure(Channel::Email) {
            Config::Ready(Target::Email(e)) => (json!(e.to), json!(e.from)),
            _ => (Value::Null, Value::Null),
        };
        json!({"to": to, "from": from, "subject": subject, "body": body})
    }

    fn prepare(
        &self,
        target: &Target,
        r: &Rendered,
        _dedup_key: Option<&str>,
    ) -> Result<super::Request, String> {
        let Target::Email(cfg) = target else {
            return Err("email needs an email configuration".into());
        };
        let (subject, body) = email_content(r);
        let msg = build_email(cfg, &subject, &body)?;
        Ok(super::Request::Email(Request {
            cfg: cfg.clone(),
            msg: Box::new(msg),
        }))
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

/// The email settings once `EMAIL_TO` is set; `Err`: why they are unusable.
fn configure_email(env: &Lookup<'_>, to: &str) -> Result<EmailConfig, String> {
    let var = env.var;
    let to: Vec<String> = to
        .split([',', ';'])
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let from = var("EMAIL_FROM").unwrap_or_else(|| "dhash-notify@localhost".to_string());
    let transport = transport(env)?;
    if to.is_empty() {
        return Err("EMAIL_TO holds no address".into());
    }
    Ok(EmailConfig {
        to,
        from,
        transport,
    })
}

/// `EMAIL_TRANSPORT`, or when it is not named: SMTP when a host is set, else
/// the local sendmail.
fn transport(env: &Lookup<'_>) -> Result<EmailTransport, String> {
    let var = env.var;
    let host = var("EMAIL_SMTP_HOST").or_else(|| var("SMTP_HOST"));
    let name = var("EMAIL_TRANSPORT").unwrap_or_else(|| {
        if host.is_some() {
            "smtp".into()
        } else {
            "sendmail".into()
        }
    });
    match name.to_ascii_lowercase().as_str() {
        "sendmail" => sendmail(env),
        "smtp" => match host {
            Some(host) => smtp(var, host),
            None => Err("EMAIL_TRANSPORT=smtp but EMAIL_SMTP_HOST is not set".into()),
        },
        other => Err(format!(
            "EMAIL_TRANSPORT={other:?}: expected smtp or sendmail"
        )),
    }
}

fn sendmail(env: &Lookup<'_>) -> Result<EmailTransport, String> {
    let command = (env.var)("EMAIL_SENDMAIL").unwrap_or_else(|| "sendmail".into());
    match (env.find_sendmail)(&command) {
        Ok(path) => Ok(EmailTransport::Sendmail {
            command: path.to_string_lossy().to_string(),
        }),
        Err(why) => Err(format!(
            "EMAIL_TO is set but {why}; set EMAIL_SMTP_HOST to send by SMTP, \
             or install sendmail (or name it in EMAIL_SENDMAIL)"
        )),
    }
}

fn smtp(var: &dyn Fn(&str) -> Option<String>, host: String) -> Result<EmailTransport, String> {
    let tls = match var("EMAIL_SMTP_TLS")
        .unwrap_or_else(|| "starttls".into())
        .to_ascii_lowercase()
        .as_str()
    {
        "starttls" => SmtpTls::StartTls,
        "tls" | "smtps" | "implicit" => SmtpTls::Implicit,
        "none" | "plain" | "off" => SmtpTls::None,
        other => {
            return Err(format!(
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
            _ => return Err(format!("EMAIL_SMTP_PORT={p:?}: expected a port number")),
        },
    };
    let user = var("EMAIL_USER").or_else(|| var("SMTP_USER"));
    let password = var("EMAIL_PASSWORD")
        .or_else(|| var("EMAIL_SMTP_PASSWORD"))
        .or_else(|| var("SMTP_PASSWORD"));
    if tls == SmtpTls::None && (user.is_some() || password.is_some()) && !is_loopback(&host) {
        return Err(
            "EMAIL_SMTP_TLS=none would send the SMTP password in plaintext to a \
                    non-loopback host; use starttls or tls"
                .into(),
        );
    }
    Ok(EmailTransport::Smtp {
        host,
        port,
        tls,
        user,
        password,
    })
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
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

/// `Auto-Submitted: auto-generated` (RFC 3834): vacation responders and
/// ticket systems do not answer an automatic notification.
#[derive(Debug, Clone, Copy)]
struct AutoSubmitted;

impl lettre::message::header::Header for AutoSubmitted {
    fn name() -> lettre::message::header::HeaderName {
        lettre::message::header::HeaderName::new_from_ascii_str("Auto-Submitted")
    }

    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(AutoSubmitted)
    }

    fn display(&self) -> lettre::message::header::HeaderValue {
        lettre::message::header::HeaderValue::new(Self::name(), "auto-generated".to_string())
    }
}

/// Builds the email once (a bad address is a permanent failure): an RFC 5322
/// message with From, To, Subject, Date, Message-ID, MIME-Version and a
/// plain-text UTF-8 body.
fn build_email(cfg: &EmailConfig, subject: &str, body: &str) -> Result<lettre::Message, String> {
    use lettre::message::header::{ContentType, MIME_VERSION_1_0};
    let from = cfg
        .from
        .parse()
        .map_err(|e| redact(&format!("EMAIL_FROM is not a valid address: {e}")))?;
    let mut b = lettre::Message::builder()
        .from(from)
        .subject(subject)
        .message_id(None)
        .user_agent(concat!("dhash-notify/", env!("CARGO_PKG_VERSION")).to_string())
        .header(MIME_VERSION_1_0)
        .header(AutoSubmitted)
        .header(ContentType::TEXT_PLAIN);
    for to in &cfg.to {
        let addr = to
            .parse()
            .map_err(|e| redact(&format!("EMAIL_TO {to:?} is not a valid address: {e}")))?;
        b = b.to(addr);
    }
    b.body(body.to_string())
        .map_err(|e| redact(&format!("cannot build the email: {e}")))
}

/// One email, built once, that each attempt delivers.
pub struct Request {
    cfg: EmailConfig,
    msg: Box<lettre::Message>,
}

impl Request {
    /// One delivery: SMTP (STARTTLS, implicit TLS or plain) or sendmail.
    pub fn attempt(&self, timeout: Duration) -> Attempt {
        match &self.cfg.transport {
            EmailTransport::Smtp {
                host,
                port,
                tls,
                user,
                password,
            } => {
                let login = (user.is_some() || password.is_some()).then(|| {
                    (
                        user.clone().unwrap_or_default(),
                        password.clone().unwrap_or_default(),
                    )
                });
                smtp_attempt(&self.msg, host, *port, *tls, login, timeout)
            }
            EmailTransport::Sendmail { command } => {
                use lettre::Transport;
                match lettre::SendmailTransport::new_with_command(command.as_str()).send(&self.msg)
                {
                    Ok(()) => Attempt::Delivered { status: None },
                    Err(e) => Attempt::Permanent {
                        reason: redact(&format!("sendmail ({command}): {e}")),
                        status: None,
                    },
                }
            }
        }
    }
}

fn smtp_attempt(
    msg: &lettre::Message,
    host: &str,
    port: u16,
    tls: SmtpTls,
    login: Option<(String, String)>,
    timeout: Duration,
) -> Attempt {
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Tls, TlsParameters};
    use lettre::{SmtpTransport, Transport};
    let tls = match tls {
        SmtpTls::None => Tls::None,
        SmtpTls::StartTls | SmtpTls::Implicit => match TlsParameters::new(host.to_string()) {
            Ok(p) if tls == SmtpTls::StartTls => Tls::Required(p),
            Ok(p) => Tls::Wrapper(p),
            Err(e) => {
                return Attempt::Permanent {
                    reason: redact(&format!("TLS setup for {host}: {e}")),
                    status: None,
                }
            }
        },
    };
    let mut builder = SmtpTransport::builder_dangerous(host)
        .port(port)
        .tls(tls)
        .timeout(Some(timeout));
    if let Some((user, password)) = login {
        builder = builder.credentials(Credentials::new(user, password));
    }
    match builder.build().send(msg) {
        Ok(resp) => Attempt::Delivered {
            status: resp.code().to_string().parse().ok(),
        },
        Err(e) => {
            let status = e.status().and_then(|c| c.to_string().parse().ok());
            let reason = redact(&format!("SMTP {host}:{port}: {e}"));
            if e.is_permanent() || e.is_client() {
                Attempt::Permanent { reason, status }
            } else {
                Attempt::Retry {
                    reason,
                    status,
                    after: None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::tests::vars;
    use crate::channels::{configure_with, configure_with_finder};

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
}
