//! `.env.notifications`: the channels' secrets in a file at the project root
//! (seed 003: `echo 'SLACK_WEBHOOK_URL=https://hooks.slack.com/...' >> .env.notifications`).
//!
//! - Read when it exists, in dotenv format (below). It is git-ignored (`.env*`).
//! - The real environment wins: a variable set in the process environment
//!   (even to the empty string, which turns a channel off for one run) is
//!   taken from there; the file only fills in variables that are not set.
//! - Only the notification variables ([`KNOWN_VARS`]) are read from it; any
//!   other name is ignored, said once on stderr (a typo is not silent).
//! - Its secret values (webhook URLs, users, passwords: the same names as in
//!   the environment) are added to the process-wide redactor the moment the
//!   file is read, so they are hidden in every output, as the others are.
//! - A line that cannot be read is an error naming the file and the line
//!   number, never the line itself (it may hold a secret). `notify` and
//!   `deploy-notify` refuse to run with exit 2; the library ([`crate::send`],
//!   used by the monitor) reports it and ignores the whole file, so a
//!   notification still goes to the channels of the environment or to the
//!   fallback file.
//!
//! # Format
//!
//! One `NAME=VALUE` a line; `export NAME=VALUE` is accepted; blank lines and
//! lines starting with `#` are ignored; spaces around `=` are ignored. A value
//! is unquoted (trimmed; ` #` starts a comment; no quote inside), single-quoted (taken
//! literally) or double-quoted (`\\`, `\"`, `\n`, `\t`, `\$` escapes). No
//! variable expansion: `$OTHER` stays as written. The same name twice: the
//! later line wins (`>>` appends an update, as the seed does).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The file's name, at the project root.
pub const FILE: &str = ".env.notifications";

/// The variables the channels read (the file sets nothing else).
pub const KNOWN_VARS: &[&str] = &[
    "SLACK_WEBHOOK",
    "SLACK_WEBHOOK_URL",
    "TEAMS_WEBHOOK",
    "TEAMS_WEBHOOK_URL",
    "DISCORD_WEBHOOK_URL",
    "DISCORD_WEBHOOK",
    "WEBHOOK_URL",
    "EMAIL_TO",
    "EMAIL_FROM",
    "EMAIL_TRANSPORT",
    "EMAIL_SENDMAIL",
    "EMAIL_SMTP_HOST",
    "EMAIL_SMTP_PORT",
    "EMAIL_SMTP_TLS",
    "EMAIL_USER",
    "EMAIL_PASSWORD",
    "EMAIL_SMTP_PASSWORD",
    "SMTP_HOST",
    "SMTP_PORT",
    "SMTP_USER",
    "SMTP_PASSWORD",
    "PAGERDUTY_ROUTING_KEY",
    "PAGERDUTY_EVENTS_URL",
    "OPSGENIE_API_KEY",
    "OPSGENIE_API_URL",
    "GH_TOKEN",
    "GITHUB_TOKEN",
    "GITHUB_API_URL",
    "DHASH_TRACKER_REPO",
    "INCIDENT_WEBHOOK_URL",
];

/// Why the file cannot be used. Never quotes the line (it may hold a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DotenvError {
    pub path: PathBuf,
    /// 1-based; `None` when the file as a whole cannot be read.
    pub line: Option<usize>,
    pub problem: String,
}

impl fmt::Display for DotenvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(n) => write!(
                f,
                "{}:{n}: {} (expected NAME=VALUE; the line is not shown, it may hold a secret)",
                self.path.display(),
                self.problem
            ),
            None => write!(f, "{}: {}", self.path.display(), self.problem),
        }
    }
}

impl std::error::Error for DotenvError {}

/// The file as read: its variables (later lines win) and the names it sets
/// that are not notification variables.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DotEnv {
    pub path: Option<PathBuf>,
    pub vars: HashMap<String, String>,
    pub ignored: Vec<String>,
    /// Every value the file held for a secret variable, older ones included.
    secrets: Vec<(String, String)>,
}

