//! report_dhash: deployment success rate, auto-rollbacks, MTTR, false
//! positives, gate violations and time under watch, from the ledger.
use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use dhash_report::{Verdict, TOOL};
use gates_core::exit::{usage_error, Exit, EXIT_CODES_HELP};
use gates_core::project::Project;
use gates_core::Emitter;

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
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    report: ReportArgs,
}

#[derive(Args, Debug)]
struct ReportArgs {
    /// Environment (from environments.json), e.g. production or staging.
    #[arg(long)]
    env: Option<String>,
    /// Start of the period: a duration back from --until (30d, 12h), a date or an RFC 3339 time.
    #[arg(long, value_name = "WHEN", default_value = dhash_report::DEFAULT_SINCE)]
    since: String,
    /// End of the period (default: now): a duration back from now, a date or an RFC 3339 time.
    #[arg(long, value_name = "WHEN")]
    until: Option<String>,
    /// Print the table on stdout instead of the JSON-lines events.
    #[arg(long, conflicts_with = "csv")]
    table: bool,
    /// Print the figures as CSV on stdout instead of the JSON-lines events.
    #[arg(long)]
    csv: bool,
    /// Also write the figures to PATH in Prometheus' text format (atomically), for
    /// node_exporter's textfile collector.
    #[arg(long, value_name = "PATH")]
    prometheus_textfile: Option<PathBuf>,
    /// No table on stderr.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Record an operator's verdict on a rollback (a new ledger record; the latest verdict counts).
    Mark(MarkArgs),
    /// Write one self-contained HTML page for one watch: a chart per gate with its threshold,
    /// violations, the rollback and the return to health (default: the newest watch).
    Window(WindowArgs),
}

#[derive(Args, Debug)]
struct WindowArgs {
    #[arg(long)]
    env: String,
    /// The watched release (its id as the ledger records it).
    #[arg(long, conflicts_with = "recording")]
    release: Option<String>,
    /// The watch that made this telemetry recording.
    #[arg(long, value_name = "FILE")]
    recording: Option<PathBuf>,
    /// Where to write the page (default: window_<env>_<release>.html in the monitor's log folder).
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct MarkArgs {
    #[arg(long)]
    env: String,
    /// The rollback: its time as the report lists it, or a unique prefix of that time.
    #[arg(long, value_name = "ID")]
    rollback: String,
    /// The rollback was not needed (a false positive).
    #[arg(
        long,
        conflicts_with = "necessary",
        required_unless_present = "necessary"
    )]
    unnecessary: bool,
    /// The rollback was needed (withdraws an earlier `--unnecessary`).
    #[arg(long)]
    necessary: bool,
    /// Why (recorded).
    #[arg(long)]
    reason: Option<String>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    gates_core::cli::main_entry(TOOL, || match cli.cmd {
        Some(Cmd::Mark(m)) => mark(m),
        Some(Cmd::Window(w)) => window(w),
        None => report(cli.report),
    })
}

fn mark(m: MarkArgs) -> anyhow::Result<Exit> {
    let project = Project::discover()?;
    let env = project.env(&m.env)?;
    let em = Emitter::stdout(TOOL, &env.name, false);
    let verdict = match m.unnecessary {
        true => Verdict::Unnecessary,
        false => Verdict::Necessary,
    };
    dhash_report::mark(env, &m.rollback, verdict, m.reason.as_deref(), &em)?;
    Ok(Exit::Ok)
}

fn report(a: ReportArgs) -> anyhow::Result<Exit> {
    let Some(env_name) = a.env.as_deref() else {
        return Err(usage_error("--env is required (e.g. --env production)"));
    };
    let project = Project::discover()?;
    let env = project.env(env_name)?;
    let period = dhash_report::period(Some(&a.since), a.until.as_deref(), chrono::Utc::now())?;
    let report = dhash_report::report(env, period)?;
    let table = dhash_report::render::table(&report);
    if a.table {
        std::io::stdout().write_all(table.as_bytes())?;
    } else if a.csv {
        std::io::stdout().write_all(&dhash_report::render::csv(&report)?)?;
    } else {
        let em = Emitter::to_writer(TOOL, &env.name, Box::new(std::io::stdout()));
        dhash_report::render::emit(&report, &em);
    }
    if !a.quiet && !a.table {
        eprint!("{table}");
    }
    if let Some(path) = &a.prometheus_textfile {
        dhash_report::write_textfile(&report, path)?;
        eprintln!("{TOOL}: wrote {}", path.display());
    }
    Ok(Exit::Ok)
}

fn window(w: WindowArgs) -> anyhow::Result<Exit> {
    let project = Project::discover()?;
    let env = project.env(&w.env)?;
    let (release, events) =
        dhash_report::window::find_watch(env, w.release.as_deref(), w.recording.as_deref())?;
    let html = dhash_report::window::page(&env.name, release.as_deref(), &events)?;
    let out = w.out.unwrap_or_else(|| {
        let name = release
            .as_deref()
            .unwrap_or("unknown")
            .replace(['/', ' '], "_");
        env.log_dir.join(format!("window_{}_{name}.html", env.name))
    });
    gates_core::fsutil::write_atomic(&out, html.as_bytes())?;
    let em = Emitter::stdout(TOOL, &env.name, false);
    em.info(
        "report.window-written",
        format!("wrote {}", out.display()),
        serde_json::json!({"path": out, "release": release, "events": events}),
    );
    Ok(Exit::Ok)
}
