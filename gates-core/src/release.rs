//! The release manifest (`release.json`) every bundle and installed release
//! carries: written by the bundle builder, read by the service at start-up
//! and by migrate, deploy, backup and rollback. And `releases.json`, the
//! record of each installed release's state ([`ReleasesState`]): written by
//! deploy, and by rollback/monitor when they roll a release back.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

pub const MANIFEST: &str = "release.json";

/// Whether `tag` may name a release: letters, digits, '.', '_' and '-' (not
/// first, so it never reads as an option or a hidden file), at most 100
/// characters. The bundle builder, deploy and migrate all check tags here.
pub fn validate_tag(tag: &str) -> Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= 100
        && !tag.starts_with('.')
        && !tag.starts_with('-')
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid tag {tag:?}: use letters, digits, '.', '_' and '-' (not first), at most 100 characters"
        ))
    }
}

/// `release.json` (unknown fields are ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseManifest {
    pub id: String,
    pub tag: String,
    pub schema_version: i64,
    pub created_at: String,
    /// Relative path → SHA-256 of each file of the release.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
}

impl ReleaseManifest {
    /// Reads `dir/release.json`.
    pub fn read(dir: &Path) -> anyhow::Result<ReleaseManifest> {
        let path = dir.join(MANIFEST);
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut crate::fsutil::open_regular(&path, "the release manifest")?,
            &mut text,
        )
        .with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}: not a valid release manifest", path.display()))
    }

    /// created_at as a timestamp for ordering (unparsable sorts first).
    pub fn created(&self) -> Option<chrono::DateTime<chrono::FixedOffset>> {
        chrono::DateTime::parse_from_rfc3339(&self.created_at).ok()
    }
}

/// `releases.json` in an environment's install root: what the tools know of
/// each installed release, and the last known-good one.
pub const STATE_FILE: &str = "releases.json";

/// The names of the states a release is recorded in, as `releases.json`
/// spells them (see [`ReleaseState`]).
pub mod state {
    /// Installed (copied and verified), not yet live.
    pub const INSTALLED: &str = "installed";
    /// Went live and passed the health wait.
    pub const HEALTHY: &str = "healthy";
    /// Went live with `--skip-health-check`.
    pub const UNVERIFIED: &str = "unverified";
    /// Did not become healthy when deployed; never a switch-back target.
    pub const FAILED: &str = "failed";
    /// Rolled back by the monitor (a gate broke) or by hand; never a
    /// switch-back target.
    pub const ROLLED_BACK: &str = "rolled-back";
    /// Its installed copy did not match its release.json and was moved to
    /// quarantine; never a switch-back target.
    pub const QUARANTINED: &str = "quarantined";
}

/// The state a release is recorded in; serialized as its [`state`] name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReleaseState {
    /// [`state::INSTALLED`]
    Installed,
    /// [`state::HEALTHY`]
    Healthy,
    /// [`state::UNVERIFIED`]
    Unverified,
    /// [`state::FAILED`]
    Failed,
    /// [`state::ROLLED_BACK`]
    RolledBack,
    /// [`state::QUARANTINED`]
    Quarantined,
    /// A name this version does not know (a newer tool wrote it): kept and
    /// written back as is, neither healthy nor bad, as before states were typed.
    Unknown(String),
}

impl ReleaseState {
    /// Every state this version knows.
    pub const KNOWN: [ReleaseState; 6] = [
        ReleaseState::Installed,
        ReleaseState::Healthy,
        ReleaseState::Unverified,
        ReleaseState::Failed,
        ReleaseState::RolledBack,
        ReleaseState::Quarantined,
    ];

    pub fn as_str(&self) -> &str {
        match self {
            ReleaseState::Installed => state::INSTALLED,
            ReleaseState::Healthy => state::HEALTHY,
            ReleaseState::Unverified => state::UNVERIFIED,
            ReleaseState::Failed => state::FAILED,
            ReleaseState::RolledBack => state::ROLLED_BACK,
            ReleaseState::Quarantined => state::QUARANTINED,
            ReleaseState::Unknown(name) => name,
        }
    }

    /// The state `name` spells (never fails: see [`ReleaseState::Unknown`]).
    pub fn parse(name: &str) -> ReleaseState {
        Self::KNOWN
            .into_iter()
            .find(|s| s.as_str() == name)
            .unwrap_or_else(|| ReleaseState::Unknown(name.to_string()))
    }

