//! `validate_logging --env ENV [--threads N] [--lines N] [--verbose]`

use std::process::ExitCode;

use crate::logging::{self, LoggingOptions};
use clap::Parser;
use gates_core::exit::EXIT_CODES_HELP;
use gates_core::project::Project;
use gates_core::{Emitter, Exit, ToolError};

/// Validates an environment's logs: no unredacted secret (the values of
/// SLACK_WEBHOOK, *PASSWORD*, *TOKEN*, ... from the environment, or URL
/// credentials) in the log folder, the notification fallback file, the
/// notifications folder, the ledger or the service log; every *.jsonl line a
/// JSON object; and concurrent writers to one log never interleaving partial
/// lines (a self-test). Each finding names file and line (never the secret).
#[derive(Parser, Debug)]
#[command(name = "validate_logging", version, after_help = EXIT_CODES_HELP)]
pub struct Args {
    /// The environment (from environments.json), e.g. staging or production.
    #[arg(long)]
    env: String,
    /// Writer threads of the concurrency self-test.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    threads: u16,
    /// Lines each writer appends in the concurrency self-test.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    lines: u32,
    /// Echo debug events (each file scanned) on stderr.
    #[arg(long)]
    verbose: bool,
}

fn run(args: Args) -> anyhow::Result<Exit> {
    let em = Emitter::stdout("validate_logging", &args.env, args.verbose);
    gates_core::event::pump_stdin(&em, |_| {});
    let project = Project::discover()?;
    let env = project.env(&args.env)?;
    let opts = LoggingOptions {
        threads: args.threads.into(),
        lines_per_thread: args.lines as usize,
    };
    let report = logging::validate(env, &project.root, &opts, &em)?;
    if report.passed() {
        return Ok(Exit::Ok);
    }
    let n = report.findings.len();
    let shown: Vec<String> = report
        .findings
        .iter()
        .take(5)
        .map(|f| format!("{}: {}", f.location(&project.root), f.detail))
        .collect();
    let more = if n > shown.len() {
        format!("; and {} more", n - shown.len())
    } else {
        String::new()
    };
    Err(ToolError::new(
        Exit::Failed,
        anyhow::anyhow!("{n} logging finding(s): {}{more}", shown.join("; ")),
    )
    .into())
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    gates_core::cli::main_entry("validate_logging", || run(args))
}