impl DotEnv {
    /// The value of `name` from the file (only when the environment has none).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }
}

/// Parses dotenv text. `path` is only for the error.
pub fn parse(text: &str, path: &Path) -> Result<DotEnv, DotenvError> {
    let mut out = DotEnv {
        path: Some(path.to_path_buf()),
        ..DotEnv::default()
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (i, raw) in text.split('\n').enumerate() {
        let err = |problem: &str| DotenvError {
            path: path.to_path_buf(),
            line: Some(i + 1),
            problem: problem.to_string(),
        };
        let line = raw.trim_end_matches('\r').trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line
            .strip_prefix("export ")
            .or_else(|| line.strip_prefix("export\t"))
            .map(str::trim_start)
            .unwrap_or(line);
        let Some((name, value)) = line.split_once('=') else {
            return Err(err("no \"=\" on this line"));
        };
        let name = name.trim();
        if !valid_name(name) {
            return Err(err(
                "invalid variable name (letters, digits and _, not starting with a digit)",
            ));
        }
        let value = parse_value(value.trim_start()).map_err(|p| err(&p))?;
        if crate::dotenv::KNOWN_VARS.contains(&name) {
            if gates_core::redact::is_secret_var(name) {
                out.secrets.push((name.to_string(), value.clone()));
            }
            out.vars.insert(name.to_string(), value);
        } else if !out.ignored.iter().any(|n| n == name) {
            out.ignored.push(name.to_string());
        }
    }
    Ok(out)
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(v: &str) -> Result<String, String> {
    let rest_ok = |rest: &str| {
        let rest = rest.trim_start();
        rest.is_empty() || rest.starts_with('#')
    };
    if let Some(body) = v.strip_prefix('\'') {
        let Some(end) = body.find('\'') else {
            return Err("unterminated single-quoted value".into());
        };
        if !rest_ok(&body[end + 1..]) {
            return Err("text after the closing quote".into());
        }
        return Ok(body[..end].to_string());
    }
    if let Some(body) = v.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    if !rest_ok(&body[i + 1..]) {
                        return Err("text after the closing quote".into());
                    }
                    return Ok(out);
                }
                '\\' => match chars.next().map(|(_, e)| e) {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some('r') => out.push('\r'),
                    Some(e @ ('\\' | '"' | '$' | '\'')) => out.push(e),
                    Some(e) => {
                        out.push('\\');
                        out.push(e);
                    }
                    None => break,
                },
                c => out.push(c),
            }
        }
        return Err("unterminated double-quoted value".into());
    }
    // Unquoted: a comment starts at " #"; a quote inside is a mistake.
    let value = match v.find(" #").or_else(|| v.find("\t#")) {
        Some(i) => &v[..i],
        None => v,
    };
    let value = value.trim();
    if value.contains('"') || value.contains('\'') {
        return Err("a quote inside an unquoted value (quote the whole value)".into());
    }
    Ok(value.to_string())
}

/// Reads `<root>/.env.notifications`: `Ok(None)` when there is none.
pub fn read(root: &Path) -> Result<Option<DotEnv>, DotenvError> {
    let path = root.join(FILE);
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(DotenvError {
                path,
                line: None,
                problem: format!("cannot read: {e}"),
            })
        }
    };
    if !meta.is_file() {
        return Err(DotenvError {
            path,
            line: None,
            problem: "is not a regular file".into(),
        });
    }
    // A secrets file is a few lines; anything this big is a mistake.
    if meta.len() > 1024 * 1024 {
        return Err(DotenvError {
            path,
            line: None,
            problem: format!("is {} bytes; a secrets file is at most 1 MiB", meta.len()),
        });
    }
    let bytes = std::fs::read(&path).map_err(|e| DotenvError {
        path: path.clone(),
        line: None,
        problem: format!("cannot read: {e}"),
    })?;
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = good.iter().filter(|b| **b == b'\n').count() + 1;
            return Err(DotenvError {
                path,
                line: Some(line),
                problem: "not valid UTF-8".into(),
            });
        }
    };
    parse(&text, &path).map(Some)
}