    /// Failed, rolled back or quarantined: never deployed or switched back to.
    pub fn is_bad(&self) -> bool {
        matches!(
            self,
            ReleaseState::Failed | ReleaseState::RolledBack | ReleaseState::Quarantined
        )
    }
}

impl std::fmt::Display for ReleaseState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for ReleaseState {
    fn from(name: &str) -> Self {
        ReleaseState::parse(name)
    }
}

/// Callers written when states were strings compare with a name.
impl PartialEq<&str> for ReleaseState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<str> for ReleaseState {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl Serialize for ReleaseState {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ReleaseState {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        Ok(ReleaseState::parse(&String::deserialize(de)?))
    }
}

/// One release's record in `releases.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    #[serde(default)]
    pub tag: String,
    pub state: ReleaseState,
    #[serde(default)]
    pub schema_version: Option<i64>,
    #[serde(default)]
    pub installed_at: Option<String>,
    #[serde(default)]
    pub updated_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl ReleaseRecord {
    /// Failed, rolled back or quarantined: never deployed or switched back to.
    pub fn is_bad(&self) -> bool {
        self.state.is_bad()
    }
}

/// `releases.json`. Written atomically, only under the environment lock.
///
/// Invariant (kept by every method that changes a state): `last_known_good`
/// names a release recorded `healthy`, or is `None`; never a failed,
/// rolled-back or quarantined one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReleasesState {
    #[serde(default)]
    pub last_known_good: Option<String>,
    #[serde(default)]
    pub releases: BTreeMap<String, ReleaseRecord>,
}

impl ReleasesState {
    pub fn path(env: &crate::config::EnvConfig) -> std::path::PathBuf {
        env.install_root.join(STATE_FILE)
    }

    /// The state file, or an empty state when there is none yet. A file
    /// written before this invariant existed is repaired on load (a bad
    /// `last_known_good` is replaced).
    pub fn load(env: &crate::config::EnvConfig) -> anyhow::Result<ReleasesState> {
        let path = Self::path(env);
        let mut st: ReleasesState = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("{}: invalid JSON", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ReleasesState::default(),
            Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", path.display())),
        };
        st.repair_last_known_good();
        Ok(st)
    }

    /// Writes the file atomically (hold the environment lock).
    pub fn save(&self, env: &crate::config::EnvConfig) -> anyhow::Result<()> {
        crate::fsutil::write_atomic(
            &Self::path(env),
            format!("{}\n", serde_json::to_string_pretty(self)?).as_bytes(),
        )
    }

    /// Failed, rolled back or quarantined (see [`ReleaseRecord::is_bad`]).
    pub fn is_failed(&self, id: &str) -> bool {
        self.releases.get(id).is_some_and(ReleaseRecord::is_bad)
    }

    /// Records `state` for `id` (creating the record), keeping the
    /// `last_known_good` invariant: `healthy` makes it the last known-good
    /// release; a bad state on the last known-good one hands that role to the
    /// most recently verified other healthy release (or none).
    pub fn set(
        &mut self,
        id: &str,
        tag: &str,
        schema_version: i64,
        state: impl Into<ReleaseState>,
        reason: Option<String>,
    ) {
        let state = state.into();
        let t = crate::event::now_rfc3339();
        let rec = self
            .releases
            .entry(id.to_string())
            .or_insert_with(|| ReleaseRecord {
                tag: tag.to_string(),
                state: state.clone(),
                schema_version: Some(schema_version),
                installed_at: Some(t.clone()),
                updated_at: None,
                reason: None,
            });
        let healthy = state == ReleaseState::Healthy;
        rec.state = state;
        rec.updated_at = Some(t);
        rec.reason = reason;
        if healthy {
            self.last_known_good = Some(id.to_string());
        }
        self.repair_last_known_good();
    }

    /// Marks a release that was live and was rolled back (by the monitor
    /// after a gate broke, or by an operator): `rolled-back`, with the reason;
    /// it stops being the last known-good release. A release without a record
    /// gets one (tag and schema unknown). Returns whether anything changed.
    pub fn mark_rolled_back(&mut self, id: &str, reason: &str) -> bool {
        self.mark_bad(id, ReleaseState::RolledBack, reason)
    }

    /// Marks a release moved to quarantine (see [`state::QUARANTINED`]).
    pub fn mark_quarantined(&mut self, id: &str, reason: &str) -> bool {
        self.mark_bad(id, ReleaseState::Quarantined, reason)
    }

