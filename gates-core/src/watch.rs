//! One actor per environment window: the registry of the running watch.
//!
//! The watcher of an environment (`monitor_dhash`, foreground or
//! `--detach`ed by deploy) holds an OS file lock (`flock`) on
//! `<install_root>/watch.lock` for its whole life and publishes who it is in
//! `<install_root>/watch.json` ([`WatchInfo`]). The lock is the truth: a
//! watcher that dies (even by `kill -9`) releases it, so a `watch.json`
//! without a lock holder is stale and ignored.
//!
//! - A later monitor of the same release attaches to the running watch
//!   (follows its events and log) instead of starting a second evaluator.
//! - A deploy or a manual rollback that replaces the watched release calls
//!   [`supersede`] right after switching: the watcher is told why (a marker
//!   file, `<install_root>/watch.superseded`), sent SIGTERM, and ends with
//!   the result `superseded` (exit 6). A watcher also checks at every poll,
//!   and under the environment lock before any rollback, that `current` is
//!   still its release.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::config::EnvConfig;
use crate::fsutil;

/// The registry record under the install root.
pub const WATCH_FILE: &str = "watch.json";
/// The lock the watcher holds for its whole life.
pub const WATCH_LOCK: &str = "watch.lock";
/// Why a watch was superseded, written before it is signalled.
pub const SUPERSEDED_FILE: &str = "watch.superseded";
/// How long [`supersede`] waits for the watcher to end.
pub const SUPERSEDE_WAIT: Duration = Duration::from_secs(15);

/// `<install_root>/watch.json`: the running watch of an environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchInfo {
    pub pid: u32,
    pub env: String,
    /// The release it watches (None: nothing was deployed).
    pub release: Option<String>,
    /// RFC 3339: when its window started (a continued window keeps its start).
    pub started_at: String,
    /// RFC 3339: when its window ends.
    pub window_end: String,
    /// Its human log.
    pub log: PathBuf,
    /// Its events, one JSON object per line, from `monitor.started` to `monitor.completed`.
    pub events: PathBuf,
    /// Started with `--detach` (by deploy).
    #[serde(default)]
    pub detached: bool,
}

/// `<install_root>/watch.superseded`: tells watcher `pid` why it must stop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Superseded {
    /// The watcher this is for.
    pub pid: u32,
    /// The release it watched.
    pub release: Option<String>,
    /// The release that replaced it (None: unknown or none).
    pub by_release: Option<String>,
    pub reason: String,
    pub ts: String,
}

pub fn lock_path(env: &EnvConfig) -> PathBuf {
    env.install_root.join(WATCH_LOCK)
}

pub fn info_path(env: &EnvConfig) -> PathBuf {
    env.install_root.join(WATCH_FILE)
}

pub fn superseded_path(env: &EnvConfig) -> PathBuf {
    env.install_root.join(SUPERSEDED_FILE)
}

/// Held by the running watcher for as long as it lives; dropping it removes
/// its `watch.json` (and an unread marker of its own) and releases the lock.
#[derive(Debug)]
pub struct WatchGuard {
    file: File,
    info_path: PathBuf,
    marker_path: PathBuf,
}

impl WatchGuard {
    /// Publishes (or updates) `watch.json`, atomically.
    pub fn publish(&self, info: &WatchInfo) -> anyhow::Result<()> {
        let text = serde_json::to_vec_pretty(info)?;
        fsutil::write_atomic(&self.info_path, &text)
            .with_context(|| format!("writing {}", self.info_path.display()))
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        let me = std::process::id();
        if read_json::<WatchInfo>(&self.info_path)
            .ok()
            .flatten()
            .is_some_and(|i| i.pid == me)
        {
            let _ = fs::remove_file(&self.info_path);
        }
        if read_json::<Superseded>(&self.marker_path)
            .ok()
            .flatten()
            .is_some_and(|m| m.pid == me)
        {
            let _ = fs::remove_file(&self.marker_path);
        }
        let _ = self.file.unlock();
    }
}

/// The result of [`claim`].
#[derive(Debug)]
pub enum Claim {
    /// This process is the environment's watcher now.
    Acquired(WatchGuard),
    /// Another live watcher holds the lock; its record when it has written one
    /// (a watcher that has just started may not have yet).
    Held(Option<WatchInfo>),
}

fn open_lock(env: &EnvConfig, create: bool) -> anyhow::Result<Option<File>> {
    let path = lock_path(env);
    if create {
        fs::create_dir_all(&env.install_root)
            .with_context(|| format!("creating {}", env.install_root.display()))?;
    }
    match OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(&path)
    {
        Ok(f) => Ok(Some(f)),
        Err(e) if !create && e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("cannot open {}: {e}", path.display())),
    }
}

/// Tries to become the environment's watcher, without waiting.
pub fn claim(env: &EnvConfig) -> anyhow::Result<Claim> {
    let Some(file) = open_lock(env, true)? else {
        anyhow::bail!("cannot create {}", lock_path(env).display());
    };
    match file.try_lock() {
        Ok(()) => Ok(Claim::Acquired(WatchGuard {
            file,
            info_path: info_path(env),
            marker_path: superseded_path(env),
        })),
        Err(fs::TryLockError::WouldBlock) => Ok(Claim::Held(read_info(env)?)),
        Err(fs::TryLockError::Error(e)) => Err(anyhow::anyhow!(
            "cannot lock {}: {e}",
            lock_path(env).display()
        )),
    }
}

