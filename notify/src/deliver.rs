//! The one retrier every channel goes through (after Prometheus Alertmanager):
//! a timeout per attempt; 2xx is success (with each channel's own rule); 5xx,
//! network errors and 429 are retried with exponential backoff inside a
//! deadline (a 429's `retry_after` is honoured); any other 4xx is permanent.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::channels::{Channel, EmailConfig, EmailTransport, SmtpTls};
use crate::redact;

/// At most this many attempts per channel, whatever the deadline leaves.
pub const MAX_ATTEMPTS: u32 = 5;
/// First backoff; doubled after each failed attempt, capped at [`MAX_BACKOFF`].
pub const BASE_BACKOFF: Duration = Duration::from_millis(250);
pub const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// The longest one attempt may take (further bounded by the deadline).
pub const MAX_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Below this much time left, no new attempt is started.
const MIN_ATTEMPT: Duration = Duration::from_millis(100);
/// Response bodies are read up to this size (error text, Slack's `ok`).
const BODY_LIMIT: u64 = 64 * 1024;

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    Delivered {
        status: Option<u16>,
    },
    /// Worth another try; `after` is the server's `retry_after`, if it gave one.
    Retry {
        reason: String,
        status: Option<u16>,
        after: Option<Duration>,
    },
    Permanent {
        reason: String,
        status: Option<u16>,
    },
}

/// The end of one channel's delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub delivered: bool,
    pub attempts: u32,
    pub status: Option<u16>,
    /// Why it was not delivered (empty when delivered).
    pub reason: String,
}

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub deadline: Instant,
    pub attempt_timeout: Duration,
    pub max_attempts: u32,
}

impl Policy {
    /// The per-attempt timeout for a total budget: half of it (so one hung
    /// attempt leaves room for a retry), between 1 s and 10 s.
    pub fn for_budget(total: Duration) -> Policy {
        let attempt = (total / 2).clamp(Duration::from_secs(1), MAX_ATTEMPT_TIMEOUT);
        Policy {
            deadline: Instant::now() + total,
            attempt_timeout: attempt,
            max_attempts: MAX_ATTEMPTS,
        }
    }
}

/// Exponential backoff with a little jitter (up to +20 %).
pub fn backoff(failed_attempts: u32) -> Duration {
    let exp = failed_attempts.saturating_sub(1).min(16);
    let base = BASE_BACKOFF.saturating_mul(1u32 << exp).min(MAX_BACKOFF);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    base + base.mul_f64(f64::from(nanos % 1000) / 5000.0)
}

/// Runs `attempt` until it delivers, fails permanently, runs out of attempts
/// or the deadline would pass. `attempts` is updated as it goes, so a caller
/// that stops waiting still knows how many were made; `cancel` stops retries.
pub fn run(
    policy: &Policy,
    cancel: &AtomicBool,
    attempts: &AtomicU32,
    mut attempt: impl FnMut(Duration) -> Attempt,
) -> Outcome {
    let mut last_status = None;
    let mut last_reason = String::from("no attempt was made");
    loop {
        let left = policy.deadline.saturating_duration_since(Instant::now());
        if cancel.load(Ordering::SeqCst) || left < MIN_ATTEMPT {
            let n = attempts.load(Ordering::SeqCst);
            return Outcome {
                delivered: false,
                attempts: n,
                status: last_status,
                reason: format!(
                    "gave up after {n} attempt(s): notification timeout reached; last: {last_reason}"
                ),
            };
        }
        let n = attempts.fetch_add(1, Ordering::SeqCst) + 1;
        let result = attempt(policy.attempt_timeout.min(left));
        let (reason, status, after) = match result {
            Attempt::Delivered { status } => {
                return Outcome {
                    delivered: true,
                    attempts: n,
                    status,
                    reason: String::new(),
                }
            }
            Attempt::Permanent { reason, status } => {
                return Outcome {
                    delivered: false,
                    attempts: n,
                    status,
                    reason: format!("{reason} (permanent, not retried)"),
                }
            }
            Attempt::Retry {
                reason,
                status,
                after,
            } => (reason, status, after),
        };
        last_status = status;
        last_reason = reason;
        if n >= policy.max_attempts {
            return Outcome {
                delivered: false,
                attempts: n,
                status: last_status,
                reason: format!("gave up after {n} attempts; last: {last_reason}"),
            };
        }
        let wait = after.unwrap_or_else(|| backoff(n));
        let left = policy.deadline.saturating_duration_since(Instant::now());
        if wait + MIN_ATTEMPT > left {
            let reason = match after {
                Some(a) => format!(
                    "the server's retry_after ({:.1}s) is beyond the notification timeout ({:.1}s left); \
                     gave up after {n} attempt(s); last: {last_reason}",
                    a.as_secs_f64(),
                    left.as_secs_f64()
                ),
                None => format!(
                    "gave up after {n} attempt(s): no time left for another within the notification \
                     timeout; last: {last_reason}"
                ),
            };
            return Outcome {
                delivered: false,
                attempts: n,
                status: last_status,
                reason,
            };
        }
        sleep_unless_cancelled(wait, cancel);
    }
}

