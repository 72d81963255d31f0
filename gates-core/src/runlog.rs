//! The human log of one run, where every runbook looks for it.
//!
//! The seeds name the same logs differently: seed 003 reads
//! `monitor_logs/deploy_*.log` and `monitor_logs/dhash_<env>_*.log`, seed 002
//! `logs/deploy_*.log` and `logs/monitor_*.log`, seed 004
//! `logs/deploy-production-*` and `monitor_logs/monitor-production-*`. One
//! file is written (once, by one writer); the other names are relative
//! symlinks to it, so `tail -f` on any of them follows the same lines.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::config::EnvConfig;
use crate::fsutil;

/// What kind of run a log belongs to; decides its names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    Deploy,
    Monitor,
}

/// The runbooks' folder of "deployment and monitoring logs" (seed 002),
/// beside the topology file.
pub fn runbook_log_dir(project_root: &Path) -> PathBuf {
    project_root.join("logs")
}

/// The file and its aliases for a run of `kind` on `env` stamped `stamp`
/// (a sortable UTC stamp such as `20261202T011500Z`).
pub fn paths(
    project_root: &Path,
    env: &EnvConfig,
    kind: RunKind,
    stamp: &str,
) -> (PathBuf, Vec<PathBuf>) {
    let name = &env.name;
    let logs = runbook_log_dir(project_root);
    match kind {
        RunKind::Deploy => (
            env.log_dir.join(format!("deploy_{name}_{stamp}.log")),
            vec![
                logs.join(format!("deploy_{name}_{stamp}.log")),
                logs.join(format!("deploy-{name}-{stamp}.log")),
            ],
        ),
        RunKind::Monitor => (
            env.log_dir.join(format!("dhash_{name}_{stamp}.log")),
            vec![
                logs.join(format!("monitor_{name}_{stamp}.log")),
                env.log_dir.join(format!("monitor-{name}-{stamp}.log")),
            ],
        ),
    }
}

/// One run's human log: timestamped, redacted lines appended to one file.
#[derive(Debug, Clone)]
pub struct RunLog {
    path: PathBuf,
}

impl RunLog {
    /// Creates the log of a run (or reopens it: a continued window appends)
    /// and its alias links. A link that cannot be made is reported, not
    /// fatal: the log itself is what matters.
    pub fn create(
        project_root: &Path,
        env: &EnvConfig,
        kind: RunKind,
        stamp: &str,
    ) -> anyhow::Result<RunLog> {
        let (path, aliases) = paths(project_root, env, kind, stamp);
        Self::open_with_aliases(path, &aliases)
    }

    /// `path` created (empty) when missing, each alias a relative symlink to it.
    pub fn open_with_aliases(path: PathBuf, aliases: &[PathBuf]) -> anyhow::Result<RunLog> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        for alias in aliases {
            if let Err(e) = link(&path, alias) {
                eprintln!("warning: {e:#}");
            }
        }
        Ok(RunLog { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `text` with a timestamp; secrets redacted. A failed write is
    /// said on stderr: losing a log line must not stop a rollback.
    pub fn line(&self, text: &str) {
        let line = format!("{} {}", crate::event::now_rfc3339(), text);
        let line = crate::redact::global().redact(&line);
        if let Err(e) = fsutil::append_line(&self.path, &line, false) {
            eprintln!("cannot write {}: {e:#}", self.path.display());
        }
    }
}

/// `alias` → `target` as a relative symlink (an existing link is replaced;
/// anything else at `alias` is left alone and reported).
pub fn link(target: &Path, alias: &Path) -> anyhow::Result<()> {
    let dir = alias.parent().unwrap_or_else(|| Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let rel = relative_to(target, dir);
    match fs::symlink_metadata(alias) {
        Ok(m) if m.file_type().is_symlink() => {
            fs::remove_file(alias).with_context(|| format!("replacing {}", alias.display()))?
        }
        Ok(_) => anyhow::bail!("{} exists and is not a link: left alone", alias.display()),
        Err(_) => {}
    }
    #[cfg(unix)]
    std::os::unix::fs::symlink(&rel, alias)
        .with_context(|| format!("linking {} to {}", alias.display(), rel.display()))?;
    #[cfg(not(unix))]
    fs::hard_link(target, alias)
        .with_context(|| format!("linking {} to {}", alias.display(), target.display()))?;
    Ok(())
}

/// `target` as seen from folder `from` (both absolute or both relative to
/// the same place); falls back to `target` itself.
fn relative_to(target: &Path, from: &Path) -> PathBuf {
    let abs = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            std::env::current_dir().unwrap_or_default().join(p)
        }
    };
    let target = abs(target);
    let from = abs(from);
    let t: Vec<_> = target.components().collect();
    let f: Vec<_> = from.components().collect();
    let common = t.iter().zip(&f).take_while(|(a, b)| a == b).count();
    if common == 0 {
        return target;
    }
    let mut rel = PathBuf::new();
    for _ in common..f.len() {
        rel.push("..");
    }
    for c in &t[common..] {
        rel.push(c);
    }
    rel
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_between_sibling_folders() {
        assert_eq!(
            relative_to(Path::new("/r/monitor_logs/a.log"), Path::new("/r/logs")),
            PathBuf::from("../monitor_logs/a.log")
        );
        assert_eq!(
            relative_to(
                Path::new("/r/monitor_logs/a.log"),
                Path::new("/r/monitor_logs")
            ),
            PathBuf::from("a.log")
        );
    }

    #[test]
    fn aliases_follow_the_one_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let primary = dir.path().join("monitor_logs/deploy_x_1.log");
        let alias = dir.path().join("logs/deploy-x-1.log");
        let log = RunLog::open_with_aliases(primary.clone(), std::slice::from_ref(&alias))
            .expect("create");
        log.line("hello");
        let via_alias = fs::read_to_string(&alias).expect("read alias");
        assert!(via_alias.ends_with(" hello\n"), "{via_alias:?}");
        assert!(fs::symlink_metadata(&alias)
            .expect("lstat")
            .file_type()
            .is_symlink());
        // Reopening (a continued run) keeps the lines and the link.
        RunLog::open_with_aliases(primary, std::slice::from_ref(&alias)).expect("reopen");
        assert_eq!(fs::read_to_string(&alias).expect("read"), via_alias);
    }
}
