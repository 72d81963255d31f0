//! Lines notify keeps up to date in a monitor's incident record
//! (`monitor_logs/incident_*.md`, the source of truth): who acknowledged it
//! and when, its escalation level and its tracker link. Each is one
//! `- **Label:** value` line of the Summary, replaced in place (or added
//! after the last Summary line); the file is rewritten atomically and the
//! value redacted.

use std::path::{Path, PathBuf};

use anyhow::Context;

use gates_core::config::EnvConfig;

pub const ACKNOWLEDGED: &str = "Acknowledged";
pub const ESCALATION: &str = "Escalation";
pub const TRACKER: &str = "Tracker";

/// The record `path` names, if it is one of `env`'s incident records: a
/// regular file (not a symlink) named `incident_<env>_*.md` directly in the
/// environment's log_dir. Anything else is refused with the reason: the
/// path comes from stdin events and from escalation.json, and notify
/// rewrites the file and copies it to the tracker, so it must never be an
/// arbitrary file.
pub fn check_record(env: &EnvConfig, path: &Path) -> Result<PathBuf, String> {
    let expected = format!(
        "a regular incident_{}_*.md file in {}",
        env.name,
        env.log_dir.display()
    );
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let prefix = format!("incident_{}_", env.name);
    let named = name
        .strip_prefix(&prefix)
        .and_then(|rest| rest.strip_suffix(".md"))
        .is_some_and(|mid| !mid.is_empty());
    if !named {
        return Err(format!("{} is not {expected}", path.display()));
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => {}
        Ok(_) => return Err(format!("{} is not {expected}", path.display())),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    let inside = match (dir.canonicalize(), env.log_dir.canonicalize()) {
        (Ok(d), Ok(l)) => (d == l).then_some(l),
        _ => None,
    };
    match inside {
        Some(log_dir) => Ok(log_dir.join(name)),
        None => Err(format!("{} is not {expected}", path.display())),
    }
}

/// Sets `- **label:** value` in the record's Summary; refuses a file that
/// is not one of `env`'s incident records ([`check_record`]).
pub fn set_line(env: &EnvConfig, path: &Path, label: &str, value: &str) -> anyhow::Result<()> {
    let path = check_record(env, path).map_err(anyhow::Error::msg)?;
    let path = path.as_path();
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value = gates_core::redact::global().redact(value.replace('\n', " ").trim());
    let updated = with_line(&text, label, &value);
    gates_core::fsutil::write_atomic(path, updated.as_bytes())
}

/// The text with the line set: replaced where it is, else after the last
/// `- **…:**` line of the first section, else at the end.
pub fn with_line(text: &str, label: &str, value: &str) -> String {
    let prefix = format!("- **{label}:**");
    let line = format!("{prefix} {value}");
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if let Some(l) = lines.iter_mut().find(|l| l.starts_with(&prefix)) {
        *l = line;
    } else {
        let summary_end = lines
            .iter()
            .enumerate()
            .skip_while(|(_, l)| !l.starts_with("## "))
            .skip(1)
            .take_while(|(_, l)| !l.starts_with("## "))
            .filter(|(_, l)| l.starts_with("- **"))
            .map(|(i, _)| i)
            .last();
        match summary_end {
            Some(i) => lines.insert(i + 1, line),
            None => lines.push(line),
        }
    }
    let mut out = lines.join("\n");
    if text.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// The line's value as written (None: no such line).
pub fn line_value(text: &str, label: &str) -> Option<String> {
    let prefix = format!("- **{label}:** ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_or_adds_in_the_summary() {
        let t =
            "# I\n\n## Summary\n- **Environment:** p\n- **Watch page:** x\n\n## Timeline\n- a\n";
        let once = with_line(t, TRACKER, "https://github.com/o/r/issues/1");
        assert!(once.contains("- **Watch page:** x\n- **Tracker:** https://github.com/o/r/issues/1\n\n## Timeline"), "{once}");
        let twice = with_line(&once, TRACKER, "[failed]");
        assert_eq!(twice.matches("**Tracker:**").count(), 1);
        assert_eq!(line_value(&twice, TRACKER).as_deref(), Some("[failed]"));
    }
}
