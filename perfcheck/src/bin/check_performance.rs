//! `check_performance ENV`: see the library docs (`dhash_perfcheck`).

use clap::Parser;
use dhash_perfcheck::{run, Args, TOOL};

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    gates_core::cli::main_entry(TOOL, || run(args))
}
