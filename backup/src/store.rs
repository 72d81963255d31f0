//! The backup folder: listing, choosing the newest verified backup,
//! retention, aliases, and cleaning up after interrupted runs.
//!
//! Aliases: beside each backup `dhash_<env>_<ts>.zip` (with its sidecar) sits
//! `dhash-<env>-<ts>.zip`, a symbolic link to it with the backup's mtime (so
//! `ls -t` orders aliases as it orders backups), and `dhash-<env>-<ts>.zip.sha256`,
//! whose line names the alias by its absolute path, so `sha256sum -c` of it
//! passes from any folder (seed 004 runs it from `sessions/<name>/`). An alias
//! is not a backup: listing, "newest" lookups and retention read only the
//! canonical names; aliases follow their backups (made after them, removed
//! with them, and an alias whose backup was deleted by hand is removed by the
//! next backup run).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use gates_core::config::EnvConfig;
use gates_core::{Emitter, Level};
use serde::Serialize;
use serde_json::json;

use crate::names::{
    alias_file_name, parse_alias_name, parse_backup_name, parse_partial_name, sidecar_line,
    sidecar_of,
};

/// One backup of an environment, as `--list` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct BackupEntry {
    pub path: PathBuf,
    pub name: String,
    pub timestamp: String,
    pub bytes: u64,
    pub has_sidecar: bool,
    /// The `dhash-<env>-<ts>.zip` alias, when it is in place.
    pub alias: Option<PathBuf>,
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
        let has_sidecar = has_sidecar(&path);
        let alias = alias_of(&path).filter(|a| {
            fs::symlink_metadata(a).is_ok_and(|m| m.file_type().is_symlink()) && a.is_file()
        });
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
            alias,
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
        .find(|p| has_sidecar(p))
}

/// Whether the backup's sidecar is there as a regular file (never opened).
fn has_sidecar(zip: &Path) -> bool {
    fs::symlink_metadata(sidecar_of(zip)).is_ok_and(|m| m.is_file())
}

/// `dhash-<env>-<ts>.zip` beside `dhash_<env>_<ts>.zip`.
pub fn alias_of(backup: &Path) -> Option<PathBuf> {
    let name = backup.file_name()?.to_str()?;
    let (env, ts) = parse_backup_name(name)?;
    Some(backup.with_file_name(alias_file_name(&env, &ts)))
}

/// Removes a backup's alias (link first, then its sidecar: a `dhash-*.zip`
/// never lacks its sidecar).
fn remove_alias(backup: &Path) {
    if let Some(alias) = alias_of(backup) {
        if fs::symlink_metadata(&alias).is_ok_and(|m| m.file_type().is_symlink()) {
            let _ = fs::remove_file(&alias);
        }
        if !fs::symlink_metadata(&alias).is_ok_and(|m| m.is_file()) {
            let _ = fs::remove_file(sidecar_of(&alias));
        }
    }
}

