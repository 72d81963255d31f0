//! The progress display of long work (backup, verify, restore, bundle
//! builds, replay): bytes done, rate and time left, drawn on stderr, and only
//! when stderr is a terminal. Through a pipe or into a log the bar is hidden,
//! so stdout's JSON lines and the human log stay exactly as they were.
//! `DHASH_PROGRESS=0` hides it on a terminal too.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Whether a progress display is drawn: stderr is a terminal and
/// `DHASH_PROGRESS` is not `0`.
pub fn enabled() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("DHASH_PROGRESS").is_none_or(|v| v != "0")
}

/// A byte-counting bar for `what` (e.g. "backup") of `total` bytes; hidden
/// unless [`enabled`]. `inc` it by the bytes done; `finish` clears it.
pub fn bytes(what: &str, total: u64) -> Bar {
    if !enabled() {
        return Bar(ProgressBar::hidden());
    }
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    // The template is a constant: a bad one is a bug found by the test.
    let style = ProgressStyle::with_template(
        "{prefix} [{bar:28}] {bytes}/{total_bytes} {bytes_per_sec} {eta} left {wide_msg}",
    )
    .expect("the progress template parses")
    .progress_chars("=> ");
    pb.set_style(style);
    pb.set_prefix(what.to_string());
    // Drawn at once, so even short work shows what it is doing.
    pb.tick();
    Bar(pb)
}

/// A progress bar that is cleared from the terminal when dropped (an error
/// path never leaves a half bar above the error message).
pub struct Bar(ProgressBar);

impl Bar {
    /// A bar that draws nothing (for callers that decide themselves).
    pub fn hidden() -> Bar {
        Bar(ProgressBar::hidden())
    }

    pub fn inc(&self, n: u64) {
        self.0.inc(n);
    }

    pub fn set_position(&self, n: u64) {
        self.0.set_position(n);
    }

    /// What is being worked on now (a file name), after the figures.
    pub fn set_message(&self, msg: impl Into<String>) {
        self.0.set_message(msg.into());
    }

    /// Done: the bar is removed, the human lines that follow stand alone.
    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if !self.0.is_finished() {
            self.0.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_bar_counts_and_finishes() {
        let bar = Bar::hidden();
        bar.inc(10);
        bar.set_position(20);
        bar.set_message("x");
        bar.finish();
        assert!(bar.0.is_finished());
        assert_eq!(bar.0.position(), 20);
    }
}
