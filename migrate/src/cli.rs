//! migrate_dhash: versioned database migrations of a dhash environment.

use std::process::ExitCode;

use crate::release::Want;
use crate::{Direction, ToolOptions};
use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Kind {
    Forward,
    Backward,
}

fn after_help() -> String {
    format!(
        "Migrations come from a release's migrations/NNNN_name.up.sql and .down.sql, the
release being deployed, exactly as deploy_dhash picks it:
  (none)              the checkout's release: dist/dhash-v<version>-<commit>/ when built
                      for this commit, else built now (cargo build of dhash-service, then
                      dhash-service bundle; a dry run or --status builds it into a
                      temporary folder and leaves dist/ as it is)
  --tag TAG           dist/dhash-<TAG>/, else built from the git tag TAG's tree
  --release TAG|DIR   as --tag, or a bundle/release folder, or a migrations folder
  --installed         the environment's current release (<install_root>/current)
The choice is printed on stderr.

Refusals, before anything runs (exit 1): a pending rollback journal
(<install_root>/rollback.journal: finish it with rollback_dhash first); --type backward
that would leave the schema below the schema_version of the deployed release (it would
fail to hash) unless --force.

Each migration runs in one transaction with its schema_migrations row. An applied
migration whose .up.sql changed since is refused; backward refuses when a
.down.sql is missing. Both refusals happen before anything runs.
--type backward without --target reverts one step (the newest applied version).
--dry-run and --status are read-only (no lock taken, no database created).

Events (stdout, JSON lines): migrate.planned, migrate.applied / migrate.reverted
(per version), migrate.failed, migrate.completed; migrate.status (per migration,
with --status). Human progress on stderr, so
  migrate_dhash --dry-run --env staging > migrate-dryrun.log 2>&1
gives a readable log with the SQL of every step.

{}",
        gates_core::exit::EXIT_CODES_HELP
    )
}

/// Applies or reverts versioned SQLite migrations from a release bundle.
#[derive(Debug, Parser)]
#[command(name = "migrate_dhash", version, after_help = after_help())]
pub struct Args {
    /// Environment (from environments.json), e.g. staging or production.
    #[arg(long)]
    env: String,
    /// Direction.
    #[arg(long = "type", value_enum, default_value = "forward")]
    kind: Kind,
    /// Forward: apply up to this version. Backward: revert every version above it
    /// (default: one step back).
    #[arg(long, value_name = "VERSION", value_parser = clap::value_parser!(i64).range(0..))]
    target: Option<i64>,
    /// List what would be applied or reverted, with the SQL; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// More detail on stderr (the SQL of each step, paths).
    #[arg(long)]
    verbose: bool,
    /// List applied and pending migrations as JSON lines (migrate.status); change nothing.
    #[arg(long, conflicts_with_all = ["dry_run", "target"])]
    status: bool,
    /// Where the migrations come from: a release tag (as --tag) or a folder.
    #[arg(long, value_name = "TAG|DIR", conflicts_with_all = ["tag", "installed"])]
    release: Option<String>,
    /// The release of TAG: dist/dhash-<TAG>/, else built from the git tag TAG.
    #[arg(long, value_name = "TAG", conflicts_with = "installed")]
    tag: Option<String>,
    /// The environment's installed (current) release instead of the checkout's.
    #[arg(long)]
    installed: bool,
    /// Revert below the schema version the deployed release needs, knowingly.
    #[arg(long)]
    force: bool,
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    let opts = ToolOptions {
        env: args.env,
        direction: match args.kind {
            Kind::Forward => Direction::Forward,
            Kind::Backward => Direction::Backward,
        },
        target: args.target,
        dry_run: args.dry_run,
        verbose: args.verbose,
        status: args.status,
        want: match (args.release, args.tag, args.installed) {
            (Some(r), _, _) => Want::Release(r),
            (None, Some(t), _) => Want::Tag(t),
            (None, None, true) => Want::Installed,
            (None, None, false) => Want::Checkout,
        },
        force: args.force,
    };
    gates_core::cli::main_entry(crate::TOOL, || crate::run_tool(&opts))
}
