//! "Never the same alert twice within the quiet period": the keys of alerts
//! recently delivered, kept in a small JSON file under the environment's
//! `log_dir` (`notify_state.json`), rewritten atomically.
//!
//! Keys are stored as SHA-256 hex, so no message text (or anything secret in
//! it) lands in the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use gates_core::config::EnvConfig;
use gates_core::{Emitter, Level};
use serde_json::json;

use crate::Notification;

pub const STATE_FILE: &str = "notify_state.json";

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    #[serde(default)]
    version: u32,
    /// sha256(key) → when it was last delivered (Unix seconds).
    #[serde(default)]
    sent: BTreeMap<String, f64>,
}

pub fn state_path(env: &EnvConfig) -> PathBuf {
    env.log_dir.join(STATE_FILE)
}

pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn load(path: &Path) -> State {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// When `key` was delivered less than `quiet` ago: how long ago.
pub fn recently_sent(path: &Path, key: &str, quiet: Duration) -> Option<Duration> {
    if quiet.is_zero() {
        return None;
    }
    let at = *load(path).sent.get(&hash_key(key))?;
    let ago = now_secs() - at;
    (ago >= 0.0 && ago < quiet.as_secs_f64()).then(|| Duration::from_secs_f64(ago))
}

/// Records that `key` was delivered now; forgets entries older than `quiet`.
/// Concurrent notifiers (a monitor and a hand-run `notify`) serialise on a
/// lock file, so neither loses the other's key.
pub fn record(path: &Path, key: &str, quiet: Duration) -> anyhow::Result<()> {
    let _guard = lock(path)?;
    let mut state = load(path);
    let now = now_secs();
    let keep = quiet.as_secs_f64().max(1.0);
    state.sent.retain(|_, at| now - *at < keep);
    state.version = 1;
    state.sent.insert(hash_key(key), now);
    let bytes = serde_json::to_vec_pretty(&state)?;
    gates_core::fsutil::write_atomic(path, &bytes)
}

/// An exclusive lock on `<state>.lock`, held until the file is dropped.
fn lock(path: &Path) -> anyhow::Result<std::fs::File> {
    use anyhow::Context;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    file.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;
    Ok(file)
}

/// One notification's quiet period: its key (environment + dedup key), the
/// state file and how long the period lasts.
pub(crate) struct Quiet {
    key: Option<String>,
    state: PathBuf,
    period: Duration,
}

impl Quiet {
    /// No key (none given, or `--no-dedup`): always sent.
    pub fn new(env: &EnvConfig, n: &Notification, no_dedup: bool) -> Quiet {
        Quiet {
            key: n
                .dedup_key
                .as_deref()
                .filter(|_| !no_dedup)
                .map(|k| format!("{}|{k}", env.name)),
            state: state_path(env),
            period: env.notify.quiet_period,
        }
    }

    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// Sent within the quiet period: said (`notify.skipped`, reason duplicate).
    pub fn already_sent(&self, title: &str, level: Level, em: &Emitter) -> bool {
        let Some(k) = &self.key else {
            return false;
        };
        let Some(ago) = recently_sent(&self.state, k, self.period) else {
            return false;
        };
        em.emit(
            "notify.skipped",
            Level::Info,
            format!(
                "{title:?} already sent {} ago, within the quiet period of {}; not sent again",
                gates_core::duration::human(ago),
                gates_core::duration::human(self.period)
            ),
            json!({"reason": "duplicate", "title": title, "level": level,
                   "quiet_period_seconds": self.period.as_secs_f64()}),
        );
        true
    }

    /// Records a delivery; a failure is said, not fatal (the alert may then
    /// be sent again within the period).
    pub fn remember(&self, em: &Emitter) {
        let Some(k) = &self.key else {
            return;
        };
        if let Err(e) = record(&self.state, k, self.period) {
            em.human(&format!(
                "cannot record the alert in {} ({e:#}); it may be sent again within the quiet period",
                crate::record::show(&self.state)
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_within_quiet_period_only() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("logs").join(STATE_FILE);
        let q = Duration::from_secs(600);
        assert!(recently_sent(&p, "production|a", q).is_none());
        record(&p, "production|a", q).expect("record");
        assert!(recently_sent(&p, "production|a", q).is_some());
        assert!(recently_sent(&p, "production|b", q).is_none());
        assert!(recently_sent(&p, "production|a", Duration::ZERO).is_none());
        let text = std::fs::read_to_string(&p).expect("read");
        assert!(!text.contains("production|a"), "keys are hashed: {text}");
    }

    #[test]
    fn concurrent_records_keep_every_key() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join(STATE_FILE);
        let q = Duration::from_secs(600);
        std::thread::scope(|scope| {
            for t in 0..8 {
                let p = &p;
                scope.spawn(move || {
                    for i in 0..25 {
                        record(p, &format!("k{t}-{i}"), q).expect("record");
                    }
                });
            }
        });
        for t in 0..8 {
            for i in 0..25 {
                let key = format!("k{t}-{i}");
                assert!(recently_sent(&p, &key, q).is_some(), "{key} was lost");
            }
        }
    }
}
