//! The release manifest (`release.json`) every bundle and installed release
//! carries: written by the bundle builder, read by the service at start-up
//! and by migrate, deploy, backup and rollback.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

pub const MANIFEST: &str = "release.json";

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
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}: not a valid release manifest", path.display()))
    }

    /// created_at as a timestamp for ordering (unparsable sorts first).
    pub fn created(&self) -> Option<chrono::DateTime<chrono::FixedOffset>> {
        chrono::DateTime::parse_from_rfc3339(&self.created_at).ok()
    }
}