/// Values that look secret in a file that does not parse: the value of
/// every `NAME=VALUE` whose name is secret, and every http(s) URL.
fn secrets_in_broken(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some((name, value)) = line.split_once('=') {
            let name = name.trim().trim_start_matches("export ").trim();
            if gates_core::redact::is_secret_var(name) {
                out.push(value.trim().trim_matches(['"', '\'']).to_string());
            }
        }
        for word in line.split(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '=')) {
            if word.starts_with("https://") || word.starts_with("http://") {
                out.push(word.to_string());
            }
        }
    }
    out
}

/// What this process uses: the file read once (or nothing).
static LOADED: OnceLock<DotEnv> = OnceLock::new();

/// Reads `<root>/.env.notifications` once for this process, registers its
/// secrets with the redactor and says on stderr which names it ignored.
/// A second call (another root) keeps the first file. On error nothing is
/// used from the file.
pub fn load(root: &Path) -> Result<(), DotenvError> {
    if LOADED.get().is_some() {
        return Ok(());
    }
    let file = read(root);
    let (file, result) = match file {
        Ok(f) => (f.unwrap_or_default(), Ok(())),
        Err(e) => {
            // Nothing of a broken file is used, but what looks like a secret
            // in it is still hidden (a later message may quote it).
            if let Ok(bytes) = std::fs::read(&e.path) {
                for value in secrets_in_broken(&String::from_utf8_lossy(&bytes)) {
                    gates_core::redact::add_secret(&value);
                }
            }
            (DotEnv::default(), Err(e))
        }
    };
    gates_core::redact::add_secret_vars(file.secrets.iter().cloned());
    if let Some(p) = &file.path {
        for name in &file.ignored {
            eprintln!(
                "notify: {}: {name} ignored: not a notification variable (known: {})",
                p.display(),
                KNOWN_VARS.join(", ")
            );
        }
    }
    let _ = LOADED.set(file);
    result
}

/// Whether [`load`] already ran in this process.
pub fn loaded() -> bool {
    LOADED.get().is_some()
}

