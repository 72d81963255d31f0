//! rollback_dhash: verify a backup, restore it, prove health (N consecutive OK checks) and smoke.
//! See `dhash_rollback::cli` and `rollback_dhash --help`.

use clap::Parser;
use dhash_rollback::cli::{run, Args};
use dhash_rollback::TOOL;

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    gates_core::cli::main_entry(TOOL, || run(args))
}