/// Whether a live watcher holds the environment's watch lock.
pub fn is_held(env: &EnvConfig) -> anyhow::Result<bool> {
    let Some(file) = open_lock(env, false)? else {
        return Ok(false);
    };
    match file.try_lock() {
        Ok(()) => {
            let _ = file.unlock();
            Ok(false)
        }
        Err(fs::TryLockError::WouldBlock) => Ok(true),
        Err(fs::TryLockError::Error(e)) => Err(anyhow::anyhow!(
            "cannot lock {}: {e}",
            lock_path(env).display()
        )),
    }
}

/// `watch.json` as it is on disk (possibly stale: see [`active`]).
pub fn read_info(env: &EnvConfig) -> anyhow::Result<Option<WatchInfo>> {
    read_json(&info_path(env))
}

/// The running watch of `env`: its record, when a live watcher holds the
/// lock and has published it. A stale record of a dead watcher is `None`.
pub fn active(env: &EnvConfig) -> anyhow::Result<Option<WatchInfo>> {
    if !is_held(env)? {
        return Ok(None);
    }
    read_info(env)
}

/// The marker for watcher `pid`, if one was written (and removes it).
pub fn take_superseded(env: &EnvConfig, pid: u32) -> Option<Superseded> {
    let path = superseded_path(env);
    let m = read_json::<Superseded>(&path).ok().flatten()?;
    if m.pid != pid {
        return None;
    }
    let _ = fs::remove_file(&path);
    Some(m)
}

/// Ends the running watch of `env` when it watches another release than
/// `by_release` (the one a deploy or rollback just made current): writes the
/// marker saying why, sends the watcher SIGTERM, and waits up to
/// [`SUPERSEDE_WAIT`] for it to record `superseded` and release its lock.
/// Returns the watch that was told to stop (None: there was none, or it
/// already watches `by_release`). Call it right after switching `current`.
pub fn supersede(
    env: &EnvConfig,
    by_release: Option<&str>,
    reason: &str,
) -> anyhow::Result<Option<WatchInfo>> {
    let Some(info) = active(env)? else {
        return Ok(None);
    };
    if by_release.is_some() && info.release.as_deref() == by_release {
        return Ok(None);
    }
    if info.pid == std::process::id() {
        return Ok(None);
    }
    let marker = Superseded {
        pid: info.pid,
        release: info.release.clone(),
        by_release: by_release.map(str::to_string),
        reason: reason.to_string(),
        ts: crate::event::now_rfc3339(),
    };
    fsutil::write_atomic(&superseded_path(env), &serde_json::to_vec_pretty(&marker)?)
        .with_context(|| format!("writing {}", superseded_path(env).display()))?;
    signal_term(info.pid);
    let deadline = Instant::now() + SUPERSEDE_WAIT;
    while Instant::now() < deadline && is_held(env)? {
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(Some(info))
}

#[cfg(unix)]
fn signal_term(pid: u32) {
    if let Ok(raw) = i32::try_from(pid) {
        // The watcher may have just ended: ESRCH is fine.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(raw),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

#[cfg(not(unix))]
fn signal_term(_pid: u32) {
    // No signals: the watcher finds the marker at its next poll.
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<Option<T>> {
    match fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => Ok(None),
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .with_context(|| format!("{} is not valid", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_at(root: &Path) -> EnvConfig {
        // The shipped topology, with the install root moved into `root`.
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap_or(Path::new("."));
        let file = workspace.join(crate::project::TOPOLOGY_FILE);
        let topology = crate::config::Topology::load(&file)
            .unwrap_or_else(|e| panic!("the shipped topology loads: {e}"));
        let mut env = topology
            .environments
            .get("staging")
            .cloned()
            .unwrap_or_else(|| panic!("the shipped topology has staging"));
        env.install_root = root.to_path_buf();
        env
    }

    #[test]
    fn one_watcher_holds_the_window_and_a_dead_record_is_stale() {
        let dir = tempfile::tempdir().expect("tempdir");
        let env = env_at(dir.path());
        assert_eq!(active(&env).expect("active"), None);
        let Claim::Acquired(guard) = claim(&env).expect("claim") else {
            panic!("the first claim wins");
        };
        let info = WatchInfo {
            pid: std::process::id(),
            env: "staging".into(),
            release: Some("r1".into()),
            started_at: "2026-12-02T00:00:00Z".into(),
            window_end: "2026-12-02T01:00:00Z".into(),
            log: dir.path().join("log"),
            events: dir.path().join("events.jsonl"),
            detached: false,
        };
        guard.publish(&info).expect("publish");
        assert_eq!(active(&env).expect("active"), Some(info.clone()));
        match claim(&env).expect("second claim") {
            Claim::Held(Some(i)) => assert_eq!(i, info),
            other => panic!("held by the first: {other:?}"),
        }
        // Superseding a watch of the same release does nothing.
        assert_eq!(
            supersede(&env, Some("r1"), "same").expect("supersede"),
            None
        );
        drop(guard);
        assert!(
            !info_path(&env).exists(),
            "the record goes with its watcher"
        );
        assert_eq!(active(&env).expect("active"), None);
        // A record left by a dead watcher (no lock holder) is not active.
        fsutil::write_atomic(&info_path(&env), &serde_json::to_vec(&info).expect("json"))
            .expect("write");
        assert_eq!(active(&env).expect("active"), None);
        assert!(matches!(claim(&env).expect("claim"), Claim::Acquired(_)));
    }
}
