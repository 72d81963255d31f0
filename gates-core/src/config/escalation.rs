//! An environment's escalation policy (`environments.<env>.escalation`): who
//! is told at each level, on which channels, and the rules that move an
//! environment up a level. The shipped default follows the runbooks: seed
//! 004's "3+ warnings in 15 minutes" and "automatic after 2 critical alerts",
//! seed 002's path (deploy operator → SRE team → engineering) and its
//! "operator verification required within 5 minutes" after an auto-rollback.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::limits::DurationRange;
use super::topology::CHANNELS;
use super::{duration_in, whole_in, ConfigError};

const MINUTE: Duration = Duration::from_secs(60);
/// Rule windows: 1 s to a day (a longer one would escalate on stale news).
const RULE_WINDOW: DurationRange =
    DurationRange::new(Duration::from_secs(1), Duration::from_secs(86_400));
/// The ack deadline: 1 s (tests) to a day.
const ACK_DEADLINE: DurationRange =
    DurationRange::new(Duration::from_secs(1), Duration::from_secs(86_400));
/// How many alerts a rule counts before it escalates.
const RULE_COUNT: std::ops::RangeInclusive<u64> = 1..=1000;

/// One level of the escalation path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationLevel {
    /// A short name (`deploy-operator`, `sre`, `engineering`).
    pub name: String,
    /// Who is told (handles, on-call names); shown in the messages.
    #[serde(default)]
    pub contacts: Vec<String>,
    /// The channels this level is reached on.
    pub channels: Vec<String>,
}

/// The resolved policy: levels (index 0 is level 1) and the rules.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EscalationPolicy {
    /// Whether the environment has an `escalation` block. Without one
    /// nothing escalates (and auto-rollbacks follow the routes): the shipped
    /// `environments.json` writes the runbooks' policy out for both
    /// environments, and a topology written before it behaves as it did.
    pub configured: bool,
    pub levels: Vec<EscalationLevel>,
    /// This many warnings of the environment within `warning_window` escalate.
    pub warnings: u32,
    pub warning_window: Duration,
    /// This many critical alerts within `critical_window` escalate.
    pub criticals: u32,
    pub critical_window: Duration,
    /// An auto-rollback incident not acknowledged within this escalates one
    /// level, and again at each further deadline until the top.
    pub ack_deadline: Duration,
}

impl Default for EscalationPolicy {
    fn default() -> Self {
        let level = |name: &str, contacts: &[&str], channels: &[&str]| EscalationLevel {
            name: name.to_string(),
            contacts: contacts.iter().map(|s| s.to_string()).collect(),
            channels: channels.iter().map(|s| s.to_string()).collect(),
        };
        EscalationPolicy {
            configured: true,
            levels: vec![
                level("deploy-operator", &["@ops"], &["slack", "teams"]),
                level(
                    "sre",
                    &["@sre", "SRE on-call"],
                    &["slack", "pagerduty", "opsgenie"],
                ),
                level(
                    "engineering",
                    &["@media-eng", "@engineering"],
                    &["email", "pagerduty", "opsgenie"],
                ),
            ],
            warnings: 3,
            warning_window: 15 * MINUTE,
            criticals: 2,
            critical_window: 60 * MINUTE,
            ack_deadline: 5 * MINUTE,
        }
    }
}

impl EscalationPolicy {
    /// The highest level (1-based).
    pub fn top(&self) -> u32 {
        u32::try_from(self.levels.len()).unwrap_or(u32::MAX)
    }

    /// Level `n` (1-based), clamped to the path.
    pub fn level(&self, n: u32) -> &EscalationLevel {
        let i = (n.max(1) as usize - 1).min(self.levels.len().saturating_sub(1));
        &self.levels[i]
    }
}

/// The policy as written; every field optional (the default fills in).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawEscalation {
    #[serde(default)]
    levels: Option<Vec<EscalationLevel>>,
    #[serde(default)]
    warnings: Option<Value>,
    #[serde(default)]
    warning_window: Option<Value>,
    #[serde(default)]
    criticals: Option<Value>,
    #[serde(default)]
    critical_window: Option<Value>,
    #[serde(default)]
    ack_deadline: Option<Value>,
}

