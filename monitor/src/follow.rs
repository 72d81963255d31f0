//! `monitor_dhash --env E --follow`: the operator's dashboard of seed 004
//! for the running watch of E. It reads the watcher's events file (named in
//! watch.json) from its start and shows each gate's state and figure against
//! its threshold, the time left in the window and the last samples. On a
//! terminal it redraws one screen in place; otherwise it prints one plain
//! line per thing that happened, for logs and pipes. It never evaluates or
//! rolls back, and exits with the watch's result.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use gates_core::config::EnvConfig;
use gates_core::watch::{self, WatchInfo};
use gates_core::Exit;
use serde_json::Value;

use crate::exit_for_result;

/// How long `--follow` waits for a watch to start (a deploy starts its
/// watcher a moment after it reports).
const WAIT_FOR_WATCH: Duration = Duration::from_secs(10);
/// How often the events file is read and, on a terminal, the screen redrawn.
const TICK: Duration = Duration::from_millis(250);
/// Samples listed under the gates.
const LAST_SAMPLES: usize = 5;

/// Reads the new complete lines of a growing file.
struct Tail {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl Tail {
    fn new(path: &Path) -> Tail {
        Tail {
            path: path.to_path_buf(),
            offset: 0,
            partial: String::new(),
        }
    }

    fn lines(&mut self) -> Vec<String> {
        let mut bytes = Vec::new();
        let read = File::open(&self.path).and_then(|mut f| {
            f.seek(SeekFrom::Start(self.offset))?;
            f.read_to_end(&mut bytes)
        });
        if read.is_err() {
            return Vec::new();
        }
        self.offset += bytes.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        let mut out = Vec::new();
        while let Some(pos) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=pos).collect();
            out.push(line.trim_end().to_string());
        }
        out
    }
}

/// A gate as last decided.
#[derive(Debug, Clone, Default)]
struct GateView {
    status: String,
    value: Option<f64>,
    threshold: Option<f64>,
    unit: String,
    action: String,
}

/// One poll of the watcher: its time, the health answer, each gate's figure.
#[derive(Debug, Clone)]
struct SampleView {
    ts: String,
    health: String,
    figures: Vec<String>,
}

/// What the dashboard knows of the watch, from its events.
#[derive(Debug, Default)]
pub struct Board {
    release: Option<String>,
    window_end: Option<DateTime<Utc>>,
    gates: BTreeMap<String, GateView>,
    samples: VecDeque<SampleView>,
    notes: Vec<String>,
    result: Option<String>,
}

fn short_time(ts: &str) -> &str {
    // 2026-12-02T07:31:11.393Z -> 07:31:11
    ts.get(11..19).unwrap_or(ts)
}

fn figure(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"))
}

impl Board {
    /// Takes in one event of the watcher (`pid`); returns the plain line it
    /// is worth, if any.
    pub fn apply(&mut self, e: &Value, pid: u32) -> Option<String> {
        let event = e["event"].as_str().unwrap_or_default();
        let ts = e["ts"].as_str().unwrap_or_default();
        match event {
            "monitor.started" => self.started(e),
            "monitor.sample" => {
                self.samples.push_back(SampleView {
                    ts: ts.to_string(),
                    health: e["health"].as_str().unwrap_or("?").to_string(),
                    figures: Vec::new(),
                });
                while self.samples.len() > LAST_SAMPLES {
                    self.samples.pop_front();
                }
                None
            }
            // The summary of an interrupted earlier run of a continued window is not this one's.
            "monitor.completed" if e["pid"] == pid => {
                self.result = e["result"].as_str().map(str::to_string);
                Some(format!(
                    "{} watch ended: {}",
                    short_time(ts),
                    self.result.as_deref().unwrap_or("?")
                ))
            }
            ev if ev.starts_with("gate.") => Some(self.decision(e)),
            ev if ev.starts_with("rollback.") || ev == "incident.created" => {
                let line = format!(
                    "{} {ev}: {}",
                    short_time(ts),
                    e["msg"].as_str().unwrap_or("")
                );
                self.notes.push(line.clone());
                Some(line)
            }
            _ => None,
        }
    }