/// A variable as the channels see it: the process environment when it has
/// the name (trimmed; empty means unset), else the file's value.
pub fn var(name: &str) -> Option<String> {
    let value = match std::env::var(name) {
        Ok(v) => Some(v),
        Err(std::env::VarError::NotUnicode(_)) => None,
        Err(std::env::VarError::NotPresent) => {
            LOADED.get().and_then(|f| f.get(name)).map(str::to_string)
        }
    };
    value
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<DotEnv, DotenvError> {
        parse(text, Path::new("/x/.env.notifications"))
    }

    #[test]
    fn the_usual_forms() {
        let f = p("# secrets\n\
             SLACK_WEBHOOK_URL=https://hooks.slack.com/services/T1/B1/abc\n\
             export TEAMS_WEBHOOK_URL = 'https://t.example/a b#c'\r\n\
             \n\
             EMAIL_TO=\"ops@example.com, \\\"on call\\\"\"  # who\n\
             EMAIL_FROM=dhash@example.com # comment\n\
             EMAIL_SMTP_PORT=\n\
             SLACK_WEBHOOK_URL=https://hooks.slack.com/services/T1/B1/newer\n")
        .expect("parses");
        assert_eq!(
            f.get("SLACK_WEBHOOK_URL"),
            Some("https://hooks.slack.com/services/T1/B1/newer")
        );
        assert_eq!(f.get("TEAMS_WEBHOOK_URL"), Some("https://t.example/a b#c"));
        assert_eq!(f.get("EMAIL_TO"), Some("ops@example.com, \"on call\""));
        assert_eq!(f.get("EMAIL_FROM"), Some("dhash@example.com"));
        assert_eq!(f.get("EMAIL_SMTP_PORT"), Some(""));
        // Both Slack values are secrets, the older one too.
        assert_eq!(
            f.secrets
                .iter()
                .filter(|(n, _)| n == "SLACK_WEBHOOK_URL")
                .count(),
            2
        );
        assert!(f.ignored.is_empty());
    }

    #[test]
    fn secrets_of_a_broken_file_are_found() {
        let found = secrets_in_broken(
            "export EMAIL_PASSWORD = \"pw-123456\"\nSLACK_WEBHOOK_URL \"https://h.example/x/Tok1\"\nEMAIL_TO=a@b.c\n",
        );
        assert_eq!(found, vec!["pw-123456", "https://h.example/x/Tok1"]);
    }

    #[test]
    fn unknown_names_are_ignored_and_listed() {
        let f = p("SLACK_WEBHOK=https://x.example/y\nPATH=/tmp\n").expect("parses");
        assert!(f.vars.is_empty());
        assert_eq!(f.ignored, vec!["SLACK_WEBHOK", "PATH"]);
    }

    #[test]
    fn broken_lines_name_file_and_line_never_the_value() {
        let cases = [
            (
                "# ok\nSLACK_WEBHOOK_URL https://hooks/secret-1\n",
                2,
                "no \"=\"",
            ),
            ("EMAIL_TO=a@b.c\n\n9SLACK=x\n", 3, "invalid variable name"),
            (
                "SLACK_WEBHOOK_URL='https://hooks/secret-1\n",
                1,
                "unterminated single",
            ),
            (
                "SLACK_WEBHOOK_URL=\"https://hooks/secret-1\n",
                1,
                "unterminated double",
            ),
            (
                "SLACK_WEBHOOK_URL='https://hooks/secret-1' x\n",
                1,
                "after the closing",
            ),
            (
                "SLACK_WEBHOOK_URL=https://hooks/sec'ret-1\n",
                1,
                "a quote inside",
            ),
            (
                "SLACK WEBHOOK=https://hooks/secret-1\n",
                1,
                "invalid variable name",
            ),
            ("=https://hooks/secret-1\n", 1, "invalid variable name"),
        ];
        for (text, line, what) in cases {
            let e = p(text).expect_err(text);
            assert_eq!(e.line, Some(line), "{text:?}: {e}");
            let msg = e.to_string();
            assert!(
                msg.starts_with(&format!("/x/.env.notifications:{line}: ")),
                "{msg}"
            );
            assert!(msg.contains(what), "{msg}");
            assert!(!msg.contains("secret-1"), "{msg}");
        }
    }

    /// The library's way (the monitor calls `send`): a broken file is an
    /// error once, then nothing of it is used, and its secrets that could be
    /// read are still hidden. (The only test that calls `load`: it is once
    /// per process.)
    #[test]
    fn a_broken_file_is_ignored_whole_by_the_library() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join(FILE),
            "DISCORD_WEBHOOK=https://discord.example/api/webhooks/1/UnitTestToken0042\nbroken line\n",
        )
        .expect("write");
        let e = load(dir.path()).expect_err("broken");
        assert_eq!(e.line, Some(2));
        assert!(loaded());
        assert_eq!(var("DISCORD_WEBHOOK"), None, "nothing of the file is used");
        assert_eq!(
            gates_core::redact::global().redact("see UnitTestToken0042"),
            "see [REDACTED]",
            "its secrets are hidden all the same"
        );
        assert_eq!(load(dir.path()), Ok(()), "read once per process");
    }

    #[test]
    fn files_that_cannot_be_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read(dir.path()), Ok(None));
        std::fs::create_dir(dir.path().join(FILE)).expect("mkdir");
        let e = read(dir.path()).expect_err("a folder");
        assert!(e.to_string().contains("not a regular file"), "{e}");
        std::fs::remove_dir(dir.path().join(FILE)).expect("rmdir");
        std::fs::write(
            dir.path().join(FILE),
            b"EMAIL_TO=a@b.c\nWEBHOOK_URL=\xff\xfe\n",
        )
        .expect("write");
        let e = read(dir.path()).expect_err("not UTF-8");
        assert_eq!(e.line, Some(2));
        assert!(e.to_string().contains("UTF-8"), "{e}");
    }
}