fn sleep_unless_cancelled(d: Duration, cancel: &AtomicBool) {
    let end = Instant::now() + d;
    while !cancel.load(Ordering::SeqCst) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// Decides what an HTTP answer means for a channel.
pub fn classify(
    channel: Channel,
    status: u16,
    body: &str,
    retry_header: Option<Duration>,
) -> Attempt {
    let snippet = || {
        let b = body.trim();
        if b.is_empty() {
            String::new()
        } else {
            format!(": {}", crate::truncate::chars(b, 200))
        }
    };
    match status {
        200..=299 => {
            // Slack's incoming webhooks answer exactly `200 ok`.
            if channel == Channel::Slack && !(status == 200 && body.trim() == "ok") {
                Attempt::Permanent {
                    reason: redact(&format!(
                        "unexpected Slack answer HTTP {status}{} (expected 200 ok)",
                        snippet()
                    )),
                    status: Some(status),
                }
            } else {
                Attempt::Delivered {
                    status: Some(status),
                }
            }
        }
        429 => {
            let after = retry_after_from_body(body).or(retry_header);
            Attempt::Retry {
                reason: redact(&format!(
                    "HTTP 429 rate limited{}{}",
                    after
                        .map(|d| format!(" (retry_after {:.3}s)", d.as_secs_f64()))
                        .unwrap_or_default(),
                    snippet()
                )),
                status: Some(429),
                after,
            }
        }
        500..=599 => Attempt::Retry {
            reason: redact(&format!("HTTP {status}{}", snippet())),
            status: Some(status),
            after: None,
        },
        _ => Attempt::Permanent {
            reason: redact(&format!("HTTP {status}{}", snippet())),
            status: Some(status),
        },
    }
}

/// Discord (and others) put `retry_after` in seconds, as a float, in the JSON body.
fn retry_after_from_body(body: &str) -> Option<Duration> {
    let v: Value = serde_json::from_str(body).ok()?;
    let secs = v.get("retry_after")?.as_f64()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)))
}

fn retry_after_header(value: &str) -> Option<Duration> {
    let secs: f64 = value.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)))
}