/// Retention: keeps the newest `keep` backups of `env` (a backup is a zip with
/// its sidecar; aliases are not counted), deletes the older ones (alias, zip,
/// then sidecar), and zips without a sidecar that are older than the kept
/// ones. `just_made` is never deleted. `keep` 0 is refused: it would delete
/// every backup but the one just made.
pub fn prune(
    env: &EnvConfig,
    keep: usize,
    just_made: &Path,
    em: &Emitter,
) -> anyhow::Result<Vec<PathBuf>> {
    if keep == 0 {
        bail!("retention of 0 backups is refused: keep at least 1");
    }
    let mut removed = Vec::new();
    let mut kept = 0usize;
    for (path, _) in backups_of(env)? {
        let complete = has_sidecar(&path);
        if path == just_made {
            kept += 1;
            continue;
        }
        if kept < keep {
            // A zip without its sidecar newer than the kept ones is left
            // alone (not counted, not offered: it does not verify).
            kept += usize::from(complete);
            continue;
        }
        remove_alias(&path);
        if let Err(e) = fs::remove_file(&path) {
            em.emit(
                "backup.prune-failed",
                Level::Warning,
                format!("could not delete old backup {}: {e}", path.display()),
                json!({"path": path}),
            );
            continue;
        }
        let _ = fs::remove_file(sidecar_of(&path));
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
/// holds the environment lock, so no other run of `env` is alive), sidecars
/// whose zip never appeared (or was deleted by hand), and aliases whose backup
/// is gone. Returns the removed paths.
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
    removed.extend(sync_aliases(env, em)?);
    Ok(removed)
}

/// The line of an alias's sidecar: the backup's digest and the alias's
/// absolute path (so `sha256sum -c` passes from any folder).
fn alias_sidecar_line(alias: &Path, hex: &str) -> String {
    let abs = std::path::absolute(alias).unwrap_or_else(|_| alias.to_path_buf());
    let shown = abs.to_string_lossy();
    if shown.contains('\\') || shown.contains('\n') {
        // GNU sha256sum's escaped form.
        let esc = shown.replace('\\', "\\\\").replace('\n', "\\n");
        format!("\\{hex}  {esc}\n")
    } else {
        format!("{hex}  {shown}\n")
    }
}

/// Makes the aliases of `env`'s backups match the backups: every backup with
/// its sidecar gets `dhash-<env>-<ts>.zip` (a relative symbolic link with the
/// backup's mtime) and the alias's sidecar (written first); aliases and alias
/// sidecars of backups that are gone (or lost their sidecar) are removed.
/// Regular files under an alias name are not ours and are left alone. The
/// caller holds the environment lock. Returns the removed paths.
pub fn sync_aliases(env: &EnvConfig, em: &Emitter) -> anyhow::Result<Vec<PathBuf>> {
    let dir = &env.backup_dir;
    let mut removed = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => bail!("reading the backup folder {}: {e}", dir.display()),
    };
    // 1. Aliases (and alias sidecars) whose backup is gone.
    let mut stale: Vec<(PathBuf, bool)> = Vec::new();
    for entry in rd.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let (alias_name, is_sidecar) = match name.strip_suffix(".sha256") {
            Some(a) => (a, true),
            None => (name, false),
        };
        let Some((e, ts)) = parse_alias_name(alias_name) else {
            continue;
        };
        if e != env.name {
            continue;
        }
        let backup = dir.join(crate::backup_file_name(&e, &ts));
        let backup_ok =
            fs::symlink_metadata(&backup).is_ok_and(|m| m.is_file()) && has_sidecar(&backup);
        if backup_ok {
            continue;
        }
        let alias = dir.join(alias_name);
        let ours = if is_sidecar {
            // Unless a regular file of someone else's sits under the alias name.
            !fs::symlink_metadata(&alias).is_ok_and(|m| m.is_file())
        } else {
            entry.file_type().is_ok_and(|t| t.is_symlink())
        };
        if ours {
            stale.push((entry.path(), is_sidecar));
        }
    }
    // Links before sidecars: a `dhash-*.zip` never lacks its sidecar.
    stale.sort_by_key(|(_, is_sidecar)| *is_sidecar);
    for (path, _) in stale {
        if fs::remove_file(&path).is_ok() {
            em.debug(&format!(
                "removed {}: the backup it stood for is gone",
                path.display()
            ));
            removed.push(path);
        }
    }
    // 2. Every backup with its sidecar has its alias.
    for (backup, _) in backups_of(env)? {
        if !has_sidecar(&backup) {
            continue;
        }
        let Some(alias) = alias_of(&backup) else {
            continue;
        };
        if let Err(e) = make_alias(&backup, &alias) {
            em.emit(
                "backup.alias-failed",
                Level::Warning,
                format!("could not make the alias {}: {e:#}", alias.display()),
                json!({"path": backup, "alias": alias}),
            );
        }
    }
    let _ = gates_core::fsutil::fsync_dir(dir);
    Ok(removed)
}

/// Makes the alias of one backup (see [`sync_aliases`]); returns its path.
pub(crate) fn make_alias_for(backup: &Path) -> anyhow::Result<Option<PathBuf>> {
    let Some(alias) = alias_of(backup) else {
        return Ok(None);
    };
    make_alias(backup, &alias)?;
    Ok(Some(alias))
}

