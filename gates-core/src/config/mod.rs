//! Configuration: the environment topology (`environments.json`) and the
//! quality gates (`quality-gates-config.json`, the seed schema). Every error
//! names the file, the JSON path of the field and what was expected.

mod dupkeys;
pub mod escalation;
mod gates;
pub mod limits;
mod topology;

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

pub use escalation::{EscalationLevel, EscalationPolicy};
pub use gates::{
    Action, GateKind, GateSource, GateSpec, GatesEnv, GatesFile, Metric, MonitorOverride,
    SourceKind,
};
pub use limits::DurationRange;
pub use topology::fleet;
pub use topology::{
    CadencePhase, EnvConfig, HealthPolicy, MonitorSettings, NotifySettings, Retention, Route,
    ServiceControl, Topology,
};

/// A configuration problem: exit 2.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: {}: {message}", .file.display(), if .path.is_empty() { "(document)" } else { .path.as_str() })]
pub struct ConfigError {
    pub file: PathBuf,
    /// JSON path, e.g. `environments.production.quality_gates.p95_hash_time.threshold`.
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(file: &Path, path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Parses JSON into `T`, turning serde's error into a [`ConfigError`] with the
/// path of the failing field.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    file: &Path,
    text: &str,
) -> Result<T, ConfigError> {
    if text.starts_with('\u{feff}') {
        // Some Windows editors add one; JSON forbids it (RFC 8259 §8.1) and
        // the seeds' python validation refuses it too: say so plainly.
        return Err(ConfigError::new(
            file,
            "",
            "the file starts with a UTF-8 byte order mark (BOM); save it as UTF-8 without BOM",
        ));
    }
    dupkeys::check(file, text)?;
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let path = if path == "." { String::new() } else { path };
        let message = if inner.is_syntax() || inner.is_eof() {
            format!("invalid JSON: {inner}")
        } else {
            // serde's own words ("invalid type: string \"x\", expected f64"),
            // minus the position that points into the file, not the field.
            let m = inner.to_string();
            match m.rfind(" at line ") {
                Some(i) => m[..i].to_string(),
                None => m,
            }
        };
        ConfigError::new(file, path, message)
    })
}

pub(crate) fn read_file(file: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(file)
        .map_err(|e| ConfigError::new(file, "", format!("cannot read the file: {e}")))
}

/// The longest environment name: it becomes part of file names (logs,
/// backups, locks).
pub const MAX_ENV_NAME: usize = 64;

/// An environment name: letters, digits, `-` and `_`, starting with a letter
/// or digit. It is used in file names, so `../x` or `a/b` must never pass.
pub(crate) fn check_env_name(file: &Path, path: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_ENV_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            file,
            path,
            format!(
                "expected an environment name of 1 to {MAX_ENV_NAME} letters, digits, '-' or '_' (it becomes part of file names), found {name:?}"
            ),
        ))
    }
}

/// An unresolved `Replace with ...` placeholder found in a config file.
#[derive(Debug, Clone, PartialEq)]
pub struct Placeholder {
    pub file: PathBuf,
    pub path: String,
    pub value: String,
}

/// Every string value containing `Replace with` in a JSON document.
pub fn find_placeholders(file: &Path, value: &serde_json::Value) -> Vec<Placeholder> {
    fn walk(file: &Path, v: &serde_json::Value, path: &str, out: &mut Vec<Placeholder>) {
        match v {
            serde_json::Value::String(s) if s.contains("Replace with") => out.push(Placeholder {
                file: file.to_path_buf(),
                path: path.to_string(),
                value: s.clone(),
            }),
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(file, v, &p, out);
                }
            }
            serde_json::Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    walk(file, v, &format!("{path}[{i}]"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(file, value, "", &mut out);
    out
}

/// Deserializes a duration written as humantime (`"10m"`) or a number in the
/// unit the field's name gives (`window_minutes: 10`). Never panics: `1e300`
/// minutes is an error value.
pub(crate) fn duration_from_value(v: &Value, unit_secs: f64) -> Result<Duration, String> {
    let scaled = |x: f64| -> Result<Duration, String> {
        if !x.is_finite() || x < 0.0 {
            return Err(format!("expected a duration ≥ 0, found {x:?}"));
        }
        crate::duration::from_secs_checked(x * unit_secs)
            .map_err(|_| format!("{x:?} is too long a duration"))
    };
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(x) => scaled(x),
            None => Err(format!("expected a duration ≥ 0, found {n}")),
        },
        Value::String(s) => match s.trim().parse::<f64>() {
            // A bare number in a string keeps the field's unit.
            Ok(x) => scaled(x),
            Err(_) => crate::duration::parse_duration(s),
        },
        other => Err(format!(
            "expected a number or a duration string like \"10m\", found {other}"
        )),
    }
}

/// A duration field checked against its allowed range. `unit` names what a
/// bare number means ("seconds", "minutes").
pub(crate) fn duration_in(
    file: &Path,
    path: &str,
    v: &Value,
    unit_secs: f64,
    unit: &str,
    range: DurationRange,
) -> Result<Duration, ConfigError> {
    let allowed = || {
        format!(
            "{} ({unit} as a number, or a string like \"90s\", \"10m\")",
            range.describe()
        )
    };
    let out_of_range = || {
        ConfigError::new(
            file,
            path,
            format!("expected a duration {}, found {v}", allowed()),
        )
    };
    match duration_from_value(v, unit_secs) {
        Ok(d) if range.contains(d) => Ok(d),
        Ok(_) => Err(out_of_range()),
        // A figure (negative, too large): the range says it all.
        Err(_) if v.is_number() || v.as_str().is_some_and(|s| s.trim().parse::<f64>().is_ok()) => {
            Err(out_of_range())
        }
        Err(m) => Err(ConfigError::new(
            file,
            path,
            format!("{m}; allowed: {}", allowed()),
        )),
    }
}

/// A whole-number field checked against its allowed range.
pub(crate) fn whole_in(
    file: &Path,
    path: &str,
    v: &Value,
    range: &RangeInclusive<u64>,
) -> Result<u64, ConfigError> {
    let expected = format!(
        "expected a whole number from {} to {}",
        range.start(),
        range.end()
    );
    let n = match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            // 10.0 is ten; 1e300 and 2.5 are not whole numbers in range.
            n.as_f64()
                .filter(|x| x.fract() == 0.0 && *x >= 0.0 && *x <= u64::MAX as f64 / 2.0)
                .map(|x| x as u64)
        }),
        _ => None,
    };
    match n {
        Some(n) if range.contains(&n) => Ok(n),
        _ => Err(ConfigError::new(
            file,
            path,
            format!("{expected}, found {v}"),
        )),
    }
}

/// A real-number field checked against its allowed range; `what` says what
/// the figure means (" (milliseconds)").
pub(crate) fn number_in(
    file: &Path,
    path: &str,
    v: &Value,
    (lo, hi): (f64, f64),
    what: &str,
) -> Result<f64, ConfigError> {
    match v.as_f64() {
        Some(x) if x.is_finite() && x >= lo && x <= hi => Ok(x),
        _ => Err(ConfigError::new(
            file,
            path,
            format!("expected a number from {lo} to {hi}{what}, found {v}"),
        )),
    }
}
