//! `smoke_tests --env ENV [--quick | --post-deploy | --post-rollback] [--dry-run] [--verbose]`

use std::process::ExitCode;

use crate::{SmokeMode, SmokeOptions};
use clap::Parser;
use gates_core::exit::EXIT_CODES_HELP;
use gates_core::project::Project;
use gates_core::{Emitter, Exit, ToolError};

/// Smoke tests against an environment's running dhash service: health, the
/// metrics schema, the queue status and the golden images of the deployed
/// release. One line per check in monitor_logs/smoke_tests_<UTC timestamp>.log;
/// JSON-lines events on stdout (smoke.check per check, then smoke.passed or
/// smoke.failed).
#[derive(Parser, Debug)]
#[command(name = "smoke_tests", version, after_help = EXIT_CODES_HELP)]
pub struct Args {
    /// The environment (from environments.json), e.g. staging or production.
    #[arg(long)]
    env: String,
    /// Health only.
    #[arg(long, group = "mode")]
    quick: bool,
    /// Every check (after a deploy).
    #[arg(long, group = "mode")]
    post_deploy: bool,
    /// 3 consecutive OK health checks first, then every check (after a rollback).
    #[arg(long, group = "mode")]
    post_rollback: bool,
    /// List the checks that would run; contact nothing, write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Echo debug events (each health check) on stderr.
    #[arg(long)]
    verbose: bool,
}

fn run(args: Args) -> anyhow::Result<Exit> {
    let em = Emitter::stdout("smoke_tests", &args.env, args.verbose);
    gates_core::event::pump_stdin(&em, |_| {});
    let project = Project::discover()?;
    let env = project.env(&args.env)?;
    let mode = if args.quick {
        SmokeMode::Quick
    } else if args.post_deploy {
        SmokeMode::PostDeploy
    } else if args.post_rollback {
        SmokeMode::PostRollback
    } else {
        SmokeMode::Full
    };
    let report = crate::run(
        &project,
        env,
        &SmokeOptions {
            mode,
            dry_run: args.dry_run,
        },
        &em,
    )?;
    if report.passed {
        return Ok(Exit::Ok);
    }
    let failed: Vec<String> = report
        .failed()
        .map(|c| format!("{} ({})", c.name, c.detail))
        .collect();
    let log = report
        .log
        .as_ref()
        .map(|l| format!("; log: {}", l.display()))
        .unwrap_or_default();
    Err(ToolError::new(
        Exit::Failed,
        anyhow::anyhow!(
            "smoke check failed on {}: {}{log}",
            env.name,
            failed.join("; ")
        ),
    )
    .into())
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    gates_core::cli::main_entry("smoke_tests", || run(args))
}
