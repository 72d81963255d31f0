//! `deploy-notify start|success|failure|rollback --env ENV`: deploy lifecycle
//! notifications. See `deploy-notify --help`.

use clap::Parser;
use dhash_notify::cli::{run_deploy_notify, DeployNotifyArgs};

fn main() -> std::process::ExitCode {
    let args = DeployNotifyArgs::parse();
    gates_core::cli::main_entry("deploy-notify", || run_deploy_notify(args))
}
