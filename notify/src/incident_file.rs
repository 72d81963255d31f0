//! Lines notify keeps up to date in a monitor's incident record
//! (`monitor_logs/incident_*.md`, the source of truth): who acknowledged it
//! and when, its escalation level and its tracker link. Each is one
//! `- **Label:** value` line of the Summary, replaced in place (or added
//! after the last Summary line); the file is rewritten atomically and the
//! value redacted.

use std::path::Path;

use anyhow::Context;

pub const ACKNOWLEDGED: &str = "Acknowledged";
pub const ESCALATION: &str = "Escalation";
pub const TRACKER: &str = "Tracker";

/// Sets `- **label:** value` in the record's Summary.
pub fn set_line(path: &Path, label: &str, value: &str) -> anyhow::Result<()> {
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