/// Puts `alias` (sidecar first, then the link) in place for `backup`; a no-op
/// when both are already right.
fn make_alias(backup: &Path, alias: &Path) -> anyhow::Result<()> {
    if fs::symlink_metadata(alias).is_ok_and(|m| !m.file_type().is_symlink()) {
        // A file of someone else's under the alias name: not touched.
        return Ok(());
    }
    let (hex, _) = crate::read_sidecar(backup)?;
    let line = alias_sidecar_line(alias, &hex);
    let alias_sidecar = sidecar_of(alias);
    if fs::read_to_string(&alias_sidecar).ok().as_deref() != Some(line.as_str()) {
        gates_core::fsutil::write_atomic(&alias_sidecar, line.as_bytes())
            .with_context(|| format!("writing {}", alias_sidecar.display()))?;
    }
    let target = backup
        .file_name()
        .map(PathBuf::from)
        .ok_or_else(|| anyhow!("{} has no file name", backup.display()))?;
    if fs::read_link(alias).ok().as_deref() != Some(target.as_path()) {
        gates_core::fsutil::switch_symlink(&target, alias)?;
    }
    // The alias carries the backup's mtime, so `ls -t` orders aliases as backups.
    #[cfg(unix)]
    {
        let mtime = fs::metadata(backup)
            .and_then(|m| m.modified())
            .with_context(|| format!("reading {}", backup.display()))?;
        let link_mtime = fs::symlink_metadata(alias).and_then(|m| m.modified()).ok();
        if link_mtime != Some(mtime) {
            let d = mtime
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let ts = nix::sys::time::TimeSpec::from_duration(d);
            nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                alias,
                &ts,
                &ts,
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            )
            .with_context(|| format!("setting the time of {}", alias.display()))?;
        }
    }
    Ok(())
}

/// Backups of `env` that an older layout left in the project's default
/// folder `backups/` (when `env` now has a folder of its own, e.g. staging in
/// `backups/staging/`) are moved into its folder, so its retention and
/// listing see them and the seeds' `ls -1 backups/dhash_*.zip` no longer
/// offers them for production. Per backup: the new sidecar (naming the new
/// path) is written first, then the zip is renamed, then the old sidecar and
/// alias are removed. A backup that cannot be moved (another filesystem, a
/// name taken) stays where it is, with a warning. The caller holds the
/// environment lock. Returns the new paths.
pub fn adopt_legacy(
    project_root: &Path,
    env: &EnvConfig,
    em: &Emitter,
) -> anyhow::Result<Vec<PathBuf>> {
    let legacy = project_root.join("backups");
    if gates_core::fsutil::same_path(&legacy, &env.backup_dir) || !legacy.is_dir() {
        return Ok(Vec::new());
    }
    let mut moved = Vec::new();
    for (old, _) in backups_in(&legacy, &env.name)? {
        let Some(name) = old.file_name().map(PathBuf::from) else {
            continue;
        };
        let new = env.backup_dir.join(&name);
        let result = move_backup(project_root, env, &old, &new);
        match result {
            Ok(true) => {
                em.emit(
                    "backup.moved",
                    Level::Info,
                    format!(
                        "moved {} into {}, the backup folder of {}",
                        old.display(),
                        env.backup_dir.display(),
                        env.name
                    ),
                    json!({"from": old, "path": new}),
                );
                moved.push(new);
            }
            Ok(false) => {
                em.human(&format!(
                    "warning: {} stays in {}: {} already exists",
                    old.display(),
                    legacy.display(),
                    new.display()
                ));
            }
            Err(e) => {
                em.emit(
                    "backup.move-failed",
                    Level::Warning,
                    format!(
                        "{} of {} stays in {}: {e:#}",
                        old.display(),
                        env.name,
                        legacy.display()
                    ),
                    json!({"from": old, "path": new}),
                );
            }
        }
    }
    if !moved.is_empty() {
        let _ = gates_core::fsutil::fsync_dir(&legacy);
        let _ = gates_core::fsutil::fsync_dir(&env.backup_dir);
    }
    Ok(moved)
}

/// Moves one backup of the old shared folder to `new` in `env`'s folder: the
/// new sidecar first, then the zip, then the old sidecar and alias go.
/// Ok(false): `new` (or its sidecar) already exists, nothing moved.
fn move_backup(
    project_root: &Path,
    env: &EnvConfig,
    old: &Path,
    new: &Path,
) -> anyhow::Result<bool> {
    if fs::symlink_metadata(new).is_ok() || fs::symlink_metadata(sidecar_of(new)).is_ok() {
        return Ok(false);
    }
    fs::create_dir_all(&env.backup_dir)
        .with_context(|| format!("creating {}", env.backup_dir.display()))?;
    if has_sidecar(old) {
        let (hex, _) = crate::read_sidecar(old)?;
        gates_core::fsutil::write_atomic(
            &sidecar_of(new),
            sidecar_line(project_root, new, &hex).as_bytes(),
        )?;
    }
    if let Err(e) = fs::rename(old, new) {
        let _ = fs::remove_file(sidecar_of(new));
        return Err(anyhow!(
            "moving {} to {}: {e}",
            old.display(),
            new.display()
        ));
    }
    remove_alias(old);
    let _ = fs::remove_file(sidecar_of(old));
    Ok(true)
}
