//! The per-environment lock around backup/migrate/deploy/rollback.
//!
//! It is an OS file lock (`flock`), taken atomically by the kernel: there is
//! no check-then-write window, and a holder that dies (even by `kill -9`)
//! releases it, so a stale lock of a dead process is recovered by the next
//! run. The file also records who holds it, for the refusal message.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LockOwner {
    pub tool: String,
    pub pid: u32,
    pub host: String,
    pub user: String,
    pub since: String,
}

/// Another live process holds the lock (exit 75).
#[derive(Debug, thiserror::Error)]
#[error("environment {env} is locked by another run{}: try again when it has finished (lock file {})", owner_text(.owner), .path.display())]
pub struct LockBusy {
    pub env: String,
    pub path: PathBuf,
    pub owner: Option<LockOwner>,
}

fn owner_text(owner: &Option<LockOwner>) -> String {
    match owner {
        Some(o) => format!(
            " ({} pid {} on {} as {} since {})",
            o.tool, o.pid, o.host, o.user, o.since
        ),
        None => String::new(),
    }
}

/// Held for as long as this value lives.
#[derive(Debug)]
pub struct EnvLock {
    file: File,
    path: PathBuf,
    env: String,
}

impl EnvLock {
    /// Takes the lock without waiting; [`LockBusy`] when a live run holds it.
    pub fn acquire(path: &Path, env: &str, tool: &str) -> anyhow::Result<EnvLock> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| anyhow::anyhow!("cannot open lock file {}: {e}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let owner = serde_json::from_str(text.trim()).ok();
                return Err(LockBusy {
                    env: env.to_string(),
                    path: path.to_path_buf(),
                    owner,
                }
                .into());
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(anyhow::anyhow!("cannot lock {}: {e}", path.display()));
            }
        }
        let owner = LockOwner {
            tool: tool.to_string(),
            pid: std::process::id(),
            host: hostname(),
            user: username(),
            since: crate::event::now_rfc3339(),
        };
        let text = serde_json::to_string(&owner)?;
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(text.as_bytes())?;
        file.flush()?;
        Ok(EnvLock {
            file,
            path: path.to_path_buf(),
            env: env.to_string(),
        })
    }

    pub fn env(&self) -> &str {
        &self.env
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for EnvLock {
    fn drop(&mut self) {
        // Clear the owner record; the kernel drops the lock with the handle.
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

/// Best-effort host name for records (no libc call needed on Linux).
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".to_string())
}

pub fn username() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_acquire_is_refused_with_owner_then_recovered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("env/lock");
        let first = EnvLock::acquire(&path, "production", "deploy_dhash").expect("first");
        let err = EnvLock::acquire(&path, "production", "backup_dhash").expect_err("busy");
        let busy = err.downcast_ref::<LockBusy>().expect("LockBusy");
        assert_eq!(
            busy.owner.as_ref().map(|o| o.tool.as_str()),
            Some("deploy_dhash")
        );
        assert!(err.to_string().contains("locked by another run"));
        assert_eq!(crate::exit::exit_for(&err), crate::exit::Exit::Locked);
        drop(first);
        EnvLock::acquire(&path, "production", "backup_dhash").expect("released");
    }
}
