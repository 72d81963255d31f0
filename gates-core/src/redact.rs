//! Secret redaction. Every line a tool writes (stdout events, stderr, logs,
//! fallback files) goes through a [`Redactor`], so a webhook URL or password
//! read from the environment never reaches an output.
//!
//! A secret is hidden wherever it appears, as a substring of any text. A
//! URL secret (a webhook) is also hidden in parts, because operators and
//! upstream tools quote parts of it: its path (`/services/T…/B…/XXXX`),
//! its query string, every token-like path segment or query value on its
//! own (the token segment of a Slack webhook, the signature of a Teams
//! workflow URL) and the URL without its scheme.

use std::borrow::Cow;
use std::sync::{OnceLock, RwLock};

pub const REDACTED: &str = "[REDACTED]";

/// Environment variables whose values are always secrets.
pub const SECRET_VARS: &[&str] = &[
    "SLACK_WEBHOOK",
    "SLACK_WEBHOOK_URL",
    "TEAMS_WEBHOOK",
    "TEAMS_WEBHOOK_URL",
    "DISCORD_WEBHOOK_URL",
    "WEBHOOK_URL",
    "EMAIL_PASSWORD",
    "EMAIL_SMTP_PASSWORD",
    "SMTP_PASSWORD",
    "EMAIL_USER",
    "SMTP_USER",
    "PAGERDUTY_ROUTING_KEY",
];

/// Name fragments that mark any other variable as secret.
const SECRET_NAME_PARTS: &[&str] = &[
    "WEBHOOK",
    "PASSWORD",
    "TOKEN",
    "SECRET",
    "API_KEY",
    "ROUTING_KEY",
];

/// Values shorter than this are not redacted: replacing "1" or "yes" everywhere
/// would garble output without protecting anything.
const MIN_SECRET_LEN: usize = 6;

/// A path segment or query value of a secret URL shorter than this is not
/// hidden on its own (`api`, `v1`, `services`): too common to be a token.
const MIN_SEGMENT_LEN: usize = 8;

/// A segment of only lower-case letters and dashes is a word of the URL's
/// structure (`services`, `webhooks`, `workflows`) unless it is this long.
const MIN_WORDLIKE_SEGMENT_LEN: usize = 20;

/// Whether a variable's value is treated as a secret, by its name.
pub fn is_secret_var(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    SECRET_VARS.contains(&upper.as_str()) || SECRET_NAME_PARTS.iter().any(|p| upper.contains(p))
}

#[derive(Debug, Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    /// Collects secrets from the process environment.
    pub fn from_env() -> Self {
        Self::from_vars(std::env::vars())
    }

    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut r = Redactor::default();
        r.add_vars(vars);
        r
    }

    /// Adds the values of the secret variables among `vars` (by name, as
    /// [`is_secret_var`] decides).
    pub fn add_vars(&mut self, vars: impl IntoIterator<Item = (String, String)>) {
        for (name, value) in vars {
            if is_secret_var(&name) {
                self.add(&value);
            }
        }
    }

    /// Adds a secret value. A URL is also hidden in parts: its path, its
    /// query, the URL without its scheme, and each token-like path segment
    /// or query value, since messages often quote only part of it.
    pub fn add(&mut self, value: &str) {
        let value = value.trim();
        if value.len() < MIN_SECRET_LEN {
            return;
        }
        self.secrets.push(value.to_string());
        for part in url_parts(value) {
            if part.len() >= MIN_SECRET_LEN {
                self.secrets.push(part);
            }
        }
        // Longest first, so a URL is replaced whole before its parts.
        self.secrets
            .sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        self.secrets.dedup();
    }

    /// The text with every known secret, and the credentials of any
    /// `scheme://user:password@host` URL, replaced by `[REDACTED]`.
    pub fn redact(&self, text: &str) -> String {
        self.redact_cow(text).into_owned()
    }

    /// As [`Redactor::redact`], without a copy when nothing is secret (large
    /// texts: a message of megabytes is not duplicated for nothing).
    pub fn redact_cow<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out: Cow<'a, str> = Cow::Borrowed(text);
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = Cow::Owned(out.replace(s.as_str(), REDACTED));
            }
        }
        match redact_url_credentials(&out) {
            Some(fixed) => Cow::Owned(fixed),
            None => out,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }
}

