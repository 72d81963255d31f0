//! The deploy's human log: everything this process (and the children that
//! share its stderr, such as cargo) writes on stderr is also appended, line
//! by line, to the run's log (`gates_core::runlog::RunLog`), so `tail -f
//! logs/deploy_*.log` shows what the operator's terminal shows.
//!
//! stderr is swapped for a pipe; a thread copies each line to the original
//! stderr and to the log. Dropping the [`StderrTee`] puts the original
//! stderr back and waits (briefly) for the last lines to be copied.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context;
use gates_core::runlog::RunLog;

pub struct StderrTee {
    saved: OwnedFd,
    done: mpsc::Receiver<()>,
}

impl StderrTee {
    /// Starts copying stderr into `log`.
    pub fn start(log: RunLog) -> anyhow::Result<StderrTee> {
        // Every descriptor made here is close-on-exec (std's dup and pipe),
        // so no child (the service!) keeps the original stderr or the pipe
        // open; fd 2 itself (the pipe's write end after dup2) is inherited
        // as stderr is.
        let saved = std::io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .context("duplicating stderr")?;
        let mut terminal = File::from(saved.try_clone().context("duplicating stderr")?);
        let (read, write) = std::io::pipe().context("creating a pipe for the log")?;
        nix::unistd::dup2_stderr(&write).context("redirecting stderr")?;
        drop(write);
        let (tx, done) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(read);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let _ = terminal.write_all(&buf);
                        let _ = terminal.flush();
                        let line = String::from_utf8_lossy(&buf);
                        log.line(line.trim_end_matches(['\r', '\n']));
                    }
                }
            }
            let _ = tx.send(());
        });
        Ok(StderrTee { saved, done })
    }
}

impl Drop for StderrTee {
    fn drop(&mut self) {
        // The original stderr back: the pipe's last writer (fd 2) closes, the
        // copier reads to the end and stops.
        if nix::unistd::dup2_stderr(&self.saved).is_ok() {
            let _ = self.done.recv_timeout(Duration::from_secs(2));
        }
    }
}
