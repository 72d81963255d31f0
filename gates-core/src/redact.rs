//! Secret redaction. Every line a tool writes (stdout events, stderr, logs,
//! fallback files) goes through a [`Redactor`], so a webhook URL or password
//! read from the environment never reaches an output.

use std::sync::OnceLock;

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
];

/// Name fragments that mark any other variable as secret.
const SECRET_NAME_PARTS: &[&str] = &["WEBHOOK", "PASSWORD", "TOKEN", "SECRET", "API_KEY"];

/// Values shorter than this are not redacted: replacing "1" or "yes" everywhere
/// would garble output without protecting anything.
const MIN_SECRET_LEN: usize = 6;

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
        for (name, value) in vars {
            let upper = name.to_ascii_uppercase();
            let secret = SECRET_VARS.contains(&upper.as_str())
                || SECRET_NAME_PARTS.iter().any(|p| upper.contains(p));
            if secret {
                r.add(&value);
            }
        }
        r
    }

    /// Adds a secret value; a URL also hides its path and query on their own,
    /// since error messages often quote only part of it.
    pub fn add(&mut self, value: &str) {
        let value = value.trim();
        if value.len() < MIN_SECRET_LEN {
            return;
        }
        self.secrets.push(value.to_string());
        if let Some(rest) = value
            .strip_prefix("https://")
            .or_else(|| value.strip_prefix("http://"))
        {
            if let Some(slash) = rest.find('/') {
                let path = &rest[slash..];
                if path.len() >= MIN_SECRET_LEN {
                    self.secrets.push(path.to_string());
                }
            }
        }
        // Longest first, so a URL is replaced whole before its path alone.
        self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        self.secrets.dedup();
    }

    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), REDACTED);
            }
        }
        redact_url_credentials(&out)
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }
}

/// `scheme://user:password@host` → `scheme://[REDACTED]@host`, for secrets
/// that never passed through the environment (a URL typed into a config).
fn redact_url_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
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
            }
            _ => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// The process-wide redactor, built once from the environment.
pub fn global() -> &'static Redactor {
    static R: OnceLock<Redactor> = OnceLock::new();
    R.get_or_init(Redactor::from_env)
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
    fn secret_by_name_fragment_and_short_values_ignored() {
        let red = r(&[("MY_API_TOKEN", "tok-123456789"), ("EMAIL_PASSWORD", "x")]);
        assert_eq!(red.redact("token tok-123456789 x"), "token [REDACTED] x");
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
}
