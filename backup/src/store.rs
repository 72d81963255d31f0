//! The backup folder: listing, choosing the newest verified backup,
//! retention, and cleaning up after interrupted runs.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::bail;
use gates_core::config::EnvConfig;
use gates_core::{Emitter, Level};
use serde::Serialize;
use serde_json::json;

use crate::names::{parse_backup_name, parse_partial_name};

/// One backup of an environment, as `--list` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct BackupEntry {
    pub path: PathBuf,
    pub name: String,
    pub timestamp: String,
    pub bytes: u64,
    pub has_sidecar: bool,
    pub verified: bool,
    pub error: Option<String>,
    pub sha256: Option<String>,
    pub release: Option<String>,
    pub schema_version: Option<i64>,
    pub created_at: Option<String>,
    pub files: Option<usize>,
}

/// Backups of `env` in its backup folder (by file name), newest first.
pub(crate) fn backups_of(env: &EnvConfig) -> anyhow::Result<Vec<(PathBuf, String)>> {
    backups_in(&env.backup_dir, &env.name)
}

pub(crate) fn backups_in(dir: &Path, env: &str) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => bail!("reading the backup folder {}: {e}", dir.display()),
    };
    let mut out = Vec::new();
    for entry in rd.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some((e, ts)) = parse_backup_name(name) {
            if e == env && entry.file_type().is_ok_and(|t| t.is_file()) {
                out.push((entry.path(), ts));
            }
        }
    }
    out.sort_by(|a, b| b.1.cmp(&a.1));
    Ok(out)
}

/// Every backup of `env`, newest first; `verify` checks each one fully.
pub fn list(env: &EnvConfig, verify: bool) -> anyhow::Result<Vec<BackupEntry>> {
    let mut out = Vec::new();
    for (path, ts) in backups_of(env)? {
        let bytes = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let has_sidecar = PathBuf::from(format!("{}.sha256", path.display())).is_file();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let mut e = BackupEntry {
            path: path.clone(),
            name,
            timestamp: ts,
            bytes,
            has_sidecar,
            verified: false,
            error: None,
            sha256: crate::read_sidecar(&path).ok().map(|s| s.0),
            release: None,
            schema_version: None,
            created_at: None,
            files: None,
        };
        if verify {
            match crate::verify(&path) {
                Ok(m) if m.env != env.name => {
                    e.error = Some(format!("its manifest says environment {:?}", m.env));
                }
                Ok(m) => {
                    e.verified = true;
                    e.release = m.release.clone();
                    e.schema_version = m.schema_version;
                    e.created_at = Some(m.created_at.clone());
                    e.files = Some(m.files.len());
                }
                Err(err) => e.error = Some(format!("{err:#}")),
            }
        }
        out.push(e);
    }
    Ok(out)
}

/// The newest backup of `env` that verifies. Corrupt ones are reported with a
/// `backup.skipped` warning each and named in the error when none verifies.
pub fn newest_verified(env: &EnvConfig, em: &Emitter) -> anyhow::Result<PathBuf> {
    let all = backups_of(env)?;
    if all.is_empty() {
        bail!(
            "no backups of {} in {} (expected files named dhash_{}_<timestamp>.zip)",
            env.name,
            env.backup_dir.display(),
            env.name
        );
    }
    let mut skipped = Vec::new();
    for (path, _) in all {
        let why = match crate::verify(&path) {
            Ok(m) if m.env == env.name => {
                if !skipped.is_empty() {
                    em.human(&format!(
                        "using {} (skipped {} newer backup(s) that do not verify)",
                        path.display(),
                        skipped.len()
                    ));
                }
                return Ok(path);
            }
            Ok(m) => format!("its manifest says environment {:?}", m.env),
            Err(e) => format!("{e:#}"),
        };
        em.emit(
            "backup.skipped",
            Level::Warning,
            format!("skipping {}: {why}", path.display()),
            json!({"path": path, "error": why}),
        );
        skipped.push(format!("{} ({why})", path.display()));
    }
    bail!(
        "no backup of {} verifies; skipped: {}",
        env.name,
        skipped.join("; ")
    )
}

/// The newest backup of `env` by name that has a sidecar (not verified).
pub fn newest_backup_name(env: &EnvConfig) -> Option<PathBuf> {
    backups_of(env)
        .ok()?
        .into_iter()
        .map(|(p, _)| p)
        .find(|p| PathBuf::from(format!("{}.sha256", p.display())).is_file())
}

/// Retention: keeps the newest `keep` backups of `env`, deletes the older ones
/// (zip first, then its sidecar). `just_made` is never deleted.
pub fn prune(
    env: &EnvConfig,
    keep: usize,
    just_made: &Path,
    em: &Emitter,
) -> anyhow::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for (path, _) in backups_of(env)?.into_iter().skip(keep.max(1)) {
        if path == just_made {
            continue;
        }
        if let Err(e) = fs::remove_file(&path) {
            em.emit(
                "backup.prune-failed",
                Level::Warning,
                format!("could not delete old backup {}: {e}", path.display()),
                json!({"path": path}),
            );
            continue;
        }
        let _ = fs::remove_file(format!("{}.sha256", path.display()));
        em.emit(
            "backup.pruned",
            Level::Info,
            format!(
                "deleted old backup {} (retention keeps {keep})",
                path.display()
            ),
            json!({"path": path, "keep": keep}),
        );
        removed.push(path);
    }
    if !removed.is_empty() {
        let _ = gates_core::fsutil::fsync_dir(&env.backup_dir);
    }
    Ok(removed)
}

/// Removes what interrupted runs of `env` left in the backup folder: temporary
/// files (`.dhash_<env>_<ts>....<pid>.partial`, of other processes: the caller
/// holds the environment lock, so no other run of `env` is alive) and sidecars
/// whose zip never appeared. Returns the removed paths.
pub fn cleanup_stale(env: &EnvConfig, em: &Emitter) -> anyhow::Result<Vec<PathBuf>> {
    let rd = match fs::read_dir(&env.backup_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => bail!(
            "reading the backup folder {}: {e}",
            env.backup_dir.display()
        ),
    };
    let me = std::process::id();
    let mut removed = Vec::new();
    for entry in rd.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let base = ["-journal", "-wal", "-shm"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        let stale = match parse_partial_name(base, &env.name) {
            Some(pid) => pid != me,
            None => {
                name.strip_suffix(".sha256")
                    .and_then(parse_backup_name)
                    .is_some_and(|(e, _)| e == env.name)
                    && !env
                        .backup_dir
                        .join(name.trim_end_matches(".sha256"))
                        .exists()
            }
        };
        if stale && fs::remove_file(entry.path()).is_ok() {
            em.emit(
                "backup.discarded",
                Level::Warning,
                format!(
                    "removed {} left by an interrupted backup run",
                    entry.path().display()
                ),
                json!({"path": entry.path()}),
            );
            removed.push(entry.path());
        }
    }
    Ok(removed)
}