/// Resolves and validates `environments.<env>.escalation` (`path` is its JSON path).
pub fn resolve(
    file: &Path,
    path: &str,
    raw: Option<&RawEscalation>,
) -> Result<EscalationPolicy, ConfigError> {
    let d = EscalationPolicy::default();
    let Some(raw) = raw else {
        return Ok(EscalationPolicy {
            configured: false,
            ..d
        });
    };
    let dur = |field: &str, v: &Option<Value>, default: Duration, range: DurationRange| match v {
        None | Some(Value::Null) => Ok(default),
        Some(v) => duration_in(file, &format!("{path}.{field}"), v, 60.0, "minutes", range),
    };
    let count = |field: &str, v: &Option<Value>, default: u32| match v {
        None | Some(Value::Null) => Ok(default),
        Some(v) => whole_in(file, &format!("{path}.{field}"), v, &RULE_COUNT)
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
    };
    let levels = match &raw.levels {
        None => d.levels.clone(),
        Some(l) => check_levels(file, path, l)?,
    };
    Ok(EscalationPolicy {
        configured: true,
        levels,
        warnings: count("warnings", &raw.warnings, d.warnings)?,
        warning_window: dur(
            "warning_window",
            &raw.warning_window,
            d.warning_window,
            RULE_WINDOW,
        )?,
        criticals: count("criticals", &raw.criticals, d.criticals)?,
        critical_window: dur(
            "critical_window",
            &raw.critical_window,
            d.critical_window,
            RULE_WINDOW,
        )?,
        ack_deadline: dur(
            "ack_deadline",
            &raw.ack_deadline,
            d.ack_deadline,
            ACK_DEADLINE,
        )?,
    })
}

/// At least one level, each with a name and known channels.
fn check_levels(
    file: &Path,
    path: &str,
    levels: &[EscalationLevel],
) -> Result<Vec<EscalationLevel>, ConfigError> {
    if levels.is_empty() || levels.len() > 20 {
        return Err(ConfigError::new(
            file,
            format!("{path}.levels"),
            "expected 1 to 20 levels",
        ));
    }
    for (i, l) in levels.iter().enumerate() {
        if l.name.trim().is_empty() {
            return Err(ConfigError::new(
                file,
                format!("{path}.levels[{i}].name"),
                "expected a non-empty name",
            ));
        }
        if l.channels.is_empty() {
            // A level nobody is told on would make its escalation silent.
            return Err(ConfigError::new(
                file,
                format!("{path}.levels[{i}].channels"),
                "expected at least one channel (an escalation to this level would reach nobody)",
            ));
        }
        for (j, c) in l.channels.iter().enumerate() {
            if !CHANNELS.contains(&c.as_str()) {
                return Err(ConfigError::new(
                    file,
                    format!("{path}.levels[{i}].channels[{j}]"),
                    format!(
                        "unknown channel {c:?}; expected one of {}",
                        CHANNELS.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(levels.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<EscalationPolicy, ConfigError> {
        let raw: RawEscalation = serde_json::from_value(v).expect("raw policy");
        resolve(
            Path::new("environments.json"),
            "environments.production.escalation",
            Some(&raw),
        )
    }

    #[test]
    fn default_is_the_runbooks() {
        let d = EscalationPolicy::default();
        assert_eq!((d.warnings, d.warning_window), (3, 15 * MINUTE));
        assert_eq!((d.criticals, d.ack_deadline), (2, 5 * MINUTE));
        assert_eq!(d.top(), 3);
        assert_eq!(d.level(9).name, "engineering");
        assert_eq!(parse(serde_json::json!({})).expect("empty"), d);
        let absent = resolve(Path::new("e.json"), "environments.x.escalation", None).expect("ok");
        assert!(!absent.configured);
    }

    #[test]
    fn fields_are_checked_with_their_path() {
        let p = parse(serde_json::json!({"ack_deadline": "90s", "warnings": 4})).expect("ok");
        assert_eq!((p.ack_deadline, p.warnings), (Duration::from_secs(90), 4));
        let e = parse(serde_json::json!({"levels": [{"name": "a", "channels": ["pager"]}]}))
            .expect_err("unknown channel");
        assert_eq!(
            e.path,
            "environments.production.escalation.levels[0].channels[0]"
        );
        let e = parse(serde_json::json!({"warnings": 0})).expect_err("zero");
        assert_eq!(e.path, "environments.production.escalation.warnings");
        let e = parse(serde_json::json!({"levels": []})).expect_err("no level");
        assert!(e.message.contains("1 to 20"), "{e}");
        let e = parse(serde_json::json!({"levels": [{"name": "a", "channels": []}]}))
            .expect_err("a level on no channel");
        assert_eq!(
            e.path,
            "environments.production.escalation.levels[0].channels"
        );
    }
}
