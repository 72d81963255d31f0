//! The entry helper every `main.rs` calls: runs the tool, prints the error
//! chain (redacted) on stderr and turns the result into the exit code.

use std::process::ExitCode;

use crate::exit::{exit_for, Exit};

pub fn main_entry(tool: &str, run: impl FnOnce() -> anyhow::Result<Exit>) -> ExitCode {
    match run() {
        Ok(exit) => ExitCode::from(exit.code()),
        Err(err) => {
            let exit = exit_for(&err);
            let text = crate::redact::global().redact(&format!("{err:#}"));
            eprintln!("{tool}: error: {text}");
            ExitCode::from(exit.code())
        }
    }
}