    /// Marks a release failed (see [`state::FAILED`]).
    pub fn mark_failed(&mut self, id: &str, reason: &str) -> bool {
        self.mark_bad(id, ReleaseState::Failed, reason)
    }

    fn mark_bad(&mut self, id: &str, state: ReleaseState, reason: &str) -> bool {
        let t = crate::event::now_rfc3339();
        let rec = self
            .releases
            .entry(id.to_string())
            .or_insert_with(|| ReleaseRecord {
                tag: String::new(),
                state: state.clone(),
                schema_version: None,
                installed_at: None,
                updated_at: None,
                reason: None,
            });
        let changed = rec.state != state || rec.reason.as_deref() != Some(reason);
        rec.state = state;
        rec.updated_at = Some(t);
        rec.reason = Some(reason.to_string());
        self.repair_last_known_good();
        changed
    }

    /// Restores the invariant: a `last_known_good` that is not recorded
    /// healthy is replaced by the most recently updated healthy release.
    pub fn repair_last_known_good(&mut self) {
        let ok = |st: &ReleasesState, id: &str| {
            st.releases
                .get(id)
                .is_some_and(|r| r.state == ReleaseState::Healthy)
        };
        if let Some(l) = self.last_known_good.clone() {
            if ok(self, &l) {
                return;
            }
        }
        self.last_known_good = self
            .releases
            .iter()
            .filter(|(_, r)| r.state == ReleaseState::Healthy)
            .max_by(|a, b| a.1.updated_at.cmp(&b.1.updated_at))
            .map(|(id, _)| id.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_known_good_never_names_a_bad_release() {
        let mut st = ReleasesState::default();
        st.set("a", "a", 1, state::HEALTHY, None);
        std::thread::sleep(std::time::Duration::from_millis(5));
        st.set("b", "b", 1, state::HEALTHY, None);
        assert_eq!(st.last_known_good.as_deref(), Some("b"));
        assert!(st.mark_rolled_back("b", "p95 above 2000 ms"));
        assert_eq!(st.releases["b"].state, state::ROLLED_BACK);
        assert!(st.is_failed("b"));
        assert_eq!(st.last_known_good.as_deref(), Some("a"));
        st.mark_quarantined("a", "files differ");
        assert_eq!(st.last_known_good, None);
        st.set("c", "c", 2, state::INSTALLED, None);
        assert_eq!(st.last_known_good, None, "installed is not known-good");
        // A file from before the invariant is repaired on load.
        let mut old: ReleasesState = serde_json::from_str(
            r#"{"last_known_good":"x","releases":{"x":{"state":"failed"},"y":{"state":"healthy","updated_at":"2026-01-01T00:00:00Z"}}}"#,
        )
        .expect("json");
        old.repair_last_known_good();
        assert_eq!(old.last_known_good.as_deref(), Some("y"));
    }

    /// Typed states change nothing on disk: every name, known or not, reads
    /// and writes back byte for byte.
    #[test]
    fn releases_json_round_trips_byte_for_byte() {
        // The text `save` writes (field order of ReleaseRecord).
        let names = ReleaseState::KNOWN.map(|s| s.as_str().to_string());
        let records: Vec<String> = names
            .iter()
            .map(String::as_str)
            .chain(["from-a-newer-tool"])
            .enumerate()
            .map(|(i, name)| {
                format!(
                    "    \"r{i}\": {{\n      \"tag\": \"t\",\n      \"state\": \"{name}\",\n      \"schema_version\": 1,\n      \"installed_at\": null,\n      \"updated_at\": null\n    }}"
                )
            })
            .collect();
        let text = format!(
            "{{\n  \"last_known_good\": null,\n  \"releases\": {{\n{}\n  }}\n}}",
            records.join(",\n")
        );
        let st: ReleasesState = serde_json::from_str(&text).expect("parse");
        assert_eq!(st.releases["r1"].state, ReleaseState::Healthy);
        assert_eq!(st.releases["r4"].state, state::ROLLED_BACK);
        assert_eq!(
            st.releases["r6"].state,
            ReleaseState::Unknown("from-a-newer-tool".into())
        );
        assert!(!st.is_failed("r6"));
        assert_eq!(serde_json::to_string_pretty(&st).expect("json"), text);
    }
}
