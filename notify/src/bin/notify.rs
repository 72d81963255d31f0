//! `notify`: send a notification, or one per routed upstream event on stdin.
//! See the library docs (`dhash_notify`) and `notify --help`.

use clap::Parser;
use dhash_notify::cli::{run_notify, NotifyArgs};

fn main() -> std::process::ExitCode {
    let args = NotifyArgs::parse();
    gates_core::cli::main_entry("notify", || run_notify(args))
}