/// The parts of a secret URL that are hidden on their own: empty for a value
/// that is not an http(s) URL.
fn url_parts(value: &str) -> Vec<String> {
    let Some(rest) = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"))
    else {
        return Vec::new();
    };
    let mut parts = vec![rest.to_string()];
    let Some(slash) = rest.find('/') else {
        return parts;
    };
    let path_and_query = &rest[slash..];
    parts.push(path_and_query.to_string());
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    parts.push(path.to_string());
    let mut pieces: Vec<&str> = path.split('/').collect();
    if let Some(q) = query {
        parts.push(q.to_string());
        for pair in q.split('&') {
            pieces.push(pair.split_once('=').map_or(pair, |(_, v)| v));
        }
    }
    for piece in pieces {
        if token_like(piece) {
            parts.push(piece.to_string());
        }
    }
    parts
}

/// A segment that may be (part of) a credential: long enough, and not a
/// plain lower-case word of the URL's structure.
fn token_like(piece: &str) -> bool {
    if piece.len() < MIN_SEGMENT_LEN {
        return false;
    }
    let wordlike = piece
        .chars()
        .all(|c| c.is_ascii_lowercase() || c == '-' || c == '_');
    !wordlike || piece.len() >= MIN_WORDLIKE_SEGMENT_LEN
}

/// `scheme://user:password@host` → `scheme://[REDACTED]@host`, for secrets
/// that never passed through the environment (a URL typed into a config).
/// `None` when there is nothing to hide.
fn redact_url_credentials(text: &str) -> Option<String> {
    if !text.contains("://") {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut changed = false;
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '/' || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) if authority[..at].contains(':') => {
                out.push_str(REDACTED);
                out.push_str(&authority[at..]);
                changed = true;
            }
            _ => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    changed.then_some(out)
}

/// The process-wide redactor: the secrets of the environment, plus any added
/// later with [`add_secret`] or [`add_secret_vars`] (values read from a
/// secrets file such as `.env.notifications`).
#[derive(Debug)]
pub struct Global {
    inner: RwLock<Redactor>,
}

impl Global {
    pub fn redact(&self, text: &str) -> String {
        self.redact_cow(text).into_owned()
    }

    pub fn redact_cow<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.inner.read() {
            Ok(r) => r.redact_cow(text),
            // A panic while adding a secret poisoned the lock; the redactor
            // inside is still whole (secrets are only ever appended).
            Err(poisoned) => poisoned.into_inner().redact_cow(text),
        }
    }

    pub fn is_empty(&self) -> bool {
        match self.inner.read() {
            Ok(r) => r.is_empty(),
            Err(poisoned) => poisoned.into_inner().is_empty(),
        }
    }

    fn with(&self, f: impl FnOnce(&mut Redactor)) {
        match self.inner.write() {
            Ok(mut r) => f(&mut r),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }
}

/// The process-wide redactor, built once from the environment.
pub fn global() -> &'static Global {
    static R: OnceLock<Global> = OnceLock::new();
    R.get_or_init(|| Global {
        inner: RwLock::new(Redactor::from_env()),
    })
}

/// Hides `value` in every later output of this process.
pub fn add_secret(value: &str) {
    global().with(|r| r.add(value));
}