    fn started(&mut self, e: &Value) -> Option<String> {
        self.release = e["release"].as_str().map(str::to_string);
        self.window_end = e["window_end"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        for g in e["gates"].as_array().into_iter().flatten() {
            let Some(name) = g["gate"].as_str() else {
                continue;
            };
            self.gates.insert(
                name.to_string(),
                GateView {
                    status: "waiting".to_string(),
                    value: None,
                    threshold: g["threshold"].as_f64(),
                    unit: g["unit"].as_str().unwrap_or_default().to_string(),
                    action: g["action"].as_str().unwrap_or_default().to_string(),
                },
            );
        }
        Some(format!(
            "watching {} until {}",
            self.release.as_deref().unwrap_or("the current release"),
            e["window_end"].as_str().unwrap_or("?")
        ))
    }

    /// A gate decision: the gate's view, the sample's figures, a plain line.
    fn decision(&mut self, e: &Value) -> String {
        let name = e["gate"].as_str().unwrap_or("?").to_string();
        let g = self.gates.entry(name.clone()).or_default();
        g.status = e["status"].as_str().unwrap_or("?").to_string();
        g.value = e["value"].as_f64();
        g.threshold = e["threshold"].as_f64().or(g.threshold);
        if let Some(u) = e["unit"].as_str() {
            g.unit = u.to_string();
        }
        if let Some(a) = e["action"].as_str() {
            g.action = a.to_string();
        }
        let shown = format!("{name}={} {}", figure(g.value), g.unit);
        if let Some(s) = self.samples.back_mut() {
            s.figures.push(shown.trim_end().to_string());
        }
        format!(
            "{} {name} {} {} {} (threshold {} {}, {})",
            short_time(e["sample_ts"].as_str().unwrap_or_default()),
            g.status,
            figure(g.value),
            g.unit,
            figure(g.threshold),
            g.unit,
            g.action
        )
    }

    /// The whole screen at `now`.
    pub fn frame(&self, env: &str, now: DateTime<Utc>) -> String {
        let left = match (&self.result, self.window_end) {
            (Some(r), _) => format!("ended: {r}"),
            (None, Some(end)) => {
                let s = (end - now).num_seconds().max(0);
                format!("{}m{:02}s left in the window", s / 60, s % 60)
            }
            (None, None) => "window not started".to_string(),
        };
        let mut out = format!(
            "dhash watch of {} on {env} - {left}\n\n{:<28} {:<10} {:>12} {:>12}  {:<8} action\n",
            self.release.as_deref().unwrap_or("?"),
            "gate",
            "state",
            "figure",
            "threshold",
            "unit"
        );
        for (name, g) in &self.gates {
            out.push_str(&format!(
                "{name:<28} {:<10} {:>12} {:>12}  {:<8} {}\n",
                g.status,
                figure(g.value),
                figure(g.threshold),
                g.unit,
                g.action
            ));
        }
        out.push_str("\nlast samples (UTC)\n");
        for s in self.samples.iter().rev() {
            out.push_str(&format!(
                "  {} health {:<6} {}\n",
                short_time(&s.ts),
                s.health,
                s.figures.join("  ")
            ));
        }
        for n in self.notes.iter().rev().take(4).rev() {
            out.push_str(&format!("{n}\n"));
        }
        out
    }
}

/// Waits (bounded) for the running watch of `env`.
fn wait_for_watch(env: &EnvConfig) -> anyhow::Result<WatchInfo> {
    let start = Instant::now();
    loop {
        if let Some(info) = watch::active(env)? {
            return Ok(info);
        }
        if start.elapsed() >= WAIT_FOR_WATCH {
            anyhow::bail!(
                "no watch of {} is running (nothing holds {} after {:?}); start one with \
                 `monitor_dhash --env {}` or deploy_dhash",
                env.name,
                watch::lock_path(env).display(),
                WAIT_FOR_WATCH,
                env.name
            );
        }
        std::thread::sleep(TICK);
    }
}

/// Follows the running watch of `env` to its end; its result as the exit.
pub fn follow(env: &EnvConfig) -> anyhow::Result<Exit> {
    let info = wait_for_watch(env)?;
    let tty = std::io::stdout().is_terminal();
    let mut out = std::io::stdout().lock();
    if !tty {
        writeln!(
            out,
            "following the watch of {} (pid {}): {}",
            env.name,
            info.pid,
            info.events.display()
        )?;
    }
    let mut board = Board::default();
    let mut tail = Tail::new(&info.events);
    let mut gone_once = false;
    let mut shown = String::new();
    loop {
        for line in tail.lines() {
            let Ok(e) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if let Some(plain) = board.apply(&e, info.pid) {
                if !tty {
                    writeln!(out, "{plain}")?;
                }
            }
        }
        if tty {
            // Cursor home, clear to the end: the new frame replaces the old
            // in place; only when it changed (at least each second, the time
            // left), so a slow terminal does not flicker.
            let frame = board.frame(&env.name, Utc::now());
            if frame != shown {
                write!(out, "\x1b[H\x1b[J{frame}")?;
                shown = frame;
            }
        }
        out.flush()?;
        if let Some(r) = &board.result {
            return Ok(exit_for_result(r));
        }
        let alive = watch::is_held(env)? && crate::tee::pid_alive(info.pid);
        if !alive {
            // Read once more: its last lines may have landed just before it let go.
            if gone_once {
                anyhow::bail!(
                    "the watcher (pid {}) ended without a result (killed?); run \
                     `monitor_dhash --env {}` to continue its window",
                    info.pid,
                    env.name
                );
            }
            gone_once = true;
            continue;
        }
        std::thread::sleep(TICK);
    }
}
