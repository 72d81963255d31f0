//! deploy_dhash: install a release bundle into an environment with an atomic
//! switch, migrations, restart and a health wait (switching back on failure).
//! The command line lives in `dhash_deploy::cli`.

use std::process::ExitCode;

use clap::Parser;
use dhash_deploy::cli::Args;

fn main() -> ExitCode {
    let opts = Args::parse().into_options();
    gates_core::cli::main_entry(dhash_deploy::TOOL, || dhash_deploy::run_tool(&opts))
}