/// Hides, in every later output of this process, the values of the secret
/// variables among `vars` (as [`is_secret_var`] decides by name).
pub fn add_secret_vars(vars: impl IntoIterator<Item = (String, String)>) {
    global().with(|r| r.add_vars(vars));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(vars: &[(&str, &str)]) -> Redactor {
        Redactor::from_vars(vars.iter().map(|(a, b)| (a.to_string(), b.to_string())))
    }

    #[test]
    fn redacts_webhook_url_and_its_path() {
        let red = r(&[(
            "SLACK_WEBHOOK",
            "https://hooks.slack.com/services/T0/B0/abcdef",
        )]);
        assert_eq!(
            red.redact("POST https://hooks.slack.com/services/T0/B0/abcdef failed"),
            "POST [REDACTED] failed"
        );
        assert_eq!(
            red.redact("path /services/T0/B0/abcdef: 404"),
            "path [REDACTED]: 404"
        );
    }

    #[test]
    fn redacts_the_parts_of_a_webhook_quoted_anywhere() {
        let url = "https://hooks.slack.com/services/T0ABC1234/B0DEF5678/xoxbSecretToken123456789";
        let red = r(&[("SLACK_WEBHOOK_URL", url)]);
        let cases = [
            // Without its scheme.
            "see hooks.slack.com/services/T0ABC1234/B0DEF5678/xoxbSecretToken123456789 now",
            // The token segment alone, glued to other words.
            "token=xoxbSecretToken123456789;",
            "abcxoxbSecretToken123456789xyz",
            // A part of the path.
            "B0DEF5678/xoxbSecretToken123456789",
            "team T0ABC1234",
            // Quoted inside JSON.
            r#"{"msg":"failed: /services/T0ABC1234/B0DEF5678/xoxbSecretToken123456789"}"#,
        ];
        for text in cases {
            let out = red.redact(text);
            for secret in ["xoxbSecretToken123456789", "T0ABC1234", "B0DEF5678"] {
                assert!(
                    !out.contains(secret),
                    "{secret} left in {out:?} (from {text:?})"
                );
            }
            assert!(out.contains(REDACTED), "{out}");
        }
        // Structure words of the URL stay readable.
        assert_eq!(
            red.redact("services and hooks.slack.com"),
            "services and hooks.slack.com"
        );
    }

    #[test]
    fn redacts_query_signatures_but_not_short_structure() {
        let url = "https://prod-00.westus.logic.azure.com:443/workflows/0a1b2c3d4e5f/triggers/manual/paths/invoke?api-version=2016-06-01&sv=1.0&sig=AbCdEfGhIjKlMnOpQrStUv";
        let red = r(&[("TEAMS_WEBHOOK_URL", url)]);
        assert_eq!(red.redact("sig AbCdEfGhIjKlMnOpQrStUv"), "sig [REDACTED]");
        assert_eq!(red.redact("id 0a1b2c3d4e5f"), "id [REDACTED]");
        assert_eq!(red.redact("/triggers/manual"), "/triggers/manual");
        assert_eq!(red.redact("api 1.0"), "api 1.0");
    }

    #[test]
    fn secret_by_name_fragment_and_short_values_ignored() {
        let red = r(&[("MY_API_TOKEN", "tok-123456789"), ("EMAIL_PASSWORD", "x")]);
        assert_eq!(red.redact("token tok-123456789 x"), "token [REDACTED] x");
        assert!(is_secret_var("slack_webhook_url"));
        assert!(!is_secret_var("EMAIL_TO"));
    }

    #[test]
    fn pagerduty_routing_key_is_a_secret_from_the_start() {
        // Hidden from process start, not only once the PagerDuty channel
        // registers it: `notify ack` writes events before that.
        let red = r(&[("PAGERDUTY_ROUTING_KEY", "PDKEYsecret0123456789abcdef")]);
        assert_eq!(
            red.redact("w1 key PDKEYsecret0123456789abcdef"),
            "w1 key [REDACTED]"
        );
        assert!(is_secret_var("OTHER_ROUTING_KEY"));
    }

    #[test]
    fn non_secret_vars_untouched() {
        let red = r(&[("HOME", "/root/somewhere")]);
        assert!(red.is_empty());
        assert_eq!(red.redact("/root/somewhere"), "/root/somewhere");
    }

    #[test]
    fn url_credentials_hidden() {
        let red = Redactor::default();
        assert_eq!(
            red.redact("smtp://ops:hunter22@mail.example.com:587/x"),
            "smtp://[REDACTED]@mail.example.com:587/x"
        );
        assert_eq!(
            red.redact("http://host:3000/health"),
            "http://host:3000/health"
        );
    }

    #[test]
    fn nothing_secret_means_no_copy() {
        let red = r(&[("WEBHOOK_URL", "https://example.org/hook/Secret123456")]);
        let text = "a plain message, http://host:3000/health";
        assert!(matches!(red.redact_cow(text), Cow::Borrowed(_)));
        assert!(matches!(red.redact_cow("x Secret123456"), Cow::Owned(_)));
    }

    #[test]
    fn secrets_added_later_are_hidden_by_the_global_redactor() {
        let value = "https://example.invalid/hooks/LateSecret0987654321";
        assert!(global().redact(value).contains("LateSecret0987654321"));
        add_secret_vars([("SLACK_WEBHOOK_URL".to_string(), value.to_string())]);
        add_secret_vars([("EMAIL_TO".to_string(), "ops@example.invalid".to_string())]);
        assert_eq!(global().redact(&format!("x {value} y")), "x [REDACTED] y");
        assert_eq!(global().redact("LateSecret0987654321"), REDACTED);
        assert_eq!(
            global().redact("ops@example.invalid"),
            "ops@example.invalid"
        );
        add_secret("another-secret-value");
        assert_eq!(global().redact("another-secret-value"), REDACTED);
    }
}
