//! Configuration: the environment topology (`environments.json`) and the
//! quality gates (`quality-gates-config.json`, the seed schema). Every error
//! names the file, the JSON path of the field and what was expected.

mod gates;
mod topology;

use std::path::{Path, PathBuf};

pub use gates::{Action, GateKind, GateSpec, GatesEnv, GatesFile, Metric};
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
/// unit the field's name gives (`window_minutes: 10`).
pub(crate) fn duration_from_value(
    v: &serde_json::Value,
    unit_secs: f64,
) -> Result<std::time::Duration, String> {
    match v {
        serde_json::Value::Number(n) => match n.as_f64() {
            Some(x) if x.is_finite() && x >= 0.0 => {
                Ok(std::time::Duration::from_secs_f64(x * unit_secs))
            }
            _ => Err(format!("expected a duration ≥ 0, found {n}")),
        },
        serde_json::Value::String(s) => match s.trim().parse::<f64>() {
            // A bare number in a string keeps the field's unit.
            Ok(x) if x.is_finite() && x >= 0.0 => {
                Ok(std::time::Duration::from_secs_f64(x * unit_secs))
            }
            _ => crate::duration::parse_duration(s),
        },
        other => Err(format!(
            "expected a number or a duration string like \"10m\", found {other}"
        )),
    }
}