pub fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(concat!("dhash-notify/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

/// One POST of a JSON body.
pub fn http_attempt(
    agent: &ureq::Agent,
    channel: Channel,
    url: &str,
    body: &[u8],
    timeout: Duration,
) -> Attempt {
    let result = agent
        .post(url)
        .header("Content-Type", "application/json")
        .config()
        .timeout_global(Some(timeout))
        .build()
        .send(body);
    match result {
        Ok(mut resp) => {
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
            classify(channel, status, &text, header)
        }
        Err(e) => {
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
    }
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
pub fn build_email(
    cfg: &EmailConfig,
    subject: &str,
    body: &str,
) -> Result<lettre::Message, String> {
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

/// One email delivery: SMTP (STARTTLS, implicit TLS or plain) or sendmail.
pub fn email_attempt(cfg: &EmailConfig, msg: &lettre::Message, timeout: Duration) -> Attempt {
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Tls, TlsParameters};
    use lettre::{SmtpTransport, Transport};
    match &cfg.transport {
        EmailTransport::Smtp {
            host,
            port,
            tls,
            user,
            password,
        } => {
            let tls = match tls {
                SmtpTls::None => Tls::None,
                SmtpTls::StartTls | SmtpTls::Implicit => match TlsParameters::new(host.clone()) {
                    Ok(p) if *tls == SmtpTls::StartTls => Tls::Required(p),
                    Ok(p) => Tls::Wrapper(p),
                    Err(e) => {
                        return Attempt::Permanent {
                            reason: redact(&format!("TLS setup for {host}: {e}")),
                            status: None,
                        }
                    }
                },
            };
            let mut builder = SmtpTransport::builder_dangerous(host.as_str())
                .port(*port)
                .tls(tls)
                .timeout(Some(timeout));
            if user.is_some() || password.is_some() {
                builder = builder.credentials(Credentials::new(
                    user.clone().unwrap_or_default(),
                    password.clone().unwrap_or_default(),
                ));
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
        EmailTransport::Sendmail { command } => {
            match lettre::SendmailTransport::new_with_command(command.as_str()).send(msg) {
                Ok(()) => Attempt::Delivered { status: None },
                Err(e) => Attempt::Permanent {
                    reason: redact(&format!("sendmail ({command}): {e}")),
                    status: None,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(total_ms: u64) -> Policy {
        Policy {
            deadline: Instant::now() + Duration::from_millis(total_ms),
            attempt_timeout: Duration::from_millis(500),
            max_attempts: MAX_ATTEMPTS,
        }
    }

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

    #[test]
    fn retries_then_delivers() {
        let (c, a) = (AtomicBool::new(false), AtomicU32::new(0));
        let mut n = 0;
        let o = run(&policy(5000), &c, &a, |_| {
            n += 1;
            if n < 3 {
                Attempt::Retry {
                    reason: "HTTP 500".into(),
                    status: Some(500),
                    after: None,
                }
            } else {
                Attempt::Delivered { status: Some(200) }
            }
        });
        assert!(o.delivered);
        assert_eq!(o.attempts, 3);
    }

    #[test]
    fn permanent_is_not_retried_and_deadline_bounds() {
        let (c, a) = (AtomicBool::new(false), AtomicU32::new(0));
        let o = run(&policy(5000), &c, &a, |_| Attempt::Permanent {
            reason: "HTTP 404".into(),
            status: Some(404),
        });
        assert_eq!((o.delivered, o.attempts), (false, 1));

        let (c, a) = (AtomicBool::new(false), AtomicU32::new(0));
        let start = Instant::now();
        let o = run(&policy(600), &c, &a, |t| {
            std::thread::sleep(t);
            Attempt::Retry {
                reason: "timed out".into(),
                status: None,
                after: None,
            }
        });
        assert!(!o.delivered);
        assert!(
            start.elapsed() < Duration::from_millis(900),
            "{:?}",
            start.elapsed()
        );

        let (c, a) = (AtomicBool::new(false), AtomicU32::new(0));
        let o = run(&policy(1000), &c, &a, |_| Attempt::Retry {
            reason: "429".into(),
            status: Some(429),
            after: Some(Duration::from_secs(30)),
        });
        assert_eq!(o.attempts, 1);
        assert!(o.reason.contains("retry_after"), "{}", o.reason);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) >= BASE_BACKOFF && backoff(1) < BASE_BACKOFF * 2);
        assert!(backoff(2) >= BASE_BACKOFF * 2);
        assert!(backoff(30) <= MAX_BACKOFF + MAX_BACKOFF / 5);
    }
}
