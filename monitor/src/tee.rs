//! Where the monitor's events go: stdout (for the pipeline) and the watch's
//! events file (for attached monitors, and for a detached watcher whose
//! stdout is /dev/null), with the human echo on stderr. Plus leaving the
//! terminal for `--detach`.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context;

/// Lines kept for the events file until it is known (the upstream events
/// forwarded before the watch starts); beyond this they are not kept.
const PENDING_MAX: usize = 10_000;

struct Inner {
    tool: String,
    verbose: bool,
    echo: bool,
    buf: Vec<u8>,
    stdout_open: bool,
    file: Option<File>,
    file_failed: bool,
    pending: Option<Vec<String>>,
}

/// The shared sink an [`gates_core::Emitter`] writes to (see [`Tee::writer`]).
#[derive(Clone)]
pub struct Tee {
    inner: Arc<Mutex<Inner>>,
}

impl Tee {
    pub fn new(tool: &str, verbose: bool) -> Tee {
        Tee {
            inner: Arc::new(Mutex::new(Inner {
                tool: tool.to_string(),
                verbose,
                echo: true,
                buf: Vec::new(),
                stdout_open: true,
                file: None,
                file_failed: false,
                pending: Some(Vec::new()),
            })),
        }
    }

    fn lock(&self) -> Option<MutexGuard<'_, Inner>> {
        self.inner.lock().ok()
    }

    /// A writer for `Emitter::to_writer`.
    pub fn writer(&self) -> TeeWriter {
        TeeWriter { tee: self.clone() }
    }

    /// From now on every event also goes to `path` (appended), starting
    /// with the lines written so far.
    pub fn set_file(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let Some(mut inner) = self.lock() else {
            anyhow::bail!("the event writer is poisoned");
        };
        for line in inner.pending.take().unwrap_or_default() {
            writeln!(f, "{line}").with_context(|| format!("writing {}", path.display()))?;
        }
        inner.file = Some(f);
        Ok(())
    }

    /// No events file for this run (an attached monitor): forget what was kept.
    pub fn no_file(&self) {
        if let Some(mut inner) = self.lock() {
            inner.pending = None;
        }
    }

    /// Whether events are echoed as human lines on stderr (an attached
    /// monitor prints the watcher's log there instead).
    pub fn set_echo(&self, echo: bool) {
        if let Some(mut inner) = self.lock() {
            inner.echo = echo;
        }
    }
}

/// The `Write` end of a [`Tee`]: whole lines go to stdout, the events file
/// and the echo. A closed stdout (`| head`) stops stdout only: the events
/// file, which attached monitors follow, goes on.
pub struct TeeWriter {
    tee: Tee,
}

impl Write for TeeWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let Some(mut inner) = self.tee.lock() else {
            return Ok(data.len());
        };
        inner.buf.extend_from_slice(data);
        while let Some(pos) = inner.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = inner.buf.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line[..line.len() - 1]).to_string();
            inner.line(&line);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Inner {
    fn line(&mut self, line: &str) {
        if self.stdout_open {
            let mut out = io::stdout().lock();
            let r = writeln!(out, "{line}").and_then(|_| out.flush());
            if let Err(e) = r {
                if e.kind() != io::ErrorKind::BrokenPipe {
                    eprintln!(
                        "{}: stdout: {e}; events go on to the events file",
                        self.tool
                    );
                }
                self.stdout_open = false;
            }
        }
        if let Some(f) = self.file.as_mut() {
            if let Err(e) = writeln!(f, "{line}") {
                if !self.file_failed {
                    eprintln!("{}: cannot write the events file: {e}", self.tool);
                    self.file_failed = true;
                }
            }
        } else if let Some(p) = self.pending.as_mut() {
            if p.len() < PENDING_MAX {
                p.push(line.to_string());
            }
        }
        if self.echo {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                let level = v["level"].as_str().unwrap_or("info");
                if level != "debug" || self.verbose {
                    eprintln!(
                        "{}: [{level}] {}: {}",
                        self.tool,
                        v["event"].as_str().unwrap_or("?"),
                        v["msg"].as_str().unwrap_or("")
                    );
                }
            }
        }
    }
}

/// Whether SIGHUP is ignored (started under `nohup`), read from
/// `/proc/self/status` (Linux; false elsewhere).
pub fn sighup_ignored() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("SigIgn:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .is_some_and(|mask| mask & 1 == 1)
}

/// `--detach`: a new session without a controlling terminal (a closed
/// terminal cannot signal it), and SIGHUP blocked, as `nohup` would (the
/// signal handler installed later for SIGINT/SIGTERM would otherwise catch
/// SIGHUP too). Called before any thread starts, so every thread inherits
/// the mask. Failures are said on stderr, never fatal: the watch matters more.
pub fn leave_terminal(new_session: bool) {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal};
    if new_session {
        if let Err(e) = nix::unistd::setsid() {
            // EPERM: already a process-group leader (started by a shell's job control).
            if e != nix::errno::Errno::EPERM {
                eprintln!("monitor_dhash: setsid: {e}");
            }
        }
    }
    let mut set = SigSet::empty();
    set.add(Signal::SIGHUP);
    if let Err(e) = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None) {
        eprintln!("monitor_dhash: cannot block SIGHUP: {e}");
    }
}

/// Whether process `pid` exists.
pub fn pid_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None) {
        Ok(()) => true,
        Err(e) => e == nix::errno::Errno::EPERM,
    }
}
