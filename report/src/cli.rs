//! The command line of `report_dhash`, public so that completions and man
//! pages can be generated from it (`clap::CommandFactory` on [`Args`]).
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use gates_core::exit::EXIT_CODES_HELP;

#[derive(Parser, Debug)]
#[command(
    name = "report_dhash",
    version,
    about = "The operation's key figures for one environment and period, from what the tools record \
             (the ledger, the watches' events files, the incident records): deployments and their \
             outcome, success rate, auto-rollbacks (per deployment, per week), MTTR from the violating \
             sample to the restored release's proven health (mean, median, worst, each incident), \
             violations per gate, time under watch, and the false-positive rate of rollbacks marked \
             unnecessary with `report_dhash mark`. JSON-lines events on stdout, a table on stderr.",
    after_help = EXIT_CODES_HELP,
    args_conflicts_with_subcommands = true
)]
pub struct Args {
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
    #[command(flatten)]
    pub report: ReportArgs,
}

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Environment (from environments.json), e.g. production or staging.
    #[arg(long)]
    pub env: Option<String>,
    /// Start of the period: a duration back from --until (30d, 12h), a date or an RFC 3339 time.
    #[arg(long, value_name = "WHEN", default_value = crate::DEFAULT_SINCE)]
    pub since: String,
    /// End of the period (default: now): a duration back from now, a date or an RFC 3339 time.
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,
    /// Print the table on stdout instead of the JSON-lines events.
    #[arg(long, conflicts_with = "csv")]
    pub table: bool,
    /// Print the figures as CSV on stdout instead of the JSON-lines events.
    #[arg(long)]
    pub csv: bool,
    /// Also write the figures to PATH in Prometheus' text format (atomically), for
    /// node_exporter's textfile collector.
    #[arg(long, value_name = "PATH")]
    pub prometheus_textfile: Option<PathBuf>,
    /// Also write the period's figures to PATH as one self-contained HTML page with charts:
    /// deployments and rollbacks per week, MTTR per incident, each gate's worst figure per release.
    #[arg(long, value_name = "PATH")]
    pub html: Option<PathBuf>,
    /// No table on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Record an operator's verdict on a rollback (a new ledger record; the latest verdict counts).
    Mark(MarkArgs),
    /// Write one self-contained HTML page for one watch: a chart per gate with its threshold,
    /// violations, the rollback and the return to health (default: the newest watch).
    Window(WindowArgs),
}

#[derive(clap::Args, Debug)]
pub struct WindowArgs {
    #[arg(long)]
    pub env: String,
    /// The watched release (its id as the ledger records it).
    #[arg(long, conflicts_with = "recording")]
    pub release: Option<String>,
    /// The watch that made this telemetry recording.
    #[arg(long, value_name = "FILE")]
    pub recording: Option<PathBuf>,
    /// Where to write the page (default: window_<env>_<release>.html in the monitor's log folder).
    #[arg(long, value_name = "PATH")]
    pub out: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct MarkArgs {
    #[arg(long)]
    pub env: String,
    /// The rollback: its time as the report lists it, or a unique prefix of that time.
    #[arg(long, value_name = "ID")]
    pub rollback: String,
    /// The rollback was not needed (a false positive).
    #[arg(
        long,
        conflicts_with = "necessary",
        required_unless_present = "necessary"
    )]
    pub unnecessary: bool,
    /// The rollback was needed (withdraws an earlier `--unnecessary`).
    #[arg(long)]
    pub necessary: bool,
    /// Why (recorded).
    #[arg(long)]
    pub reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        super::Args::command().debug_assert();
    }
}
