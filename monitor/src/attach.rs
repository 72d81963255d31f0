//! Attaching to the running watch of an environment: a second
//! `monitor_dhash` never evaluates or rolls back; it follows the watcher's
//! events file (from its start) on stdout and its human log on stderr, and
//! ends with the watcher's result.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use gates_core::config::EnvConfig;
use gates_core::watch::{self, WatchInfo};
use gates_core::{Emitter, Exit, Level};
use serde_json::{json, Value};

use crate::exit_for_result;

/// Reads whole new lines of a growing file.
struct Follower {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl Follower {
    fn new(path: &Path) -> Follower {
        Follower {
            path: path.to_path_buf(),
            offset: 0,
            partial: String::new(),
        }
    }

    /// The complete lines appended since the last call (none when the file
    /// does not exist yet or cannot be read).
    fn lines(&mut self) -> Vec<String> {
        let Ok(mut f) = File::open(&self.path) else {
            return Vec::new();
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut bytes = Vec::new();
        if f.read_to_end(&mut bytes).is_err() {
            return Vec::new();
        }
        self.offset += bytes.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        let mut out = Vec::new();
        while let Some(pos) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=pos).collect();
            out.push(line.trim_end_matches(['\n', '\r']).to_string());
        }
        out
    }
}

/// Follows `info`'s watch until its `monitor.completed`; returns its exit.
pub fn follow(env: &EnvConfig, info: &WatchInfo, em: &Emitter) -> anyhow::Result<Exit> {
    let release = info.release.as_deref().unwrap_or("the current release");
    let msg = format!(
        "a watch of {release} is already running (pid {}, window until {}): attaching to it; \
         this command only follows it and never rolls back. Its events: {}; its log: {}",
        info.pid,
        info.window_end,
        info.events.display(),
        info.log.display()
    );
    em.human(&msg);
    em.emit(
        "monitor.attached",
        Level::Info,
        msg,
        json!({"pid": info.pid, "release": info.release, "window_end": info.window_end,
               "events": info.events, "log": info.log, "detached": info.detached}),
    );
    let mut events = Follower::new(&info.events);
    let mut log = Follower::new(&info.log);
    let mut gone_once = false;
    loop {
        let mut result: Option<String> = None;
        for line in events.lines() {
            if line.trim().is_empty() {
                continue;
            }
            em.forward(&line);
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                // The file of a continued window also holds the summary of
                // the run that was interrupted before: only this watcher's counts.
                if v["event"] == "monitor.completed" && v["pid"] == json!(info.pid) {
                    result = v["result"].as_str().map(str::to_string);
                }
            }
        }
        for line in log.lines() {
            eprintln!("{line}");
        }
        if let Some(r) = result {
            // The watcher writes its last log line right after the event.
            std::thread::sleep(Duration::from_millis(200));
            for line in log.lines() {
                eprintln!("{line}");
            }
            let exit = exit_for_result(&r);
            em.human(&format!(
                "the watch (pid {}) ended: {r} (exit {})",
                info.pid,
                exit.code()
            ));
            return Ok(exit);
        }
        let alive = watch::is_held(env)? && crate::tee::pid_alive(info.pid);
        if !alive {
            // Read once more: its last lines may have landed just before it let go.
            if gone_once {
                let msg = format!(
                    "the watcher (pid {}) ended without a result (killed?); run \
                     `monitor_dhash --env {}` again to continue its window",
                    info.pid, env.name
                );
                em.emit(
                    "monitor.watcher-lost",
                    Level::Error,
                    msg.clone(),
                    json!({"pid": info.pid, "release": info.release, "events": info.events}),
                );
                return Ok(Exit::Failed);
            }
            gone_once = true;
            continue;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
